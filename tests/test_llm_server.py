"""The bundled llama-server runs as models.toml's [llm_server] says."""

import dataclasses
import os

import pytest

from parley.runtime import services
from pipeline.llm_client import PromptUsage
from pipeline.llm_pool import LLMPool

pytestmark = pytest.mark.slow


def test_the_bundled_llama_server_runs_with_the_configured_threads_spin_and_niceness(settings, llm_server):
    pid = llm_server.child.pid
    argv = open(f"/proc/{pid}/cmdline", "rb").read().split(b"\0")
    options = {argv[i].decode(): argv[i + 1].decode() for i in range(1, len(argv) - 1) if argv[i].startswith(b"--")}
    config = settings.llm_server
    assert options["--threads"] == str(config.threads) and options["--threads-batch"] == str(config.threads_batch)
    assert options["--poll"] == str(config.poll) == "50"
    assert options["--parallel"] == str(config.parallel)
    # Every thread of it (the workers start after exec) yields the CPU to Parley's own work.
    for thread in os.listdir(f"/proc/{pid}/task"):
        assert os.getpriority(os.PRIO_PROCESS, int(thread)) == os.getpriority(os.PRIO_PROCESS, 0) + config.nice


async def test_two_bundled_servers_each_serve_the_dialogs_kept_on_them(settings, tmp_path):
    # [llm_server] instances = 2: two llama-servers on ports of their own, logging apart, and
    # one pool over both that sends the first dialog to one and the second to the other.
    settings = dataclasses.replace(
        settings,
        llm=dataclasses.replace(settings.llm, base_url="", temperature=0.0, seed=42, max_tokens=8),
        llm_server=dataclasses.replace(settings.llm_server, instances=2),
        server=dataclasses.replace(settings.server, log_dir=str(tmp_path)),
    )
    question = [{"role": "user", "content": "What is the capital of France?"}]
    async with services(settings, redis=False) as running:
        urls = running.settings.llm.base_url.split(",")
        assert len(set(urls)) == 2 and [s.name for s in running.llm_servers] == ["llama-server", "llama-server-2"]
        async with LLMPool(running.settings.llm) as pool:
            # Every slot of both servers reads the system prompt: a dialog's first request then
            # reads only what follows it.
            assert await pool.warm() == 2 * settings.llm_server.parallel
            read: list[PromptUsage] = []
            replies = {
                dialog: "".join([d async for d in pool.stream_chat(
                    pool.with_system_prompt(question), dialog_id=dialog, on_usage=read.append
                )])
                for dialog in ("a", "b")
            }
            assert await pool.problem() is None
    assert len(read) == 2 and all(usage.cached > 100 and usage.read < 20 for usage in read), read
    # The same question at temperature 0 on the same model: the same answer from each.
    assert replies["a"].strip() and replies["a"] == replies["b"]
    for log in ("llama-server.log", "llama-server-2.log"):
        # The slots warmed, then one dialog.
        assert (tmp_path / log).read_text().count("launch_slot") == settings.llm_server.parallel + 1, log
