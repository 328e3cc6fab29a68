"""The call harness's reading of the server's refusals and goodbyes, and of gaps in the bot's audio (no server needed)."""

from __future__ import annotations

import json

import pytest

from parley.call_client import CallClient, _raise_refusal, timestamp_gap_s
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



class _Frame:
    def __init__(self, pts: int, *, samples: int = 960, sample_rate: int = 48000) -> None:
        self.pts, self.samples, self.sample_rate = pts, samples, sample_rate


def test_a_timestamp_gap_is_measured_across_the_wrap_and_a_jump_is_not_a_gap():
    assert timestamp_gap_s(None, _Frame(123)) == 0.0  # the first frame
    assert timestamp_gap_s(960, _Frame(960)) == 0.0  # in order
    assert timestamp_gap_s(960, _Frame(960 + 19 * 960)) == 0.38  # a quiet bot's DTX gap
    assert timestamp_gap_s(2**32 - 960, _Frame(18 * 960)) == 0.38  # across the wrap of 2^32
    assert timestamp_gap_s(160, _Frame(160 + 19 * 160, samples=160, sample_rate=8000)) == 0.38  # PCMU
    assert timestamp_gap_s(960, _Frame(0)) == 0.0  # behind (a repeat): no gap
    assert timestamp_gap_s(960, _Frame(960 + 48000 * 120)) == 0.0  # two minutes ahead: a new stream
