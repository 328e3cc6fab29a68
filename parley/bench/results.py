"""What every benchmark shares: where results go, percentiles, ratios between variants, and the writer.

Each benchmark writes bench/results/<name>.json (its figures), appends a row to
bench/results/<name>.md, and may draw bench/results/<name>.png.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from media.audio_file import read_audio, write_wav

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "bench" / "results"
SPEECH = ROOT / "bench" / "audio" / "stereo_diarization.wav"
# Benchmarks run with temperature 0 and a fixed seed, so the reply, and with it the time to the
# first sentence, is the same from run to run.
BENCH_ENV = {"PARLEY_LLM_TEMPERATURE": "0", "PARLEY_LLM_SEED": "42"}


def percentile(values: list[float], q: float) -> float | None:
    """The q-th percentile (0-100) by linear interpolation; None for no values."""
    return round(float(np.percentile(values, q)), 1) if values else None


def add_ratios(results: dict[str, dict[str, Any]], base: str, figure, key: str) -> None:
    """Store each variant's `figure(...)` as a ratio to the `base` variant's, under `key`."""
    reference = figure(results[base])
    for figures in results.values():
        value = figure(figures)
        figures[key] = round(value / reference, 2) if value and reference else None


def stage_medians(turns: Iterable[dict[str, float]]) -> dict[str, float | None]:
    """p50 per stage over turns' server figures (each a `metrics` event's stages_ms): where the time went."""
    stages: dict[str, list[float]] = {}
    for turn in turns:
        for stage, value in turn.items():
            stages.setdefault(stage, []).append(value)
    return {stage: percentile(values, 50) for stage, values in sorted(stages.items())}


def write_results(name: str, figures: dict[str, Any], row: str, header: str, *, copy_to: str | None = None) -> Path:
    """bench/results/<name>.json, and a row appended to bench/results/<name>.md; prints the figures.

    copy_to: also write the JSON there (a benchmark's `--json PATH`).
    """
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(figures, indent=2) + "\n")
    if copy_to:
        Path(copy_to).write_text(json.dumps(figures, indent=2) + "\n")
    table = RESULTS / f"{name}.md"
    if not table.exists():
        table.write_text(header)
    with table.open("a") as out:
        out.write(row + "\n")
    print(json.dumps(figures, indent=2))
    print(f"written to {path}")
    return path


def speaker_files(tmp: Path) -> list[str]:
    """The two speakers of the benchmark recording, one file each (a sentence apiece)."""
    files = []
    for channel in (0, 1):
        path = tmp / f"speaker-{channel}.wav"
        write_wav(path, read_audio(SPEECH, 16000, channel=channel), 16000)
        files.append(str(path))
    return files


def server_log(folder: str | None, name: str) -> str | None:
    """Where a benchmark's server `name` writes its log: `folder`/`name`.log (the folder made), or
    None (no folder asked for: the log is dropped)."""
    if not folder:
        return None
    Path(folder).mkdir(parents=True, exist_ok=True)
    return str(Path(folder) / f"{name}.log")


def ms(value: float | None) -> str:
    return "–" if value is None else f"{value:.0f}"
