"""Loads models.toml once into typed settings, with environment overrides.

Nothing else reads the file. An override is `PARLEY_<SECTION>_<KEY>` for any
top-level key of a section (`PARLEY_ASR_MODEL=base`); `REDIS_URL` overrides
`[redis] url`. The value is parsed as the field's type (a list: its items separated
by commas or spaces).
"""

import dataclasses
import os
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from media.config import MediaConfig
from parley.errors import ConfigError
from parley.services.llm_server import LLMServerConfig
from pipeline.circuit_breaker import BreakerConfig
from pipeline.inference import InferenceConfig
from pipeline.llm_pool import PoolConfig
from pipeline.quick_answers import QuickAnswersConfig
from pipeline.shedding import SheddingConfig
from signaling.config import AdmissionConfig, SignalingConfig
from signaling.rate_limit import RateLimitConfig
from pipeline.config import (
    ASRConfig,
    DialogConfig,
    LLMConfig,
    ModelSource,
    TTSConfig,
    TurnConfig,
    TurnModelConfig,
    VADConfig,
)

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_PATH = ROOT / "models.toml"


@dataclass(frozen=True, slots=True, kw_only=True)
class ServerConfig:
    """Where `parley serve` listens, and where the embedded services write their logs.

    drain_timeout_s: on SIGTERM, how long calls in progress may go on before they are sent
        to another replica (signaling.drain).
    malloc_trim_s: how often the memory malloc holds free is given back (parley.free_memory);
        0 never.
    forwarded_allow_ips: proxies whose X-Forwarded-For names the client (its address is the one
        rate limits and per-address caps count): addresses or networks, comma-separated; "*" any.
    blas_threads: threads numpy's BLAS may use (parley.blas_threads); 0 its own default.
    """

    host: str = "127.0.0.1"
    port: int = 8000
    log_dir: str = "~/.local/state/parley/logs"
    drain_timeout_s: float = 60.0
    malloc_trim_s: float = 10.0
    forwarded_allow_ips: str = "127.0.0.1,::1"
    blas_threads: int = 1


@dataclass(frozen=True, slots=True, kw_only=True)
class RedisConfig:
    """url: a Redis URL; empty (and no sentinels) starts a private redis-server keeping its data
        in state_dir. With `cluster`, the address of any node of the cluster.

    max_connections: the process's pool of connections; a burst past it waits for one (not in a
        cluster: redis-py's cluster client has no waiting pool, see parley.redis_client).
    pool_timeout_s: the longest a command waits for a connection before it fails.
    sentinels: Redis Sentinel addresses, "host:port,host:port"; Parley then asks them for the
        master named `sentinel_master` (and asks again after a failover), and takes only the
        user, password, database and TLS (rediss://) from `url`, if set.
    cluster: `url` is a node of a Redis Cluster.
    retries: how many times a command whose connection failed (or timed out) is tried again,
        after exponentially longer waits with jitter (up to 2 s): how a failover is ridden out.
    replica_wait_ms: with sentinels, how long a dialog turn's write waits for a replica to have it
        before the turn is written again (pipeline.dialog_store); 0 takes the master's word alone
        (a failover may then lose the last turns written).

    From the environment: REDIS_URL, REDIS_SENTINELS, REDIS_SENTINEL_MASTER, REDIS_CLUSTER (1 or 0),
    as well as PARLEY_REDIS_<KEY>.
    """

    url: str = ""
    state_dir: str = "~/.local/state/parley/redis"
    max_connections: int = 64
    pool_timeout_s: float = 5.0
    sentinels: str = ""
    sentinel_master: str = "parley"
    cluster: bool = False
    retries: int = 5
    replica_wait_ms: int = 500

    def __post_init__(self) -> None:
        if self.sentinels and self.cluster:
            raise ValueError("redis: sentinels and cluster are two ways to run Redis; choose one")
        if self.cluster and not self.url:
            raise ValueError("redis.cluster needs url: the address of a node of the cluster")
        if self.retries < 0 or self.replica_wait_ms < 0:
            raise ValueError("redis.retries and redis.replica_wait_ms must be 0 or more")
        _ = self.sentinel_addresses  # a malformed address fails here, not at the first connection

    @property
    def sentinel_addresses(self) -> list[tuple[str, int]]:
        """`sentinels` as (host, port) pairs; an IPv6 host in brackets: "[::1]:26379"."""
        addresses = []
        for address in filter(None, (part.strip() for part in self.sentinels.split(","))):
            host, _, port = address.rpartition(":")
            if not host or not port.isdigit():
                raise ValueError(f"redis.sentinels: {address!r} is not host:port")
            addresses.append((host.removeprefix("[").removesuffix("]"), int(port)))
        return addresses


