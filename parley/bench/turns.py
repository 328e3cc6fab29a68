"""`parley bench turns`: turn-taking, silence alone against the end-of-turn model, in one run.

The callers: telephone-style sentences spoken by piper, whole, and the same
sentences with a pause after a word that leaves them unfinished ("followed by
the | pound key."), of 0.5, 0.8 and 1.2 s; and real speech from ../shared/audio
(the two speakers of the stereo recording, and JFK, who pauses mid-sentence on
his own). Each variant gets a server of its own and the same files, in calls of
a few files each, through the headless WebRTC client; the servers run side by
side and take each call in turn.

Figures per variant:
- paused files: turns ended in the pause (the server finalised the turn before
  the caller went on), turns talked over (any bot voice while the file's speech
  was still being sent), and the `overlap_ms` of those;
- whole sentences: the silence the server waited before ending the turn
  (`end_of_turn_silence`, p50/p95);
- every answered file: voice-to-voice at the client (p50/p95).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from media.audio_file import read_audio, write_wav
from parley.bench.results import BENCH_ENV, ROOT, add_ratios, ms, percentile, write_results
from parley.server_process import server_process

SHARED_AUDIO = ROOT.parent / "shared" / "audio"
# Each `|` is where the caller stops to think: after a word that leaves the sentence unfinished.
SENTENCES = [
    "Please enter your conference number followed by the | pound key.",
    "I would like to book a table for | two at seven tonight.",
    "Can you tell me the opening hours of the | library on Saturday?",
    "My flight to Boston was cancelled and | I need a new one.",
    "What is the weather going to be like in | London tomorrow?",
    "I want to check the balance of my | savings account.",
    "Could you remind me to | call my mother at six?",
    "The package should have arrived at my | house yesterday.",
    "I am looking for a | good restaurant near the train station.",
    "Please transfer fifty dollars from | checking to savings.",
    "How long does it take to drive from here to the | airport?",
    "Send the weekly report to | my manager before noon.",
]
PAUSES_S = (0.5, 0.8, 1.2)
FILES_PER_CALL = 4
# Each variant: the server's environment on top of BENCH_ENV.
VARIANTS: dict[str, dict[str, str]] = {
    # What Parley did before the end-of-turn model: 500 ms of silence ends every turn.
    "silence_500ms": {"PARLEY_TURNS_END_OF_TURN": "silence", "PARLEY_TURNS_UNJUDGED_SILENCE_MS": "500"},
    "model": {"PARLEY_TURNS_END_OF_TURN": "model"},
    # The model, with the words transcribed only at the pause instead of from the lull before it.
    "model_transcribe_at_pause": {"PARLEY_TURNS_END_OF_TURN": "model", "PARLEY_VAD_TRANSCRIBE_MS": "60"},
    # The model asked after 100 ms of silence instead of 60 (the pause before 2026-11-28).
    "model_pause_100ms": {"PARLEY_TURNS_END_OF_TURN": "model", "PARLEY_VAD_PAUSE_MS": "100"},
    # A pause the model alone called unfinished heard again after 400 ms of silence instead of 800.
    "model_recheck_400ms": {"PARLEY_TURNS_END_OF_TURN": "model", "PARLEY_TURNS_RECHECK_SILENCE_MS": "400"},
    # The model on two threads: it runs once the words are transcribed, when the ASR has let go of both cores.
    "model_threads_2": {"PARLEY_TURNS_END_OF_TURN": "model", "PARLEY_TURN_MODEL_THREADS": "2"},
    # The model hears up to 200 (300) ms of the silence after the words, as it is when it runs,
    # instead of the turn as it was at the pause (60 ms).
    "model_hears_200ms": {"PARLEY_TURNS_END_OF_TURN": "model", "PARLEY_TURN_MODEL_SILENCE_HEARD_MS": "200"},
    "model_hears_300ms": {"PARLEY_TURNS_END_OF_TURN": "model", "PARLEY_TURN_MODEL_SILENCE_HEARD_MS": "300"},
    # The model hears the pause only once its words are in, not also at once ([turn_model] at_pause).
    "model_after_words_only": {"PARLEY_TURNS_END_OF_TURN": "model", "PARLEY_TURN_MODEL_AT_PAUSE": "false"},
    # The words transcribed from 20 ms of silence on instead of 40.
    "model_transcribe_20ms": {"PARLEY_TURNS_END_OF_TURN": "model", "PARLEY_VAD_TRANSCRIBE_MS": "20"},
    # The model shed as under load ([shedding] audio_judgements_off_at): a pause whose words end a
    # sentence ends the turn on them alone; the model hears only the pauses they leave in doubt.
    "words_decide": {"PARLEY_TURNS_END_OF_TURN": "model", "PARLEY_SHEDDING_AUDIO_JUDGEMENTS_OFF_AT": "0"},
    # A turn judged finished ends after 120 ms of silence instead of [vad] end_silence_ms (200).
    "model_end_120ms": {"PARLEY_TURNS_END_OF_TURN": "model", "PARLEY_VAD_END_SILENCE_MS": "120"},
}


def make_files(folder: Path, sentences: int) -> dict[str, list[str]]:
    """The benchmark's callers as WAV files: {"whole": [...], "paused": [...]}."""
    from parley.paused_speech import PausedSpeech
    from parley.settings import load_settings

    speech = PausedSpeech(load_settings().tts)
    files: dict[str, list[str]] = {"whole": [], "paused": []}
    lead = np.zeros(speech.sample_rate * 3 // 10, np.int16)
    for i, text in enumerate(SENTENCES[:sentences]):
        head, tail = speech.pieces(text)
        path = folder / f"whole-{i}.wav"
        write_wav(path, np.concatenate([lead, head, tail]), speech.sample_rate)
        files["whole"].append(str(path))
        for pause in PAUSES_S:
            path = folder / f"paused-{i}-{pause:.1f}s.wav"
            gap = np.zeros(int(speech.sample_rate * pause), np.int16)
            write_wav(path, np.concatenate([lead, head, gap, tail]), speech.sample_rate)
            files["paused"].append(str(path))
    stereo = SHARED_AUDIO / "stereo_diarization.wav"
    for channel in (0, 1):
        path = folder / f"real-{channel}.wav"
        write_wav(path, read_audio(stereo, 16000, channel=channel), 16000)
        files["whole"].append(str(path))
    # JFK pauses after "Americans," and after "for you,": a real caller going on after a pause.
    files["paused"].append(str(SHARED_AUDIO / "jfk.flac"))
    return files


def calls_of(files: list[str]) -> list[list[str]]:
    """The files in calls of FILES_PER_CALL each."""
    return [files[start : start + FILES_PER_CALL] for start in range(0, len(files), FILES_PER_CALL)]


async def talk(url: str, files: list[str], out_dir: Path, *, first: int = 0, label: str = "") -> list[dict[str, Any]]:
    """Say `files` to the server at `url` in one call; one report a file (numbered from `first`)."""
    from parley.call_client import CallClient

    reports = []
    out_dir.mkdir(parents=True, exist_ok=True)
    async with CallClient(url) as client:
        for index, path in enumerate(files, start=first):
            report, _ = await client.talk(path, out_dir=out_dir, index=index)
            reports.append({"file": Path(path).name, **_fields(report)})
            print(
                f"  {label}{Path(path).name}: v2v {report.voice_to_voice_ms} ms, overlap {report.overlap_ms:.0f} ms,"
                f" finals {report.finals}, end of turn silence {report.stages_ms.get('end_of_turn_silence')}"
            )
    return reports


async def talk_all(url: str, files: list[str], out_dir: Path) -> list[dict[str, Any]]:
    """Say `files` to the server at `url`, FILES_PER_CALL to a call; one report a file."""
    reports = []
    for call in calls_of(files):
        reports += await talk(url, call, out_dir, first=len(reports))
    return reports


def _fields(report) -> dict[str, Any]:
    return {
        "voice_to_voice_ms": report.voice_to_voice_ms,
        "overlap_ms": report.overlap_ms,
        "server_turns": report.server_turns,
        "finals": report.finals,
        "end_of_turn_silence_ms": report.stages_ms.get("end_of_turn_silence"),
        "end_of_turn_to_first_audio_ms": report.stages_ms.get("end_of_turn_to_first_audio"),
        "transcript": report.transcript,
        # Every stage the server timed (ASR, LLM first token and sentence, TTS first audio, the
        # draft's head start): where the time after the end of turn went.
        "stages_ms": report.stages_ms,
    }


def _figures(whole: list[dict[str, Any]], paused: list[dict[str, Any]]) -> dict[str, Any]:
    talked_over = [r for r in paused if r["overlap_ms"] > 0]
    ended_in_pause = [r for r in paused if r["finals"] > 1 or r["server_turns"] > 1]
    by_pause = {}
    for pause in PAUSES_S:
        group = [r for r in paused if f"-{pause:.1f}s" in r["file"]]
        by_pause[f"{pause:.1f}s"] = {
            "files": len(group),
            "talked_over": sum(r["overlap_ms"] > 0 for r in group),
            "ended_in_pause": sum(r["finals"] > 1 or r["server_turns"] > 1 for r in group),
        }
    silences = [r["end_of_turn_silence_ms"] for r in whole if r["end_of_turn_silence_ms"] is not None]
    v2v = [r["voice_to_voice_ms"] for r in whole + paused if r["voice_to_voice_ms"] is not None]
    v2v_whole = [r["voice_to_voice_ms"] for r in whole if r["voice_to_voice_ms"] is not None]
    # What a whole turn waited past its end-of-turn silence, as the caller heard it, and the server's
    # share of that (the end of the turn to its first audio sent): the rest is the way to the ear.
    after_end = [
        r["voice_to_voice_ms"] - r["end_of_turn_silence_ms"]
        for r in whole
        if r["voice_to_voice_ms"] is not None and r["end_of_turn_silence_ms"] is not None
    ]
    server_after_end = [r["end_of_turn_to_first_audio_ms"] for r in whole if r.get("end_of_turn_to_first_audio_ms") is not None]
    return {
        "paused_files": len(paused),
        "ended_in_pause": len(ended_in_pause),
        "talked_over": len(talked_over),
        "overlap_ms": {
            "total": round(sum(r["overlap_ms"] for r in talked_over), 1),
            "p95_of_talked_over": percentile([r["overlap_ms"] for r in talked_over], 95),
        },
        "by_pause": by_pause,
        "whole_files": len(whole),
        "end_of_turn_silence_ms": {"p50": percentile(silences, 50), "p95": percentile(silences, 95)},
        "voice_to_voice_ms": {"p50": percentile(v2v, 50), "p95": percentile(v2v, 95), "answered": len(v2v)},
        "voice_to_voice_whole_ms": {"p50": percentile(v2v_whole, 50), "p95": percentile(v2v_whole, 95)},
        "after_end_of_turn_ms": {"p50": percentile(after_end, 50), "server_p50": percentile(server_after_end, 50)},
    }


async def bench_turns(args: argparse.Namespace) -> None:
    """Every variant on the same files, each on a server of its own, the servers side by side and
    taken call by call (which variant goes first alternates): a comparison made one variant after
    the other rested on the machine's speed holding for the length of the run, and it drifts."""
    env = {**BENCH_ENV, "PARLEY_LLM_MAX_TOKENS": "40"}
    chosen = args.variants.split(",") if args.variants else list(VARIANTS)
    results: dict[str, dict[str, Any]] = {}
    details: dict[str, dict[str, list]] = {name: {"whole": [], "paused": []} for name in chosen}
    with tempfile.TemporaryDirectory(prefix="parley-bench-turns-") as tmp:
        files = make_files(Path(tmp), args.sentences)
        calls = [(kind, call) for _ in range(args.repeat) for kind in ("whole", "paused") for call in calls_of(files[kind])]
        print(f"variants {', '.join(chosen)}: {len(calls)} calls each, {len(files['whole'])} whole and"
              f" {len(files['paused'])} paused files, {args.repeat} time(s)")
        async with contextlib.AsyncExitStack() as stack:
            urls = {name: await stack.enter_async_context(server_process({**env, **VARIANTS[name]})) for name in chosen}
            for index, (kind, call) in enumerate(calls):
                order = chosen[index % len(chosen):] + chosen[: index % len(chosen)]
                for name in order:
                    done = details[name][kind]
                    done += await talk(urls[name], call, Path(tmp) / name / kind, first=len(done), label=f"{name}: ")
        for name in chosen:
            results[name] = _figures(details[name]["whole"], details[name]["paused"])
    if "silence_500ms" in results:
        add_ratios(results, "silence_500ms", lambda f: f["voice_to_voice_ms"]["p50"], "v2v_p50_vs_silence")
        add_ratios(results, "silence_500ms", lambda f: f["end_of_turn_silence_ms"]["p50"], "silence_p50_vs_silence")
    when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    document = {
        "benchmark": "turns",
        "when": when,
        "settings": {
            **env, "pauses_s": PAUSES_S, "files_per_call": FILES_PER_CALL, "repeat": args.repeat,
            "interleaved": True, "machine_cores": os.cpu_count(),
        },
        "variants": results,
        "files": details,
    }
    rows = [
        f"| {when} | {name} | {f['ended_in_pause']}/{f['paused_files']} | {f['talked_over']}/{f['paused_files']} |"
        f" {ms(f['overlap_ms']['total'])} | "
        + " ".join(f"{p}: {g['talked_over']}/{g['files']}" for p, g in f["by_pause"].items())
        + f" | {ms(f['end_of_turn_silence_ms']['p50'])} | {ms(f['end_of_turn_silence_ms']['p95'])} |"
        f" {ms(f['voice_to_voice_ms']['p50'])} | {ms(f['voice_to_voice_ms']['p95'])} |"
        f" {ms(f['voice_to_voice_whole_ms']['p50'])} | {f.get('v2v_p50_vs_silence', '–')} |"
        f" {ms(f['after_end_of_turn_ms']['p50'])} | {ms(f['after_end_of_turn_ms']['server_p50'])} |"
        for name, f in results.items()
    ]
    header = (
        "# Turn-taking benchmark: silence alone against the end-of-turn model\n\n"
        "`parley bench turns`: the same callers against a server per variant, in one run, through the headless"
        " WebRTC client; temperature 0, seed 42, replies capped at 40 tokens. Paused files: telephone-style"
        " sentences (piper) with a pause of 0.5, 0.8 or 1.2 s after a word that leaves them unfinished, and JFK."
        " Whole files: the same sentences unpaused and the two real speakers of ../shared/audio. Talked over:"
        " bot voice received while the file's speech was still being sent.\n\n"
        "| when | variant | ended in the pause | talked over | overlap ms (total) | talked over by pause |"
        " end-of-turn silence p50 (whole) | p95 | v2v p50 (all) | v2v p95 | v2v p50 (whole) | v2v p50 vs silence |"
        " after the end of turn p50 (whole) | of it, server to first audio sent p50 |\n"
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n"
    )
    write_results("turns", document, "\n".join(rows), header)
