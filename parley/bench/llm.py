"""`parley bench llm`: the LLM pool's throughput and first token, sequential, concurrent and as prompts."""

from __future__ import annotations

import argparse
import asyncio
import os
import time

from parley.bench.results import ms, percentile, write_results


QUESTIONS = [
    ["What is the capital of France?", "How many people live there?", "Name one famous museum in it."],
    ["What colour is the sky?", "Why is it that colour?", "What colour is it at sunset?"],
    ["Give me a tip for sleeping better.", "And another one?", "How long should an adult sleep?"],
    ["What is a good breakfast?", "Is coffee healthy?", "How much water should I drink?"],
    ["Tell me about the moon.", "How far away is it?", "Who first walked on it?"],
    ["What is the largest ocean?", "How deep is it?", "Name an animal that lives there."],
    ["How do I boil an egg?", "How long for a soft egg?", "Should I add salt to the water?"],
    ["What is the tallest mountain?", "Where is it?", "Who climbed it first?"],
]


async def _conversation(pool, questions: list[str], first_tokens: list[float]) -> tuple[int, int]:
    """Ask the questions in order, each with the dialog so far; returns (requests, tokens)."""
    history: list[dict] = []
    tokens = 0
    for question in questions:
        history.append({"role": "user", "content": question})
        started = time.monotonic()
        reply = ""
        async for delta in pool.stream_chat(pool.with_system_prompt(history)):
            if not reply:
                first_tokens.append(1000 * (time.monotonic() - started))
            reply += delta
            tokens += 1
        history.append({"role": "assistant", "content": reply})
    return len(questions), tokens


async def bench_llm(args: argparse.Namespace) -> None:
    import dataclasses

    from parley.runtime import services
    from parley.settings import load_settings
    from pipeline.llm_pool import LLMPool

    settings = load_settings()
    settings = dataclasses.replace(settings, llm=dataclasses.replace(settings.llm, temperature=0.0, seed=42))
    base = settings.llm_pool
    modes = {
        "sequential": dataclasses.replace(base, mode="concurrent", max_inflight=1, max_batch=1, queue_timeout_ms=600_000),
        "concurrent": dataclasses.replace(base, mode="concurrent", queue_timeout_ms=600_000),
        "prompts": dataclasses.replace(base, mode="prompts", queue_timeout_ms=600_000),
    }
    results: dict[str, dict[str, float | None]] = {}
    async with services(settings, redis=False) as running:
        for name, pool_config in modes.items():
            first_tokens: list[float] = []
            async with LLMPool(running.settings.llm, pool_config) as pool:
                await _conversation(pool, ["Say hello."], [])  # warm the server's caches
                started = time.monotonic()
                counts = await asyncio.gather(*(_conversation(pool, q, first_tokens) for q in QUESTIONS))
                elapsed = time.monotonic() - started
            requests, tokens = sum(c[0] for c in counts), sum(c[1] for c in counts)
            results[name] = {
                "requests_per_s": round(requests / elapsed, 2),
                "tokens_per_s": round(tokens / elapsed, 1),
                "first_token_ms_p50": percentile(first_tokens, 50),
                "first_token_ms_p99": percentile(first_tokens, 99),
                "seconds": round(elapsed, 2),
            }
            print(f"{name}: {results[name]}")
    for name in results:
        results[name]["throughput_vs_sequential"] = round(
            results[name]["tokens_per_s"] / results["sequential"]["tokens_per_s"], 2
        )
    figures = {
        "benchmark": "llm",
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "conversations": len(QUESTIONS),
        "settings": {
            "temperature": 0, "seed": 42, "max_tokens": settings.llm.max_tokens,
            "llm_server_parallel": settings.llm_server.parallel, "llm_server_threads": settings.llm_server.threads,
            "max_batch": base.max_batch, "window_ms": base.window_ms, "machine_cores": os.cpu_count(),
        },
        "modes": results,
    }
    row = f"| {figures['when']} | " + " | ".join(
        f"{results[m]['tokens_per_s']} tok/s ({results[m]['throughput_vs_sequential']}x), "
        f"first token p50 {ms(results[m]['first_token_ms_p50'])} / p99 {ms(results[m]['first_token_ms_p99'])} ms"
        for m in modes
    ) + " |"
    header = (
        "# LLM pool benchmark\n\n"
        "`parley bench llm`: 8 concurrent conversations of 3 questions against the bundled llama-server,"
        " temperature 0, seed 42. Throughput as a ratio to `sequential` (one request at a time).\n\n"
        "| when | sequential | concurrent | prompts |\n| --- | --- | --- | --- |\n"
    )
    write_results("llm", figures, row, header, copy_to=args.json)
