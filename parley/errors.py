"""Errors of the process-level glue: configuration and the embedded services."""


class ParleyError(Exception):
    """Base of Parley's own errors."""


class ConfigError(ParleyError):
    """models.toml or an environment override is wrong."""


class ServiceError(ParleyError):
    """An embedded service (Redis, llama-server) cannot be started or has died."""


class CallFailed(ParleyError):
    """`parley call` could not make or finish the call: server unreachable, refused, or broken."""
