"""`parley bench quality`: how often each LLM and system prompt answers right, and how fast.

The question set (bench/quality/questions.toml) holds short things a caller asks, each
with earlier turns of the call where it needs them and answers a program can check;
the system prompts are models.toml's (`default`) and those of bench/quality/prompts.toml.
Each model is served by the bundled llama-server, started as the server starts it
(its threads, slots and context from models.toml), one model at a time. Every question
goes through the project's own client: the system prompt and the history are put
together as in a call, temperature 0, seed 42, the reply capped at [llm] max_tokens,
one question at a time on one slot (its cache holds the system prompt, as a call's does).

Figures per model and prompt: right, right in the first sentence (what the caller hears
first), mean reply words, first token and first sentence (p50, ms from the request),
tokens/s while writing, each as a ratio to today's default (models.toml's model and prompt);
and the first token of the first request, which reads the whole system prompt (a longer
prompt costs there, once per slot, since later requests find it in the slot's cache).

Each model and prompt is measured three times: the LLM alone; "+ quick answers" (sums,
units and repeats answered by pipeline.quick_answers, the rest by the LLM); and "+ copies
asked again", as a call asks it (a reply that copies an earlier one of the dialog asked
again without it, pipeline.copy_guard).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from parley.bench.quality_scorer import AnswerCheck, score_reply
from parley.bench.results import ROOT, add_ratios, ms, percentile, write_results
from pipeline.config import LLMConfig
from pipeline.copy_guard import CopyGuard
from pipeline.llm_client import LLMClient, Message, PromptUsage
from pipeline.quick_answers import QuickAnswers, QuickAnswersConfig
from pipeline.sentences import SentenceSplitter

QUESTIONS = ROOT / "bench" / "quality" / "questions.toml"
PROMPTS = ROOT / "bench" / "quality" / "prompts.toml"
DEFAULT_PROMPT = "default"
SEED = 42
# The speed budget a model and prompt must keep to be chosen: the first sentence (what the voice
# waits for) no slower than this many times today's default's.
FIRST_SENTENCE_BUDGET = 1.5
QUICK = " + quick answers"
GUARD = " + copies asked again"


@dataclass(frozen=True, slots=True, kw_only=True)
class Question:
    """One item of the set: earlier turns of the call, what the caller asks, and the check."""

    id: str
    kind: str
    question: str
    check: AnswerCheck
    history: tuple[tuple[str, str], ...] = ()

    def messages(self) -> list[Message]:
        """The dialog as a call sends it, without the system prompt."""
        messages: list[Message] = []
        for user, assistant in self.history:
            messages += [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
        return messages + [{"role": "user", "content": self.question}]


def load_questions(path: Path = QUESTIONS) -> list[Question]:
    """The question set; a malformed item raises ValueError naming it."""
    items = tomllib.loads(path.read_text())["item"]
    questions = []
    for item in items:
        try:
            check = AnswerCheck(
                accept=tuple(item.get("accept", ())), number=item.get("number"), reject=tuple(item.get("reject", ()))
            )
            history = tuple((user, assistant) for user, assistant in item.get("history", ()))
            questions.append(Question(id=item["id"], kind=item["kind"], question=item["question"], check=check, history=history))
        except (KeyError, ValueError, TypeError) as exc:
            raise ValueError(f"{path}: item {item.get('id', '?')!r} is malformed: {exc}") from exc
    ids = [q.id for q in questions]
    if len(set(ids)) != len(ids):
        raise ValueError(f"{path}: item ids repeat")
    return questions


def load_prompts(default: str, path: Path = PROMPTS) -> dict[str, str]:
    """`default` (models.toml's system prompt) and the named prompts of `path`."""
    return {DEFAULT_PROMPT: default} | {name: table["text"] for name, table in tomllib.loads(path.read_text()).items()}


@dataclass(frozen=True, slots=True)
class Answer:
    reply: str
    first_token_ms: float | None
    first_sentence_ms: float | None
    tokens: int
    writing_s: float
    prompt: PromptUsage | None


async def ask(client: LLMClient | QuickAnswers, question: Question, *, slot: int | None = 0) -> Answer:
    """One question through the client, as a call asks it; the reply and its timings."""
    splitter = SentenceSplitter()
    usage: list[PromptUsage] = []
    reply, tokens = "", 0
    first_token = first_sentence = None
    started = time.monotonic()
    async for delta in client.stream_chat(client.with_system_prompt(question.messages()), slot=slot, on_usage=usage.append):
        now = time.monotonic()
        if first_token is None:
            first_token = now
        if first_sentence is None and splitter.push(delta):
            first_sentence = now
        reply += delta
        tokens += 1
    ended = time.monotonic()
    if first_sentence is None and first_token is not None:
        first_sentence = ended  # a one-sentence reply is whole when the stream ends
    return Answer(
        reply=reply,
        first_token_ms=None if first_token is None else 1000 * (first_token - started),
        first_sentence_ms=None if first_sentence is None else 1000 * (first_sentence - started),
        tokens=tokens,
        writing_s=0.0 if first_token is None else ended - first_token,
        prompt=usage[-1] if usage else None,
    )


async def run_set(client: LLMClient | QuickAnswers, questions: list[Question]) -> dict[str, Any]:
    """Every question once, in order; the figures and each item's reply and score."""
    # The first request reads the whole system prompt; every later one finds it in the slot's cache,
    # as every turn of a call but the first of a fresh server does.
    warm_up = await ask(client, Question(id="warm-up", kind="warm-up", question="Hello.", check=AnswerCheck(accept=("hello",))))
    items, first_tokens, first_sentences, words = [], [], [], []
    tokens = writing = 0.0
    right = right_first = 0
    by_kind: dict[str, list[int]] = {}
    for question in questions:
        answer = await ask(client, question)
        score = score_reply(question.check, answer.reply)
        right += score.right
        right_first += score.right_first_sentence
        kind = by_kind.setdefault(question.kind, [0, 0])
        kind[0] += score.right
        kind[1] += 1
        words.append(score.words)
        if answer.first_token_ms is not None:
            first_tokens.append(answer.first_token_ms)
            first_sentences.append(answer.first_sentence_ms)
        # Tokens after the first, over the time they took: the writing speed, without the prompt.
        tokens += max(answer.tokens - 1, 0)
        writing += answer.writing_s
        items.append({
            "id": question.id, "right": score.right, "right_first_sentence": score.right_first_sentence,
            "first_token_ms": None if answer.first_token_ms is None else round(answer.first_token_ms, 1),
            "prompt_tokens": answer.prompt.tokens if answer.prompt else None, "reply": answer.reply,
        })
    return {
        "questions": len(questions),
        "right": right,
        "right_first_sentence": right_first,
        "right_share": round(right / len(questions), 3),
        "right_first_sentence_share": round(right_first / len(questions), 3),
        "right_by_kind": {kind: f"{r}/{n}" for kind, (r, n) in by_kind.items()},
        "mean_reply_words": round(sum(words) / len(words), 1),
        "cold_first_token_ms": None if warm_up.first_token_ms is None else round(warm_up.first_token_ms, 1),
        "cold_prompt_tokens": warm_up.prompt.tokens if warm_up.prompt else None,
        "first_token_ms_p50": percentile(first_tokens, 50),
        "first_token_ms_p95": percentile(first_tokens, 95),
        "first_sentence_ms_p50": percentile(first_sentences, 50),
        "tokens_per_s": round(tokens / writing, 1) if writing else None,
        "items": items,
    }


def choose(results: dict[str, dict[str, Any]], baseline: str) -> str | None:
    """The variant to make the default: the most answers right in the first sentence (then right
    anywhere, then the sooner first sentence) among those whose first sentence p50 is within
    FIRST_SENTENCE_BUDGET times the baseline's."""
    budget = FIRST_SENTENCE_BUDGET * (results[baseline]["first_sentence_ms_p50"] or 0)
    fast = [name for name, r in results.items() if r["first_sentence_ms_p50"] is not None and r["first_sentence_ms_p50"] <= budget]
    return max(
        fast,
        key=lambda n: (results[n]["right_first_sentence"], results[n]["right"], -results[n]["first_sentence_ms_p50"]),
        default=None,
    )


async def bench_quality(args: argparse.Namespace) -> None:
    from parley.fetch_llm import CANDIDATES
    from parley.services.llm_server import EmbeddedLLMServer
    from parley.settings import load_settings

    settings = load_settings()
    questions = load_questions()
    prompts = load_prompts(settings.llm.system_prompt)
    model_names = args.models.split(",") if args.models else list(CANDIDATES)
    prompt_names = args.prompts.split(",") if args.prompts else list(prompts)
    unknown = [m for m in model_names if m not in CANDIDATES] + [p for p in prompt_names if p not in prompts]
    if unknown:
        raise SystemExit(f"unknown model or prompt: {', '.join(unknown)} (models: {', '.join(CANDIDATES)}; prompts: {', '.join(prompts)})")
    today = next(
        (c.name for c in CANDIDATES.values() if c.package == settings.llm_server.package and c.file == settings.llm_server.file and not settings.llm_server.path),
        None,
    )
    # The guard as a call has it; measured at the default's length when a deployment turned it off.
    copy_words = settings.llm.copy_words or LLMConfig().copy_words
    reask_words = settings.llm.copy_reask_words
    load_before = Path("/proc/loadavg").read_text().split()[:3]
    results: dict[str, dict[str, Any]] = {}
    for model_name in model_names:
        candidate = CANDIDATES[model_name]
        server = EmbeddedLLMServer(
            candidate.server_config(settings.llm_server), log_dir=Path(settings.server.log_dir).expanduser()
        )
        await server.start()
        try:
            for prompt_name in prompt_names:
                config = dataclasses.replace(
                    settings.llm, base_url=server.base_url, model=candidate.model, system_prompt=prompts[prompt_name],
                    temperature=0.0, seed=SEED,
                )
                async with LLMClient(config) as client:
                    chats = {
                        "": (client, False, False),
                        QUICK: (QuickAnswers(client, QuickAnswersConfig()), True, False),
                        QUICK + GUARD: (QuickAnswers(CopyGuard(client, copy_words, ask_again_at=reask_words)), True, True),
                    }
                    for suffix, (chat, quick, guard) in chats.items():
                        figures = await run_set(chat, questions)
                        name = f"{model_name} / {prompt_name}{suffix}"
                        results[name] = {
                            "model": model_name, "prompt": prompt_name, "quick_answers": quick,
                            "copy_words": copy_words if guard else 0, "copy_reask_words": reask_words if guard else 0,
                            "licence": candidate.licence,
                        } | figures
                        print(
                            f"{name}: right {figures['right']}/{len(questions)}, first sentence {figures['right_first_sentence']},"
                            f" first token p50 {ms(figures['first_token_ms_p50'])} ms, {figures['tokens_per_s']} tokens/s",
                            flush=True,
                        )
        finally:
            await server.stop()
    load_after = Path("/proc/loadavg").read_text().split()[:3]
    baseline = f"{today} / {DEFAULT_PROMPT}"
    if baseline not in results:
        baseline = next(iter(results))
    add_ratios(results, baseline, lambda r: r["right"], "right_vs_default")
    add_ratios(results, baseline, lambda r: r["first_token_ms_p50"], "first_token_vs_default")
    add_ratios(results, baseline, lambda r: r["first_sentence_ms_p50"], "first_sentence_vs_default")
    add_ratios(results, baseline, lambda r: r["tokens_per_s"], "tokens_per_s_vs_default")
    chosen = choose(results, baseline)
    figures = {
        "benchmark": "quality",
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "questions": len(questions),
        "baseline": baseline,
        "chosen": chosen,
        "rule": (
            f"most right in the first sentence, then most right, then the sooner first sentence, among variants whose "
            f"first-sentence p50 is at most {FIRST_SENTENCE_BUDGET}x the baseline's"
        ),
        "settings": {
            "temperature": 0, "seed": SEED, "max_tokens": settings.llm.max_tokens,
            "llm_server_threads": settings.llm_server.threads, "llm_server_threads_batch": settings.llm_server.threads_batch,
            "machine_cores": os.cpu_count(), "loadavg_before": load_before, "loadavg_after": load_after,
        },
        "prompts": {name: prompts[name] for name in prompt_names},
        "variants": results,
    }
    write_results("quality", figures, _table(figures), _HEADER, copy_to=args.json)


_HEADER = (
    "# Answer quality and speed, per LLM and system prompt\n\n"
    "`parley bench quality`: the question set of bench/quality/questions.toml (facts, arithmetic, conversions,"
    " yes or no, spelling, follow-ups that need the history, \"say that again\", questions it cannot know), asked"
    " through Parley's LLM client against the bundled llama-server, one question at a time, temperature 0, seed 42;"
    " each model and prompt three times: the LLM alone, \"+ quick answers\" (sums, units and repeats answered by"
    " pipeline/quick_answers.py) and \"+ copies asked again\" (pipeline/copy_guard.py), as in a call)."
    " Scored by parley/bench/quality_scorer.py: *right* anywhere in the reply, and *first* in its first sentence."
    " Ratios against today's default (models.toml's model and prompt). The prompts are in the JSON.\n"
)


def _table(figures: dict[str, Any]) -> str:
    n = figures["questions"]
    load = figures["settings"]
    lines = [
        f"\n## {figures['when']}: {n} questions, load average {' '.join(load['loadavg_before'])} before,"
        f" {' '.join(load['loadavg_after'])} after ({load['machine_cores']} cores)\n",
        "| model / prompt | right | first | words | first token p50 ms | first sentence p50 ms | tokens/s | cold first token ms (prompt tokens) | right vs default | first sentence vs default |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, r in figures["variants"].items():
        mark = " (chosen)" if name == figures["chosen"] else ""
        lines.append(
            f"| {name}{mark} | {r['right']}/{n} | {r['right_first_sentence']}/{n} | {r['mean_reply_words']} |"
            f" {ms(r['first_token_ms_p50'])} | {ms(r['first_sentence_ms_p50'])} | {r['tokens_per_s']} |"
            f" {ms(r['cold_first_token_ms'])} ({r['cold_prompt_tokens']}) |"
            f" {r['right_vs_default']}x | {r['first_sentence_vs_default']}x |"
        )
    licences = sorted({f"{r['model']}: {r['licence']}" for r in figures["variants"].values()})
    lines.append(f"\nRule: {figures['rule']}. Chosen: {figures['chosen']}. Licences: {'; '.join(licences)}.")
    return "\n".join(lines)
