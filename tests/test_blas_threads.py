"""numpy's BLAS is held to [server] blas_threads in a Parley process (parley/blas_threads.py).

Each check runs in a fresh interpreter: the limit is process-wide, and the test process's own
BLAS must start at its library default for the comparison to mean anything. On a machine whose
BLAS runs one thread anyway, the checks could not tell a limit from none, so they skip there.
"""

import json
import os
import subprocess
import sys

import pytest

_REPORT = """
import json, sys
from threadpoolctl import threadpool_info
{before}
print(json.dumps([p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"]))
"""
# main() with a command that fails at once, after the limit is applied.
_CLI = "from parley import cli\ntry:\n    cli.main(['transcribe', '/nonexistent.wav'])\nexcept SystemExit:\n    pass\n"


def _blas_threads(before: str, **env: str) -> list[int]:
    done = subprocess.run(
        [sys.executable, "-c", _REPORT.format(before=before)],
        env={**os.environ, **env}, capture_output=True, text=True, timeout=120, check=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def default() -> list[int]:
    """Each loaded BLAS library's own thread count, with nothing limiting it."""
    threads = _blas_threads("import numpy")
    if max(threads, default=1) < 2:
        pytest.skip("this machine's BLAS runs one thread anyway")
    return threads


def test_the_default_holds_numpys_blas_to_one_thread(default):
    held = _blas_threads("from parley.blas_threads import limit_blas_threads; limit_blas_threads(1)")
    assert held and set(held) == {1}


def test_zero_leaves_the_librarys_own_default(default):
    assert _blas_threads("from parley.blas_threads import limit_blas_threads; limit_blas_threads(0); import numpy") == default


def test_the_cli_applies_the_setting_before_any_command(default):
    """`parley <command>` (the server included) limits the BLAS from [server] blas_threads, which the
    environment can override."""
    assert set(_blas_threads(_CLI)) == {1}
    assert _blas_threads(_CLI, PARLEY_SERVER_BLAS_THREADS="0") == default
