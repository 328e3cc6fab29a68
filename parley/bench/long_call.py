"""`parley bench long-call`: one call of many turns, per turn index, so a reply that slows as the dialog grows shows.

The caller says 30 different sentences (piper, no sampling noise) one after another in
one call; each variant is a server with the prompt handled another way, in the same run:
- `sliding`: what Parley did before: the history window slides by a turn whenever it is
  over budget and llama-server places requests itself (its cache of the dialog is lost
  from the first trimmed turn on);
- `sliding_reuse`: the sliding window, each dialog on its own slot, and llama-server moves
  the cached turns that remain into place when the window's beginning moves (`--cache-reuse`);
- `stable`: the window drops half a budget at a time and each dialog keeps its slot;
- `stable_reuse`: the same, with `--cache-reuse` for the turns when the beginning does move.
Per turn: voice-to-voice at the client, the LLM's first token, and the prompt tokens the
server read (and held in its cache). Written: bench/results/long_call.{json,md,png}.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from parley.bench.results import BENCH_ENV, RESULTS, ms, percentile, write_results
from parley.server_process import server_process

# Things a caller says to an assistant over one long call; none is used by a test.
SENTENCES = [
    "Hello, I need some help planning a trip next month.",
    "I want to visit my sister who lives in Denver.",
    "Which is cheaper, flying or taking the train?",
    "I would leave on a Friday and come back on Monday.",
    "Can you remind me what documents I need for a domestic flight?",
    "My sister has two small children, so I want to bring presents.",
    "What is a good gift for a four year old boy?",
    "And something for a girl who just turned seven?",
    "I also need somewhere to park my car near the airport.",
    "How early should I get to the airport on a Friday evening?",
    "The weather in Denver can change quickly, right?",
    "Should I pack a warm jacket in the middle of March?",
    "My sister asked me to bring a cake for her birthday.",
    "Is it a problem to carry a cake through security?",
    "What kind of cake travels well for a few hours?",
    "I might rent a car in Denver for the weekend.",
    "Do I need a special licence to drive in Colorado?",
    "We would like to go hiking on Sunday morning.",
    "Are there easy trails near the city for small kids?",
    "How much water should we take for a two hour walk?",
    "On Saturday night we want to eat out together.",
    "Can you suggest a kind of restaurant that children enjoy?",
    "I should also buy travel insurance, I think.",
    "What does travel insurance usually cover?",
    "My flight home is on Monday at six in the morning.",
    "How can I make sure I wake up on time?",
    "Please remind me to print my boarding pass.",
    "I also need to ask my neighbour to water the plants.",
    "What should I tell her about the tomatoes on the balcony?",
    "Thank you, I think I am ready for the trip now.",
]
# Each variant: the server's environment on top of BENCH_ENV.
VARIANTS: dict[str, dict[str, str]] = {
    "sliding": {
        "PARLEY_TURNS_HISTORY_WINDOW": "sliding", "PARLEY_LLM_SERVER_SLOTS": "0", "PARLEY_LLM_SERVER_CACHE_REUSE": "0",
    },
    "sliding_reuse": {"PARLEY_TURNS_HISTORY_WINDOW": "sliding", "PARLEY_LLM_SERVER_CACHE_REUSE": "16"},
    "stable": {"PARLEY_TURNS_HISTORY_WINDOW": "stable", "PARLEY_LLM_SERVER_CACHE_REUSE": "0"},
    "stable_reuse": {"PARLEY_TURNS_HISTORY_WINDOW": "stable", "PARLEY_LLM_SERVER_CACHE_REUSE": "16"},
}


async def make_files(folder: Path, turns: int) -> list[str]:
    """The caller's sentences as WAV files, each after 0.3 s of quiet."""
    import numpy as np

    from media.audio_file import write_wav
    from parley.settings import load_settings
    from pipeline.tts import Synthesizer

    settings = load_settings()
    voice = Synthesizer(settings.tts.without_noise())
    files = []
    for i in range(turns):
        pcm = await voice.synthesize(SENTENCES[i % len(SENTENCES)])
        lead = np.zeros(voice.sample_rate * 3 // 10, np.int16)
        path = folder / f"turn-{i + 1:02d}.wav"
        write_wav(path, np.concatenate([lead, np.frombuffer(pcm, np.int16)]), voice.sample_rate)
        files.append(str(path))
    return files


async def _one_call(url: str, files: list[str], out_dir: Path) -> list[dict[str, Any]]:
    from parley.call_client import CallClient

    out_dir.mkdir(parents=True, exist_ok=True)
    turns = []
    async with CallClient(url) as client:
        for index, path in enumerate(files):
            report, _ = await client.talk(path, out_dir=out_dir, index=index)
            prompt = report.prompt_tokens
            turns.append({
                "turn": index + 1,
                "transcript": report.transcript,
                "reply_words": len(report.reply_text.split()),
                "voice_to_voice_ms": report.voice_to_voice_ms,
                "llm_first_token_ms": report.stages_ms.get("llm_first_token"),
                "end_of_turn_silence_ms": report.stages_ms.get("end_of_turn_silence"),
                "prompt_tokens": prompt.get("total"),
                "prompt_read": prompt.get("read"),
                "prompt_cached": prompt.get("cached"),
            })
            print(
                f"  turn {index + 1}: v2v {report.voice_to_voice_ms} ms, first token"
                f" {report.stages_ms.get('llm_first_token')} ms, prompt {prompt}"
            )
    return turns


def _summary(turns: list[dict[str, Any]]) -> dict[str, Any]:
    def figures(key: str, first: int, last: int) -> list[float]:
        return [t[key] for t in turns[first - 1 : last] if t[key] is not None]

    early, late = (1, 10), (len(turns) - 9, len(turns))
    summary: dict[str, Any] = {}
    for key in ("voice_to_voice_ms", "llm_first_token_ms"):
        for name, (first, last) in (("early", early), ("late", late)):
            values = figures(key, first, last)
            summary[f"{key}_{name}"] = {"turns": f"{first}-{last}", "p50": percentile(values, 50), "p95": percentile(values, 95)}
        e, l_ = summary[f"{key}_early"]["p50"], summary[f"{key}_late"]["p50"]
        summary[f"{key}_late_vs_early_p50"] = round(l_ / e, 2) if e and l_ else None
    # A turn's new tokens: how much a prompt grows from one turn to the next (the last reply and
    # this sentence), the median over turns whose window did not move. A turn "reads its new
    # tokens" when it reads no more than that (+8 for where the reply's text is cut into tokens).
    grown = sorted(b["prompt_tokens"] - a["prompt_tokens"] for a, b in zip(turns, turns[1:])
                   if a["prompt_tokens"] is not None and b["prompt_tokens"] is not None
                   and b["prompt_tokens"] > a["prompt_tokens"])
    new_tokens = grown[len(grown) // 2] if grown else 0
    read = [t["prompt_read"] for t in turns[1:] if t["prompt_read"] is not None]
    summary["prompt_read_after_first"] = {
        "p50": percentile(read, 50), "p95": percentile(read, 95), "max": max(read, default=None),
        "new_tokens_per_turn": new_tokens,
        "within_new_tokens": f"{sum(r <= new_tokens + 8 for r in read)}/{len(read)}",
    }
    return summary


def _plot(results: dict[str, dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(3, 1, figsize=(9, 10), sharex=True)
    for name, variant in results.items():
        turns = variant["per_turn"]
        x = [t["turn"] for t in turns]
        axes[0].plot(x, [t["voice_to_voice_ms"] for t in turns], marker="o", label=name)
        axes[1].plot(x, [t["llm_first_token_ms"] for t in turns], marker="o", label=name)
        axes[2].plot(x, [t["prompt_read"] for t in turns], marker="o", label=f"{name}: read")
    axes[0].set_ylabel("voice to voice (ms)")
    axes[1].set_ylabel("LLM first token (ms)")
    axes[2].set_ylabel("prompt tokens read")
    axes[2].set_xlabel("turn of the call")
    for ax in axes:
        ax.grid(True, alpha=0.3)
        ax.legend()
    fig.suptitle("One long call, per turn: parley bench long-call")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


async def bench_long_call(args: argparse.Namespace) -> None:
    """One call of `args.turns` turns per variant, side by side in one run."""
    # Replies capped at 40 tokens (as `parley bench call`): a turn still adds ~50 tokens to the
    # dialog, which passes the 600-token budget by turn 10, and a turn takes seconds, not half a minute.
    env = {**BENCH_ENV, "PARLEY_LLM_MAX_TOKENS": "40"}
    chosen = args.variants.split(",") if args.variants else list(VARIANTS)
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="parley-bench-") as tmp:
        files = await make_files(Path(tmp), args.turns)
        for name in chosen:
            print(f"variant {name}")
            async with contextlib.AsyncExitStack() as stack:
                url = await stack.enter_async_context(server_process({**env, **VARIANTS[name]}))
                turns = await _one_call(url, files, Path(tmp) / name)
            results[name] = {"summary": _summary(turns), "per_turn": turns}
    when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    RESULTS.mkdir(parents=True, exist_ok=True)
    _plot(results, RESULTS / "long_call.png")
    document = {
        "benchmark": "long-call",
        "when": when,
        "turns": args.turns,
        "settings": {**env, "machine_cores": os.cpu_count()},
        "variants": {name: {**VARIANTS[name], **figures} for name, figures in results.items()},
    }
    rows = []
    for name, figures in results.items():
        s = figures["summary"]
        v_e, v_l = s["voice_to_voice_ms_early"], s["voice_to_voice_ms_late"]
        f_e, f_l = s["llm_first_token_ms_early"], s["llm_first_token_ms_late"]
        read = s["prompt_read_after_first"]
        rows.append(
            f"| {when} | {name} | {ms(v_e['p50'])} / {ms(v_e['p95'])} | {ms(v_l['p50'])} / {ms(v_l['p95'])} |"
            f" {s['voice_to_voice_ms_late_vs_early_p50']} | {ms(f_e['p50'])} / {ms(f_e['p95'])} |"
            f" {ms(f_l['p50'])} / {ms(f_l['p95'])} | {read['p50']} / {read['p95']} / {read['max']} |"
            f" {read['within_new_tokens']} |"
        )
    header = (
        "# Long-call benchmark: one call, per turn index\n\n"
        "`parley bench long-call`: one call of 30 different sentences (piper) per variant, in one run; temperature 0,"
        " seed 42, replies capped at 40 tokens. Early: turns 1-10; late: the last ten. Prompt read: tokens"
        " llama-server read for a turn's prompt (what its cache did not hold), turns after the first; within new:"
        " turns that read no more than a prompt grows in a turn (the median growth, +8). Plot: bench/results/long_call.png.\n\n"
        "| when | variant | v2v early p50 / p95 | v2v late p50 / p95 | late vs early p50 | first token early p50 / p95 |"
        " first token late p50 / p95 | prompt read p50 / p95 / max | read within new |\n"
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |\n"
    )
    write_results("long_call", document, "\n".join(rows), header)
