"""Errors of the process-level glue: configuration and the embedded services."""


class ParleyError(Exception):
    """Base of Parley's own errors."""


class ConfigError(ParleyError):
    """models.toml or an environment override is wrong."""


class ServiceError(ParleyError):
    """An embedded service (Redis, llama-server) cannot be started or has died."""


class CallFailed(ParleyError):
    """`parley call` could not make or finish the call: server unreachable, refused, or broken."""


class CallRefused(CallFailed):
    """The server had no room for the call (`over_capacity`) or limited the caller (`rate_limited`).

    code: the protocol's error code; retry_after_s: when the server said to try again;
    position: the call's place in the service's waiting line (None: it has none).
    """

    def __init__(self, message: str, *, code: str, retry_after_s: float | None, position: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.retry_after_s = retry_after_s
        self.position = position
