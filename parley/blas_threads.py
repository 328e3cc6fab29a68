"""How many threads numpy's BLAS (OpenBLAS) may use in this process.

numpy's OpenBLAS starts a thread per core and, after each call, keeps them spinning on
the CPU for a while before they sleep, ready for the next one. The server's BLAS calls
are small (the log-mel features of a transcription or of an end-of-turn decision: one
modest matrix product each), made from the inference lanes' threads while the other core
is busy with another model: the spinning was pure waste. Measured alone, with OpenBLAS's
own threads against one: a transcription (66 clips, tiny.en, one thread) 285 ms of CPU
against 169, wall 182 against 169 ms; an end-of-turn decision (Smart Turn, 4 s of speech)
204 ms of CPU against 85, wall 103 against 85 ms. Under load (`parley bench load ramp`,
8 calls) the spinning thread took 0.11 of a core.
"""

from __future__ import annotations

import functools
import logging

from threadpoolctl import threadpool_info, threadpool_limits

log = logging.getLogger(__name__)


@functools.cache
def limit_blas_threads(threads: int) -> None:
    """Let BLAS libraries loaded in this process use at most `threads` threads (0: their own
    default). `parley.cli.main` calls it before any command, `serve` included. Further calls with
    the same number do nothing."""
    if threads <= 0:
        return
    import numpy  # noqa: F401  (loads the BLAS the limit applies to: threadpoolctl sees only loaded ones)

    threadpool_limits(limits=threads, user_api="blas")
    if log.isEnabledFor(logging.DEBUG):  # threadpool_info scans every loaded library
        pools = [f"{p['internal_api']} {p['num_threads']}" for p in threadpool_info() if p["user_api"] == "blas"]
        log.debug("BLAS threads: %s", ", ".join(pools) or "no BLAS library loaded")
