"""Fuzzing the protocol against a real server (parley.bench.fuzz_messages, parley.bench.fuzz_client).

A few hundred examples, the same every run (seeded), over a few long-lived sockets: after each,
a socket answers a ping (the one used, or, when the server closed it for a documented reason,
a new one); no message is answered `internal_error`; every answer docs/protocol.md fixes for a
message comes; and the server's log holds no traceback. `parley bench fuzz` runs 10,000.
"""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest

from parley.bench.fuzz_client import FUZZ_SERVER_ENV, fuzz, tracebacks
from parley.bench.fuzz_messages import real_offer
from tests.conftest import own_server

pytestmark = pytest.mark.slow

EXAMPLES = 250
SEED = 13


async def test_no_fuzzed_message_kills_a_socket_or_goes_unanswered(embedded_redis, llm_server, tmp_path):
    sdp = await real_offer()
    received: Counter[str] = Counter()

    def each(example, outcome) -> None:
        received.update(outcome.received)
        assert outcome.clean, f"{example}\n{outcome.describe()}"

    async with own_server(embedded_redis.url, llm_server.base_url, tmp_path, **FUZZ_SERVER_ENV) as url:
        await asyncio.to_thread(fuzz, url, sdp, examples=EXAMPLES, seed=SEED, each=each)
    assert tracebacks((tmp_path / "server.log").read_text(errors="replace")) == []
    # The examples reached every kind of answer, an accepted offer and a refused one included.
    answers = {"pong", "answer", "bye", "session", "invalid_json", "invalid_message", "unknown_type", "out_of_order",
               "invalid_offer", "resume_failed"}
    assert answers <= received.keys(), answers - received.keys()
