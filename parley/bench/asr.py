"""`parley bench asr`: the ASR encoder window, Whisper's fixed 30 s against windows sized per utterance,
and the bound on the tokens a transcription may decode."""

from __future__ import annotations

import argparse
import dataclasses
import time
from typing import Any

import numpy as np

from media.audio_file import read_audio
from media.resample import resample_pcm
from parley.bench.network import SPEAKER_TEXT, word_errors
from parley.bench.results import SPEECH, percentile, write_results

# Each variant: the [asr] window settings it changes.
# max(10 s, audio + 2 s), rounded up to 5 s: the default.
_WINDOW_10S: dict[str, Any] = {"sized_window": True, "window_min_s": 10, "window_pad_s": 2, "window_step_s": 5}
VARIANTS: dict[str, dict[str, Any]] = {
    "window_30s": {"sized_window": False},
    "window_10s": _WINDOW_10S,
    # max(5 s, audio + 1 s), rounded up to 1 s.
    "window_5s": {"sized_window": True, "window_min_s": 5, "window_pad_s": 1, "window_step_s": 1},
    # max(6 s / 8 s, audio + 2 s), rounded up to 1 s: shorter windows that keep 2 s of padding.
    "window_6s": {"sized_window": True, "window_min_s": 6, "window_pad_s": 2, "window_step_s": 1},
    "window_8s": {"sized_window": True, "window_min_s": 8, "window_pad_s": 2, "window_step_s": 1},
    # The default window, decoding up to Whisper's own limit (448 tokens) whatever the audio's length.
    "window_10s_unbounded": {**_WINDOW_10S, "max_tokens_min": 440, "max_tokens_per_s": 0},
}
# Where clips are cut, as partial transcripts see them: mid-word cuts are where Whisper repeats itself.
CUTS = (0.3, 0.45, 0.6, 0.75, 0.9)
# Telephone sentences (piper, the default voice) nobody else's test uses.
SENTENCES = (
    "Please enter your conference number followed by the pound key.",
    "I would like to book a table for two at seven tonight.",
    "Can you tell me when the pharmacy closes on Sunday?",
    "My flight to Boston was cancelled and I need a new one.",
    "What is the weather going to be like in London tomorrow?",
    "I want to check the balance of my savings account.",
    "Could you remind me to call my mother at six?",
    "How long does it take to drive from here to the airport?",
)


def _clips() -> list[tuple[np.ndarray, str]]:
    """(16 kHz int16 audio, what is said) for the real speakers and the telephone sentences,
    whole and cut at each of CUTS as partial transcripts see them ("" for a cut: no reference)."""
    from parley.paused_speech import PausedSpeech
    from parley.settings import load_settings

    clips = [(read_audio(SPEECH, 16000, channel=c), SPEAKER_TEXT[c]) for c in (0, 1)]
    clips.append((np.concatenate([clips[0][0], clips[1][0]]), f"{SPEAKER_TEXT[0]} {SPEAKER_TEXT[1]}"))
    speech = PausedSpeech(load_settings().tts)
    for text in SENTENCES:
        (voiced,) = speech.pieces(text)
        samples = np.frombuffer(resample_pcm(voiced.tobytes(), speech.sample_rate, 16000), np.int16)
        clips.append((samples, text))
    for whole, _ in list(clips):
        clips += [(whole[: int(whole.size * cut)], "") for cut in CUTS]
    return clips


async def bench_asr(args: argparse.Namespace) -> None:
    """Each window variant on the same clips: ms per clip, word error rate, and whether any loops."""
    from parley.settings import load_settings
    from pipeline.asr import Transcriber

    config = load_settings().asr
    clips = _clips()
    figures_by_variant: dict[str, dict[str, Any]] = {}
    texts: dict[str, list[str]] = {}
    for name, change in VARIANTS.items():
        transcriber = Transcriber(dataclasses.replace(config, **change))
        await transcriber.transcribe(clips[0][0])  # warm-up
        times: list[float] = []
        texts[name] = []
        # CPU of the whole process (the lane's thread and the threads the models start), a clip.
        cpu_started = time.process_time()
        for repeat in range(args.repeats):
            for clip, _ in clips:
                started = time.monotonic()
                text = (await transcriber.transcribe(clip)).text
                times.append(1000 * (time.monotonic() - started))
                if repeat == 0:
                    texts[name].append(text)
        cpu_ms = 1000 * (time.process_time() - cpu_started) / len(times)
        errors = [word_errors(ref, hyp) for (_, ref), hyp in zip(clips, texts[name], strict=True) if ref]
        words = [len(t.split()) for t in texts[name]]
        figures_by_variant[name] = {
            "ms_per_clip_p50": percentile(times, 50),
            "ms_per_clip_mean": round(float(np.mean(times)), 1),
            "ms_per_clip_max": round(max(times), 1),
            "cpu_ms_per_clip": round(cpu_ms, 1),
            "wer": round(sum(e for e, _ in errors) / sum(n for _, n in errors), 3),
            # A decoder that loops writes far more words than the clip can hold (~3 words a second).
            "looped": sum(w > 4 * clip.size / 16000 + 4 for w, (clip, _) in zip(words, clips, strict=True)),
        }
    base = figures_by_variant["window_30s"]
    for name, figures in figures_by_variant.items():
        figures["speedup_vs_30s"] = round(base["ms_per_clip_p50"] / figures["ms_per_clip_p50"], 2)
        figures["same_text_as_30s"] = sum(a == b for a, b in zip(texts[name], texts["window_30s"], strict=True))
    when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    document = {
        "benchmark": "asr",
        "when": when,
        "model": config.model,
        "clips": len(clips),
        "clips_s": [round(c.size / 16000, 2) for c, _ in clips],
        "repeats": args.repeats,
        "variants": figures_by_variant,
        "texts": texts,
    }
    rows = [
        f"| {when} | {name} | {f['ms_per_clip_p50']} | {f['ms_per_clip_mean']} | {f['ms_per_clip_max']} | {f['cpu_ms_per_clip']} |"
        f" {f['speedup_vs_30s']}x | {f['wer']} |"
        f" {f['same_text_as_30s']}/{len(clips)} | {f['looped']} |"
        for name, f in figures_by_variant.items()
    ]
    header = (
        "# ASR window benchmark\n\n`parley bench asr`: Whisper tiny.en int8, greedy, on the same clips: the two"
        " speakers of bench/audio and both together, eight telephone sentences (piper), each whole and cut at 30, 45,"
        " 60, 75 and 90 % as partial transcripts see them; faster-whisper's fixed 30 s window against windows sized"
        " per utterance, and the default window without the bound on tokens decoded ([asr] max_tokens_*)."
        " WER over the clips with a reference (the cut ones have none); looped: clips transcribed with far more"
        " words than they can hold.\n\n"
        "| when | variant | ms/clip p50 | mean | max | CPU ms/clip | speed-up vs 30 s (p50) | WER | same text as 30 s | looped |\n"
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n"
    )
    write_results("asr", document, "\n".join(rows), header)
