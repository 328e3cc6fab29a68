"""The bundled llama-server runs as models.toml's [llm_server] says."""

import os

import pytest

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
