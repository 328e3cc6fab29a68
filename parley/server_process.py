"""Running `parley serve` as a child process on a free port, for benchmarks and end-to-end tests."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import ssl
import sys
import time
from collections.abc import AsyncIterator

import httpx

from parley.errors import ParleyError


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.asynccontextmanager
async def server_process(
    extra_env: dict[str, str] | None = None,
    *,
    log_path: str | None = None,
    port: int | None = None,
    tls: tuple[str, str] | None = None,
) -> AsyncIterator[str]:
    """`parley serve` on `port` (default: a free one), ready (GET /readyz answers 200); yields its URL.

    tls: (certificate, key) PEM files: the server speaks https:// and wss://, and the readiness
    check trusts that certificate.
    """
    async with server_child(extra_env, log_path=log_path, port=port, tls=tls) as (url, _):
        yield url


@contextlib.asynccontextmanager
async def server_child(
    extra_env: dict[str, str] | None = None,
    *,
    log_path: str | None = None,
    port: int | None = None,
    tls: tuple[str, str] | None = None,
) -> AsyncIterator[tuple[str, asyncio.subprocess.Process]]:
    """Like `server_process`, yielding the process too (to signal it). On exit it is sent SIGTERM
    (it drains), and a second signal if it has not exited within 30 s."""
    port = port or free_port()
    env = {**os.environ, **(extra_env or {})}
    log = open(log_path, "ab") if log_path else asyncio.subprocess.DEVNULL  # noqa: SIM115 - closed below
    tls_args = ["--ssl-certfile", tls[0], "--ssl-keyfile", tls[1]] if tls else []
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "parley.cli", "serve", "--port", str(port), *tls_args, env=env,
        stdout=log, stderr=log,
    )
    url = f"{'https' if tls else 'http'}://127.0.0.1:{port}"
    try:
        try:
            await wait_ready(url, process, verify=ssl.create_default_context(cafile=tls[0]) if tls else True)
        except ParleyError as error:
            if not log_path:
                raise
            raise ParleyError(f"{error}; the end of its log ({log_path}):\n{_tail(log_path)}") from None
        yield url, process
    finally:
        if process.returncode is None:
            process.terminate()
            try:
                await asyncio.wait_for(process.wait(), 30)
            except TimeoutError:
                process.terminate()  # the second signal: exit at once
                await process.wait()
        if log_path:
            log.close()


def _tail(path: str, lines: int = 30) -> str:
    with open(path, "rb") as file:
        return b"".join(file.readlines()[-lines:]).decode(errors="replace")


async def wait_ready(
    url: str,
    process: asyncio.subprocess.Process | None = None,
    timeout_s: float = 120,
    *,
    verify: ssl.SSLContext | bool = True,
) -> None:
    deadline = time.monotonic() + timeout_s
    async with httpx.AsyncClient(timeout=2.0, verify=verify) as client:
        while time.monotonic() < deadline:
            if process is not None and process.returncode is not None:
                raise ParleyError(f"the server exited with code {process.returncode} while starting")
            with contextlib.suppress(httpx.HTTPError):
                if (await client.get(f"{url}/readyz")).status_code == 200:
                    return
            await asyncio.sleep(0.2)
    raise ParleyError(f"the server at {url} was not ready within {timeout_s:.0f} s")


