"""`parley bench ...`: benchmarks that write their figures to bench/results/ (JSON plus a markdown row).

Benchmarks run with temperature 0 and a fixed seed, so the reply, and with it the
time to the first sentence, is the same from run to run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from media.audio_file import read_audio, write_wav
from parley.server_process import server_process

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
SPEECH = ROOT / "bench" / "audio" / "stereo_diarization.wav"
BENCH_ENV = {"PARLEY_LLM_TEMPERATURE": "0", "PARLEY_LLM_SEED": "42"}


def percentile(values: list[float], q: float) -> float | None:
    """The q-th percentile (0-100) by linear interpolation; None for no values."""
    return round(float(np.percentile(values, q)), 1) if values else None


def write_results(name: str, figures: dict[str, Any], row: str, header: str) -> Path:
    """bench/results/<name>.json, and a row appended to bench/results/<name>.md."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(figures, indent=2) + "\n")
    table = RESULTS / f"{name}.md"
    if not table.exists():
        table.write_text(header)
    with table.open("a") as out:
        out.write(row + "\n")
    return path


async def bench_call(args: argparse.Namespace) -> None:
    from parley.call_client import run_call

    with tempfile.TemporaryDirectory(prefix="parley-bench-") as tmp:
        files = []
        for channel in (0, 1):
            path = Path(tmp) / f"speaker-{channel}.wav"
            write_wav(path, read_audio(SPEECH, 16000, channel=channel), 16000)
            files.append(str(path))
        async with contextlib.AsyncExitStack() as stack:
            url = args.server or await stack.enter_async_context(server_process(BENCH_ENV))
            turns = []
            for i in range(args.calls):
                report = await run_call(url, files, out_dir=Path(tmp) / f"call-{i}")
                turns += report["turns"]
                print(f"call {i + 1}/{args.calls}: " + ", ".join(f"{t['voice_to_voice_ms']} ms" for t in report["turns"]))
    v2v = [t["voice_to_voice_ms"] for t in turns if t["voice_to_voice_ms"] is not None]
    stages: dict[str, list[float]] = {}
    for turn in turns:
        for stage, ms in turn["stages_ms"].items():
            stages.setdefault(stage, []).append(ms)
    figures = {
        "benchmark": "call",
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "calls": args.calls,
        "turns": len(turns),
        "answered": len(v2v),
        "settings": {**BENCH_ENV, "machine_cores": os.cpu_count()},
        "voice_to_voice_ms": {"p50": percentile(v2v, 50), "p95": percentile(v2v, 95)},
        "stages_ms_p50": {stage: percentile(values, 50) for stage, values in sorted(stages.items())},
    }
    p50 = figures["stages_ms_p50"]
    row = (
        f"| {figures['when']} | {len(v2v)}/{len(turns)} | {_ms(figures['voice_to_voice_ms']['p50'])} | "
        f"{_ms(figures['voice_to_voice_ms']['p95'])} | {_ms(p50.get('asr'))} | {_ms(p50.get('llm_first_token'))} | "
        f"{_ms(p50.get('first_sentence'))} | {_ms(p50.get('tts_first_audio'))} | {_ms(p50.get('end_of_turn_to_first_audio'))} |"
    )
    header = (
        "# Call benchmark: voice-to-voice at the client (ms)\n\n"
        "`parley bench call`: calls one after another, two single-utterance turns each, temperature 0, seed 42.\n\n"
        "| when | answered | v2v p50 | v2v p95 | asr p50 | llm first token p50 | first sentence p50 |"
        " tts first audio p50 | end of turn to first audio p50 |\n"
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |\n"
    )
    path = write_results("call", figures, row, header)
    print(json.dumps(figures, indent=2))
    print(f"written to {path}")


def _ms(value: float | None) -> str:
    return "–" if value is None else f"{value:.0f}"


async def run_bench(args: argparse.Namespace) -> None:
    if args.bench == "call":
        await bench_call(args)
