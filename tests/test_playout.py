"""A reply's playout: its next piece is synthesised ahead of need while the audio queued before it
lasts longer than the slack, hurried when it is down to that, and waited for otherwise."""

import asyncio

from pipeline.inference import Priority, Urgency
from pipeline.playout import Playout


async def test_a_piece_is_waited_for_until_the_reply_has_audio_to_spare():
    playout = Playout(0.6)
    assert playout.urgency() is Priority.WAITED_FOR  # not audible yet: the caller waits for it
    playout.audible()
    playout.queued(0.5)
    assert playout.urgency() is Priority.WAITED_FOR  # less than the slack left to play


async def test_a_piece_ahead_of_need_is_hurried_once_the_slack_is_used_up():
    playout = Playout(0.6)
    playout.audible()
    playout.queued(0.8)
    ahead = playout.urgency()
    assert isinstance(ahead, Urgency) and ahead.priority is Priority.AHEAD
    async with asyncio.timeout(5):
        while ahead.priority is not Priority.WAITED_FOR:  # ~0.2 s: 0.8 queued, 0.6 of slack
            await asyncio.sleep(0.02)
    assert playout.left_s() <= 0.6


async def test_the_audio_left_counts_down_with_time_and_never_below_zero():
    playout = Playout(0.6)
    playout.audible(now=100.0)
    playout.queued(2.0)
    assert playout.left_s(now=100.5) == 1.5
    assert playout.left_s(now=103.0) == 0.0


async def test_closing_the_reply_stops_its_hurries_and_no_slack_means_all_waited_for():
    playout = Playout(0.6)
    playout.audible()
    playout.queued(0.7)
    ahead = playout.urgency()
    playout.close()
    await asyncio.sleep(0.3)
    assert ahead.priority is Priority.AHEAD  # its reply is over: nothing hurries it
    off = Playout(0.0)
    off.audible()
    off.queued(10.0)
    assert off.urgency() is Priority.WAITED_FOR
