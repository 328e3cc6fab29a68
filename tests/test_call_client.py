"""The call harness's reading of the server's refusals and goodbyes (no server needed)."""

from __future__ import annotations

import json

import pytest

from parley.call_client import CallClient, _raise_refusal
from parley.errors import CallFailed, CallRefused


def test_a_refusal_for_the_addresses_own_calls_is_a_refusal_without_a_retry_time():
    with pytest.raises(CallRefused) as refused:
        _raise_refusal({"type": "error", "code": "too_many_calls", "message": "4 calls", "kind": "call", "limit": 4})
    assert (refused.value.code, refused.value.retry_after_s) == ("too_many_calls", None)


@pytest.mark.parametrize("reason", ["max_call_length", "resumed_elsewhere"])
async def test_a_call_the_server_ended_for_good_is_not_resumed(reason):
    class Socket:
        """What the server sent before it closed."""

        def __aiter__(self):
            return self

        sent = [json.dumps({"type": "bye", "reason": reason})]

        async def __anext__(self):
            if not self.sent:
                raise StopAsyncIteration
            return self.sent.pop(0)

    client = CallClient("http://127.0.0.1:9")
    await client._read(Socket())
    with pytest.raises(CallFailed, match="said not to come back"):
        await client.recover()

