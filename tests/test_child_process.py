import asyncio
import os
import signal
import sys

import pytest

from parley.errors import ServiceError
from parley.services.child import ChildProcess


def marker_probe(path):
    async def probe() -> bool:
        return path.exists()

    return probe


def child(tmp_path, code: str, *, becomes_ready: bool = True, **kwargs) -> ChildProcess:
    ready = tmp_path / "ready"
    touch = f"pathlib.Path({str(ready)!r}).touch()" if becomes_ready else ""
    script = f"import pathlib, time\n{touch}\n{code}"
    return ChildProcess(
        "test-child", [sys.executable, "-c", script], probe=marker_probe(ready), log_path=tmp_path / "child.log", **kwargs
    )


async def wait_for(predicate, seconds: float = 10.0) -> None:
    async with asyncio.timeout(seconds):
        while not predicate():
            await asyncio.sleep(0.02)


async def test_a_child_that_dies_is_restarted_and_logged(tmp_path, caplog):
    proc = child(tmp_path, "time.sleep(60)")
    await proc.start()
    first = proc.pid
    os.kill(first, signal.SIGKILL)
    await wait_for(lambda: proc.restarts == 1)
    assert proc.ready and proc.pid != first
    assert any("died with exit code -9" in r.message for r in caplog.records)
    await proc.stop()
    await proc.stop()  # idempotent
    assert not proc.ready


async def test_a_child_that_fails_to_start_reports_why(tmp_path):
    proc = child(tmp_path, "print('boom: bad config'); raise SystemExit(3)", becomes_ready=False)
    with pytest.raises(ServiceError, match="exited with code 3 while starting.*boom: bad config"):
        await proc.start()


async def test_a_child_that_dies_after_start_then_cannot_restart_gives_up(tmp_path):
    flag = tmp_path / "crash"
    proc = child(tmp_path, f"import os\nif os.path.exists({str(flag)!r}): raise SystemExit(4)\ntime.sleep(60)", max_restarts=2)
    await proc.start()
    flag.touch()
    os.kill(proc.pid, signal.SIGKILL)
    await wait_for(lambda: proc.failure is not None)
    assert not proc.ready
    assert "test-child" in proc.failure
    await proc.stop()


async def test_a_missing_binary_is_a_service_error(tmp_path):
    proc = ChildProcess("ghost", ["/nonexistent/ghost"], probe=marker_probe(tmp_path / "x"), log_path=tmp_path / "l")
    with pytest.raises(ServiceError, match="cannot start ghost"):
        await proc.start()


async def test_a_child_can_be_made_nicer_than_parley_with_all_its_threads(tmp_path):
    # The child starts a thread after exec, as llama-server starts its workers: it inherits the niceness.
    proc = child(tmp_path, "import threading\nthreading.Thread(target=time.sleep, args=(60,)).start()\ntime.sleep(60)", nice=3)
    await proc.start()
    try:
        await wait_for(lambda: len(os.listdir(f"/proc/{proc.pid}/task")) == 2)
        ours = os.getpriority(os.PRIO_PROCESS, 0)
        for thread in os.listdir(f"/proc/{proc.pid}/task"):
            assert os.getpriority(os.PRIO_PROCESS, int(thread)) == min(19, ours + 3)
    finally:
        await proc.stop()