@dataclass(frozen=True, slots=True, kw_only=True)
class Settings:
    """Everything configurable, one typed section per table of models.toml."""

    server: ServerConfig = ServerConfig()
    redis: RedisConfig = RedisConfig()
    signaling: SignalingConfig = SignalingConfig()
    rate_limit: RateLimitConfig = RateLimitConfig()
    admission: AdmissionConfig = AdmissionConfig()
    shedding: SheddingConfig = SheddingConfig()
    media: MediaConfig = MediaConfig()
    vad: VADConfig = VADConfig()
    turns: TurnConfig = TurnConfig()
    turn_model: TurnModelConfig = TurnModelConfig()
    dialog: DialogConfig = DialogConfig()
    asr: ASRConfig = ASRConfig()
    tts: TTSConfig = TTSConfig()
    inference: InferenceConfig = InferenceConfig()
    llm: LLMConfig = LLMConfig()
    quick_answers: QuickAnswersConfig = QuickAnswersConfig()
    llm_pool: PoolConfig = PoolConfig()
    llm_breaker: BreakerConfig = BreakerConfig()
    llm_server: LLMServerConfig = LLMServerConfig()


# Redis's settings by the names deployments already give them, beside PARLEY_REDIS_<KEY>.
_REDIS_ENVIRONMENT = {
    "REDIS_URL": "url",
    "REDIS_SENTINELS": "sentinels",
    "REDIS_SENTINEL_MASTER": "sentinel_master",
    "REDIS_CLUSTER": "cluster",
}

# Settings itself is written without `from __future__ import annotations`, so these are classes.
_SECTIONS: dict[str, type] = {f.name: f.type for f in dataclasses.fields(Settings)}  # type: ignore[misc]


def load_settings(path: Path | None = None, environ: Mapping[str, str] | None = None) -> Settings:
    """Read models.toml (or `PARLEY_CONFIG`, or `path`) and apply environment overrides."""
    environ = os.environ if environ is None else environ
    path = path or Path(environ.get("PARLEY_CONFIG") or DEFAULT_PATH)
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"configuration file not found: {path}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: {exc}") from exc

    unknown = set(raw) - set(_SECTIONS)
    if unknown:
        raise ConfigError(f"{path}: unknown section(s) {', '.join(sorted(unknown))}")

    sections: dict[str, Any] = {}
    for name, cls in _SECTIONS.items():
        table = dict(raw.get(name, {}))
        for field in dataclasses.fields(cls):
            key = f"PARLEY_{name}_{field.name}".upper()
            if key in environ:
                table[field.name] = _parse(environ[key], field.type, key)
        if name == "redis":
            types = {f.name: f.type for f in dataclasses.fields(cls)}
            for variable, key in _REDIS_ENVIRONMENT.items():
                if environ.get(variable):
                    table[key] = _parse(environ[variable], types[key], variable)
        if name == "asr" and "models" in table:
            table["models"] = {
                model: _build(ModelSource, dict(src, packages=tuple(src.get("packages", ()))), f"asr.models.{model}")
                for model, src in table["models"].items()
            }
        sections[name] = _build(cls, table, name)
    return Settings(**sections)


def _build(cls: type, table: dict[str, Any], where: str) -> Any:
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(table) - names
    if unknown:
        raise ConfigError(f"[{where}] unknown key(s): {', '.join(sorted(unknown))}")
    try:
        return cls(**table)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"[{where}] {exc}") from exc


_SCALARS = {"int": int, "float": float, "bool": bool, "str": str}


def _parse(value: str, annotation: Any, key: str) -> Any:
    # A list of words (URLs, names): separated by commas or spaces, as `allowed_origins` is.
    if str(annotation) == "tuple[str, ...]":
        return tuple(part for part in re.split(r"[,\s]+", value) if part)
    # Stage configs use postponed annotations, so a field's type may be the string "int".
    kind = annotation if isinstance(annotation, type) else _SCALARS.get(str(annotation))
    try:
        if kind is bool:
            if value.lower() in ("1", "true", "yes", "on"):
                return True
            if value.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(value)
        if kind in (int, float):
            return kind(value)
        if kind is str:
            return value
    except ValueError:
        raise ConfigError(f"{key}={value!r} is not a valid {kind.__name__}") from None  # type: ignore[union-attr]
    raise ConfigError(f"{key} cannot be set from the environment")

