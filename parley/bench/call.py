"""`parley bench call`: voice-to-voice at the headless client, over calls one after another, with variants."""

from __future__ import annotations

import argparse
import contextlib
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from parley.bench.results import (
    BENCH_ENV, add_ratios, ms, percentile, server_log, speaker_files, stage_medians, write_results,
)
from parley.server_process import server_process


def _figures(turns: list[dict[str, Any]]) -> dict[str, Any]:
    v2v = [t["voice_to_voice_ms"] for t in turns if t["voice_to_voice_ms"] is not None]
    return {
        "turns": len(turns),
        "answered": len(v2v),
        "voice_to_voice_ms": {"p50": percentile(v2v, 50), "p95": percentile(v2v, 95)},
        "stages_ms_p50": stage_medians(t["stages_ms"] for t in turns),
    }


def telephone_requests(folder: Path) -> list[str]:
    """Four telephone requests in the bot's voice, as WAV files: a conference number, a table for two,
    the library's hours, a cancelled flight (`parley bench turns`' first four sentences, whole)."""
    from parley.bench.turns import make_files

    return make_files(folder, 4)["whole"][:4]


async def bench_call(args: argparse.Namespace) -> None:
    """Voice-to-voice over calls one after another; with --compare, the same against a changed setting.

    Every variant's server runs from the start and the calls take turns (default, variant 1, ...,
    default, ...), so whatever else the machine does in the meantime falls on every variant alike.
    """
    from parley.call_client import run_call

    # Replies capped at 40 tokens: the first sentence, which is all the latency depends on,
    # still completes, and ten calls take minutes rather than ten.
    env = {**BENCH_ENV, "PARLEY_LLM_MAX_TOKENS": "40"}
    variants: dict[str, dict[str, str]] = {"default": {}}
    for change in args.compare or []:
        # "KEY=VALUE", or several separated by spaces: "PARLEY_LLM_SERVER_THREADS=2 PARLEY_LLM_SERVER_POLL=0".
        variants[change] = {key: value for key, _, value in (part.partition("=") for part in change.split())}
    turns: dict[str, list[dict[str, Any]]] = {name: [] for name in variants}
    with tempfile.TemporaryDirectory(prefix="parley-bench-") as tmp:
        files = speaker_files(Path(tmp)) if args.speech == "speakers" else telephone_requests(Path(tmp))
        async with contextlib.AsyncExitStack() as stack:
            urls = {
                name: args.server if args.server and not change else await stack.enter_async_context(
                    server_process(
                        {**env, **change},
                        log_path=server_log(args.server_logs, f"variant-{n}"),
                    )
                )
                for n, (name, change) in enumerate(variants.items())
            }
            for i in range(args.calls):
                for name, url in urls.items():
                    report = await run_call(url, files, out_dir=Path(tmp) / name / f"call-{i}")
                    turns[name] += report["turns"]
                    v2v = ", ".join(f"{t['voice_to_voice_ms']} ms" for t in report["turns"])
                    print(f"call {i + 1}/{args.calls} {name}: {v2v}")
    results = {name: _figures(variant_turns) for name, variant_turns in turns.items()}
    add_ratios(results, "default", lambda f: f["voice_to_voice_ms"]["p50"], "v2v_p50_vs_default")
    when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    document = {
        "benchmark": "call",
        "when": when,
        "calls_per_variant": args.calls,
        "settings": {**env, "machine_cores": os.cpu_count(), "speech": args.speech},
        "variants": results,
    }
    rows = []
    for name, f in results.items():
        p50 = f["stages_ms_p50"]
        rows.append(
            f"| {when} | {name}{'' if args.speech == 'speakers' else f' ({args.speech})'} | {f['answered']}/{f['turns']} | {ms(f['voice_to_voice_ms']['p50'])} | "
            f"{ms(f['voice_to_voice_ms']['p95'])} | {f['v2v_p50_vs_default']} | {ms(p50.get('asr'))} | "
            f"{ms(p50.get('llm_first_token'))} | {ms(p50.get('first_sentence'))} | "
            f"{ms(p50.get('tts_first_audio'))} | {ms(p50.get('end_of_turn_to_first_audio'))} | "
            f"{ms(p50.get('end_of_turn_silence'))} |"
        )
    header = (
        "# Call benchmark: voice-to-voice at the client (ms)\n\n"
        "`parley bench call`: calls one after another, two single-utterance turns each, temperature 0, seed 42,"
        " replies capped at 40 tokens, measured at the headless client; with `--compare KEY=VALUE` the same"
        " calls against a server with that setting changed, in the same run, the variants' calls taking turns"
        " (rows before 2026-11-28: each variant's calls in one block, one after the other).\n\n"
        "| when | variant | answered | v2v p50 | v2v p95 | p50 vs default | asr p50 | llm first token p50 |"
        " first sentence p50 | tts first audio p50 | end of turn to first audio p50 | end-of-turn silence p50 |\n"
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n"
    )
    write_results("call", document, "\n".join(rows), header)
