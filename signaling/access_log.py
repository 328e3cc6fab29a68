"""What the WebSocket server's log says of each request: its path, never its query string.

uvicorn logs every request with its query string: HTTP requests in its access log
(`uvicorn.access`: `"GET /?x=1 HTTP/1.1" 200`), WebSocket handshakes in `uvicorn.error`
(`"WebSocket /ws?resume" [accepted]`). A query string is where a client, or a proxy or
login in front of Parley, may carry something secret (a token, a signed link), and a log
is kept longer, and read by more people, than the request it records. Parley's own
clients keep the resume token out of URLs, but the log should not depend on every client
doing so: the query string is cut from those lines, and only the path is kept.

The access log itself stays on, rather than being turned off: who asked for what and
what they got (a 429, a 403) is what an operator reads it for, and the WebSocket lines
come through uvicorn's main logger, which cannot be turned off.
"""

from __future__ import annotations

import logging

UVICORN_LOGGERS = ("uvicorn.access", "uvicorn.error")


class DropQueryStrings(logging.Filter):
    """Cuts the query string from every path (an argument starting with "/") of a record."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple) and any(_has_query(arg) for arg in record.args):
            record.args = tuple(arg.partition("?")[0] if _has_query(arg) else arg for arg in record.args)
        return True


def _has_query(arg: object) -> bool:
    return isinstance(arg, str) and arg.startswith("/") and "?" in arg


def drop_query_strings() -> None:
    """Filter uvicorn's loggers; call after uvicorn configured its logging (`uvicorn.Config(...)`)."""
    for name in UVICORN_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, DropQueryStrings) for f in logger.filters):
            logger.addFilter(DropQueryStrings())
