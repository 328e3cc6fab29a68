"""`parley bench asr`: the ASR window sized per utterance against faster-whisper's fixed 30 s."""

from __future__ import annotations

import argparse
import time
from typing import Any

import numpy as np

from media.audio_file import read_audio
from parley.bench.results import SPEECH, percentile, write_results


async def bench_asr(args: argparse.Namespace) -> None:
    """The ASR window sized per utterance against faster-whisper's fixed 30 s, on the same clips."""
    import dataclasses

    from parley.settings import load_settings
    from pipeline.asr import Transcriber

    config = load_settings().asr
    clips = [read_audio(SPEECH, 16000, channel=c) for c in (0, 1)]
    clips.append(np.concatenate(clips))  # a longer utterance: both sentences
    variants = {"window_30s": False, "window_sized": True}
    figures_by_variant: dict[str, dict[str, Any]] = {}
    texts: dict[str, list[str]] = {}
    for name, sized in variants.items():
        transcriber = Transcriber(dataclasses.replace(config, sized_window=sized))
        await transcriber.transcribe(clips[0])  # warm-up
        times: list[float] = []
        texts[name] = []
        for repeat in range(args.repeats):
            for clip in clips:
                started = time.monotonic()
                text = (await transcriber.transcribe(clip)).text
                times.append(1000 * (time.monotonic() - started))
                if repeat == 0:
                    texts[name].append(text)
        figures_by_variant[name] = {"ms_per_clip_p50": percentile(times, 50), "ms_per_clip_mean": round(float(np.mean(times)), 1)}
    ratio = round(figures_by_variant["window_30s"]["ms_per_clip_p50"] / figures_by_variant["window_sized"]["ms_per_clip_p50"], 2)
    figures = {
        "benchmark": "asr",
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "model": config.model,
        "clips_s": [round(c.size / 16000, 2) for c in clips],
        "repeats": args.repeats,
        "variants": figures_by_variant,
        "speedup_sized_vs_30s": ratio,
        "same_text": texts["window_30s"] == texts["window_sized"],
        "texts": texts,
    }
    row = (
        f"| {figures['when']} | {figures_by_variant['window_30s']['ms_per_clip_p50']} | "
        f"{figures_by_variant['window_sized']['ms_per_clip_p50']} | {ratio}x | {figures['same_text']} |"
    )
    header = (
        "# ASR window benchmark\n\n`parley bench asr`: Whisper tiny.en int8, greedy, the same clips (2.5–7.5 s) with"
        " faster-whisper's fixed 30 s window and with the window sized per utterance.\n\n"
        "| when | 30 s window, ms/clip p50 | sized window, ms/clip p50 | speed-up | same text |\n| --- | --- | --- | --- | --- |\n"
    )
    write_results("asr", figures, row, header)
