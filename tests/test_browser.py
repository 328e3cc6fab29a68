"""The web client in a real browser: Debian's chromium driven by Playwright, against the real server.

Chromium's fake microphone plays a WAV made from ../shared/audio/jfk.flac; screenshots are
saved under test-artifacts/ for a person to look at.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import redis.asyncio as aioredis
import websockets

from media.audio_file import read_audio, write_wav
from parley.server_process import server_process
from pipeline.dialog_store import reply_turn_id
from signaling.admission import line_key
from tests.conftest import own_database, own_server, server_env, stored_turns
from tests.speech import JFK, JFK_TEXT, wer
from tests.test_metrics import samples

pytestmark = pytest.mark.slow

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
BASE_FLAGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--autoplay-policy=no-user-gesture-required",
]


@pytest.fixture(scope="module")
def microphone_wav(tmp_path_factory) -> Path:
    """JFK at 48 kHz 16-bit PCM, then 8 s of silence, so the bot's turn comes (played once: %noloop)."""
    path = tmp_path_factory.mktemp("mic") / "jfk-then-silence.wav"
    speech = read_audio(JFK, 48000)
    write_wav(path, np.concatenate([np.zeros(48000, np.int16), speech, np.zeros(48000 * 8, np.int16)]), 48000)
    return path


@pytest.fixture(scope="module")
def talking_microphone_wav(tmp_path_factory) -> Path:
    """JFK, then 12 s of silence, played over and over (no %noloop): a caller who keeps talking, so
    turns go on coming after the page reconnects, whenever that is."""
    path = tmp_path_factory.mktemp("mic") / "jfk-again-and-again.wav"
    speech = read_audio(JFK, 48000)
    write_wav(path, np.concatenate([np.zeros(48000, np.int16), speech, np.zeros(48000 * 12, np.int16)]), 48000)
    return path


# JFK after a second of silence, then 3 s more, over and over: one loop holds his whole sentence.
LOOP_S = 1 + 11 + 3


@pytest.fixture(scope="module")
def looping_microphone_wav(tmp_path_factory) -> Path:
    """JFK between a second and 3 s of silence, LOOP_S long, played over and over."""
    path = tmp_path_factory.mktemp("mic") / "jfk-looping.wav"
    speech = read_audio(JFK, 48000)
    silence = np.zeros(48000 * (LOOP_S - 1) - speech.size, np.int16)
    write_wav(path, np.concatenate([np.zeros(48000, np.int16), speech, silence]), 48000)
    return path


@pytest.fixture(scope="module")
async def playwright():
    from playwright.async_api import async_playwright

    async with async_playwright() as running:
        yield running


async def launch(playwright, *flags: str):
    return await playwright.chromium.launch(executable_path=CHROMIUM, args=[*BASE_FLAGS, *flags])


MIN_WORDS = 18
# The id of a turn whose final transcript has at least `minWords` words and whose reply was heard (the
# page shows voice to voice once the reply's audio plays) and is done (unless `done` is false), other
# than the turns in `seen`; null until there is one.
SETTLED_TURN = """({minWords, seen = [], done = true}) => {
  for (const user of document.querySelectorAll("[data-testid=transcript]")) {
    if (seen.includes(user.dataset.turnId)) continue;
    if (user.textContent.trim().split(/\\s+/).length < minWords) continue;
    const reply = document.querySelector(`[data-testid=reply][data-turn-id="${user.dataset.turnId}"]`);
    const latency = reply && reply.querySelector("[data-testid=latency]");
    const heard = latency && latency.textContent.includes("voice to voice");
    if (reply && heard && (!done || reply.dataset.done === "true")) {
      return user.dataset.turnId;
    }
  }
  return null;
}"""


def collect_replayed(frame: str | bytes, replayed: list[dict]) -> None:
    """Keep a server message that was replayed (on resuming) for the test to look at."""
    message = json.loads(frame)
    if message.get("replayed"):
        replayed.append(message)


# The bot's audio as chromium received it so far: packets, and seconds played out.
RECEIVED_AUDIO = """async () => {
  let got = [0, 0];
  (await window.parley.pc.getStats()).forEach((r) => {
    if (r.type === "inbound-rtp" && r.kind === "audio") got = [r.packetsReceived, r.totalSamplesDuration];
  });
  return got;
}"""


# Seconds of audio chromium has captured from the microphone for the call so far: a muted
# (disabled) track goes on counting them, with no energy in them.
CAPTURED_S = """async () => {
  let captured = 0;
  (await window.parley.pc.getStats()).forEach((r) => {
    if (r.type === "media-source" && r.kind === "audio") captured = r.totalSamplesDuration;
  });
  return captured;
}"""


async def until_page_says(page, script: str, done: Callable[[Any], bool], timeout_s: float) -> Any:
    """Evaluate `script` (an async function, e.g. one reading getStats) in the page until `done` holds
    for what it returns; that value. (Playwright's wait_for_function does not await a promise: a
    pending one is truthy, and it returns at once.)"""
    async with asyncio.timeout(timeout_s):
        while not done(value := await page.evaluate(script)):
            await asyncio.sleep(0.1)
    return value


def watch_console(page) -> list[str]:
    problems: list[str] = []
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(str(e)))
    return problems


def fake_microphone(wav, *, loop: bool = True) -> tuple[str, ...]:
    """chromium's flags for a microphone that says `wav` (over and over, unless `loop` is False)."""
    return (
        "--use-fake-ui-for-media-stream",
        "--use-fake-device-for-media-stream",
        f"--use-file-for-fake-audio-capture={wav}{'' if loop else '%noloop'}",
    )


async def ready_page(browser, url: str, **page_options):
    """A new page on `url`, once it says it is ready, and the errors its console shows from the start."""
    page = await browser.new_page(**page_options)
    problems = watch_console(page)
    await page.goto(url)
    await page.get_by_test_id("state").filter(has_text="ready").wait_for()
    return page, problems


async def silence_filled_s(url: str, timeout_s: float = 30.0) -> float:
    """The server's parley_caller_silence_filled_seconds_total, as soon as it is above 0 (0 if it
    stays there for `timeout_s`)."""
    async with httpx.AsyncClient() as http:
        for _ in range(int(timeout_s / 0.5)):
            got = samples((await http.get(f"{url}/metrics")).text)
            if (filled := got.get(("parley_caller_silence_filled_seconds_total", ()), 0.0)) > 0:
                return filled
            await asyncio.sleep(0.5)
    return 0.0


async def test_a_call_in_the_browser(playwright, server, microphone_wav):
    browser = await launch(playwright, *fake_microphone(microphone_wav, loop=False))
    try:
        page, problems = await ready_page(browser, server)
        await page.get_by_test_id("call").click()
        # A settled conversation, whatever the machine's speed: the final transcript of the whole
        # sentence (JFK says 22 words; a turn ended in one of his pauses would have at most 14), the
        # reply to that same turn finished, and its voice heard here. The page is read only then.
        await page.wait_for_function(SETTLED_TURN, arg={"minWords": MIN_WORDS}, timeout=120_000)
        turn_id = await page.evaluate(SETTLED_TURN, {"minWords": MIN_WORDS})
        texts = [t.strip() for t in await page.get_by_test_id("transcript").all_text_contents()]
        assert len(texts) == 1, texts  # one turn: JFK's pauses did not end it
        assert wer(JFK_TEXT, texts[0]) <= 0.15, texts
        reply = page.locator(f'[data-testid=reply][data-turn-id="{turn_id}"]')
        assert (await reply.text_content()).strip()
        assert await page.evaluate("window.parley.maxRemoteDb") > -45  # the reply was heard
        latency = await reply.get_by_test_id("latency").text_content()
        assert "voice to voice" in latency and "server:" in latency, latency
        assert "turn ended after" in latency and "talked over 0 ms" in latency, latency
        # The answer asked chromium's Opus encoder for DTX: in the silence after JFK it went quiet,
        # and the server filled the gaps with silence (the turn above ended in that silence).
        assert await silence_filled_s(server) > 0
        # The page's offer asked for the bot's voice in DTX: the quiet bot now sends a packet every
        # 400 ms, and chromium plays silence through the gaps as it did through the packets.
        packets, played_s = await page.evaluate(RECEIVED_AUDIO)
        packets_after, played_after_s = await until_page_says(  # two more seconds played out
            page, RECEIVED_AUDIO, lambda got: got[1] >= played_s + 2.0, timeout_s=30
        )
        # Up to the hangover's 10 packets as the bot settles, then one every 400 ms: not 50 a second.
        quiet_packets = packets_after - packets
        assert quiet_packets <= 10 + 2.5 * (played_after_s - played_s) + 2, (quiet_packets, played_after_s - played_s)
        ARTIFACTS.mkdir(exist_ok=True)
        await page.screenshot(path=str(ARTIFACTS / "browser-call.png"), full_page=True)
        await page.get_by_test_id("call").click()  # hang up
        await page.get_by_test_id("call").filter(has_text="Call").wait_for()
        assert problems == []
    finally:
        await browser.close()


async def test_a_caller_muted_before_the_call_is_not_heard_until_they_unmute(playwright, server, looping_microphone_wav):
    browser = await launch(playwright, *fake_microphone(looping_microphone_wav))
    try:
        page = await browser.new_page()
        problems = watch_console(page)
        transcripts: list[dict] = []

        def on_frame(frame: str | bytes) -> None:
            if (message := json.loads(frame)).get("type") == "transcript":
                transcripts.append(message)

        page.on("websocket", lambda ws: ws.on("framereceived", on_frame))
        await page.goto(server)
        await page.get_by_test_id("state").filter(has_text="ready").wait_for()
        mute = page.get_by_test_id("mute")
        await mute.click()  # before the call: it opens muted
        assert await mute.get_attribute("aria-pressed") == "true" and (await mute.text_content()).strip() == "Unmute"
        await page.get_by_test_id("call").click()
        await page.wait_for_function(
            "() => window.parley.pc && window.parley.pc.connectionState === 'connected'", timeout=30_000
        )
        assert await page.evaluate("window.parley.mic.getAudioTracks().every((t) => !t.enabled)")
        # A whole loop of the file captured while muted (JFK's sentence in it), and 5 s more: had the
        # server heard him, a partial transcript would have come every 400 ms of his speech.
        start = await page.evaluate(CAPTURED_S)
        await until_page_says(page, CAPTURED_S, lambda captured: captured >= start + LOOP_S + 5, timeout_s=90)
        assert transcripts == []
        assert await page.get_by_test_id("transcript").count() == 0
        await mute.click()  # unmuted: the next loop's sentence is heard
        assert await mute.get_attribute("aria-pressed") == "false" and (await mute.text_content()).strip() == "Mute"
        await page.get_by_test_id("transcript").first.wait_for(timeout=120_000)
        assert transcripts and all(t["text"] for t in transcripts)
        await page.get_by_test_id("call").click()  # hang up
        await page.get_by_test_id("call").filter(has_text="Call").wait_for()
        assert problems == []
    finally:
        await browser.close()


@contextlib.asynccontextmanager
async def line_taken(url: str):
    """Another caller holding a line of the server at `url`: a session whose offer was answered,
    until it says bye (or the block ends)."""
    from aiortc import RTCPeerConnection

    pc = RTCPeerConnection()
    try:
        async with websockets.connect(url.replace("http", "ws") + "/ws") as holder:
            assert json.loads(await holder.recv())["type"] == "session"
            pc.addTransceiver("audio", direction="sendrecv")
            await pc.setLocalDescription(await pc.createOffer())
            await holder.send(json.dumps({"type": "offer", "sdp": pc.localDescription.sdp}))
            async with asyncio.timeout(30):
                while json.loads(await holder.recv())["type"] != "answer":
                    pass
            yield holder
    finally:
        await pc.close()


async def test_a_caller_finding_every_line_busy_waits_in_line_and_gets_the_next_free_one(
    playwright, shared_redis, proxy, tmp_path, microphone_wav
):
    # A database of its own: the other tests' server would be a replica with free lines beside this one.
    async with own_server(own_database(shared_redis.url, 11), proxy.base_url, tmp_path,
                          PARLEY_ADMISSION_MAX_CALLS="1") as url:
        browser = await launch(playwright, *fake_microphone(microphone_wav, loop=False))
        try:
            async with line_taken(url) as holder:  # another caller holds the one line
                page, problems = await ready_page(browser, url)
                await page.get_by_test_id("call").click()
                await page.locator("#notice").filter(has_text="you are number 1 in line").wait_for(timeout=30_000)
                await holder.send(json.dumps({"type": "bye"}))  # the line comes free
            # The page, trying again in its turn, gets the line: its call connects.
            await page.wait_for_function(
                "() => window.parley.busy === null && window.parley.pc && window.parley.pc.connectionState === 'connected'",
                timeout=60_000,
            )
            await page.get_by_test_id("call").click()  # hang up
            await page.get_by_test_id("call").filter(has_text="Call").wait_for()
            assert problems == []
        finally:
            await browser.close()


async def test_a_caller_who_hangs_up_while_in_line_leaves_it_at_once(
    playwright, shared_redis, proxy, tmp_path, microphone_wav
):
    redis_url = own_database(shared_redis.url, 12)
    # A place held for two minutes: only the page's leaving can empty the line sooner.
    async with own_server(redis_url, proxy.base_url, tmp_path, PARLEY_ADMISSION_MAX_CALLS="1",
                          PARLEY_ADMISSION_LINE_HOLD_S="120") as url:
        browser = await launch(playwright, *fake_microphone(microphone_wav, loop=False))
        redis = aioredis.from_url(redis_url)
        try:
            async with line_taken(url):
                page, problems = await ready_page(browser, url)
                await page.get_by_test_id("call").click()
                await page.locator("#notice").filter(has_text="you are number 1 in line").wait_for(timeout=30_000)
                assert await redis.zcard(line_key("calls")) == 1
                await page.get_by_test_id("call").click()  # hang up while in line
                await page.get_by_test_id("call").filter(has_text="Call").wait_for()
                async with asyncio.timeout(30):  # well within the two minutes the place is held
                    while await redis.zcard(line_key("calls")):
                        await asyncio.sleep(0.1)
                await page.get_by_test_id("state").filter(has_text="ready").wait_for()
                assert await page.locator("#notice").is_hidden()
                assert await page.evaluate("window.parley.busy === null && !window.parley.redial")
                assert problems == []
        finally:
            await redis.aclose()
            await browser.close()


async def test_a_dropped_socket_mid_call_resumes_the_session_and_the_call_goes_on(
    playwright, server, shared_redis, talking_microphone_wav
):
    browser = await launch(playwright, *fake_microphone(talking_microphone_wav))
    try:
        page, problems = await ready_page(browser, server)
        await page.get_by_test_id("call").click()
        # The drop comes while the first reply is being heard (or just after, on a short reply).
        speaking = {"minWords": MIN_WORDS, "done": False}
        await page.wait_for_function(SETTLED_TURN, arg=speaking, timeout=120_000)
        first = await page.evaluate(SETTLED_TURN, speaking)
        reply = page.locator(f'[data-testid=reply][data-turn-id="{first}"] [data-testid=reply-text]')
        before = await page.evaluate(
            """() => {
              window.droppedPc = window.parley.pc;  // to tell the next peer connection from this one
              return {
                session: window.parley.session,
                turns: [...document.querySelectorAll("[data-testid=transcript]")].map((e) => e.dataset.turnId),
              };
            }"""
        )
        assert before["session"]["last_event_id"], before  # the page keeps the last event id it saw

        # The page forgets the events it saw, as if the drop had come before they reached it: the
        # server replays them all, on top of the history that holds the same turns.
        replayed: list[dict] = []
        page.on("websocket", lambda ws: ws.on("framereceived", lambda frame: collect_replayed(frame, replayed)))
        # The page's socket closes without the page asking for it, as when the network drops. The
        # page comes back to the same session and dials again by itself, on a new peer connection.
        # Both in one step: the call goes on talking, and an event arriving between the two would set
        # the last event id again and leave nothing of the first turn to replay (a closing socket
        # delivers no more messages to the page).
        await page.evaluate("window.parley.session.last_event_id = null; window.parley.ws.close()")
        await page.wait_for_function(
            """() => {
              const { session, pc } = window.parley;
              return session && session.resumed && pc && pc !== window.droppedPc && pc.connectionState === "connected";
            }""",
            timeout=60_000,
        )
        after = await page.evaluate("window.parley.session")
        assert after["session_id"] == before["session"]["session_id"]
        assert after["dialog_id"] == before["session"]["dialog_id"]
        assert after["resume_token"] != before["session"]["resume_token"]  # the old one is spent

        # The first turn's events were replayed, and the page shows the turn once, as the dialog
        # stored it: the reply as heard (what was played before the drop cut it, or all of it), not
        # with the replayed words again.
        assert {m["type"] for m in replayed if m.get("turn_id") == first} >= {"transcript", "reply"}, replayed
        # A reply the drop cut is answered again on the resumed side (a `restart`); once the page shows
        # it done, the dialog comes to hold it as the page shows it (stored as it played, then whole).
        await page.locator(f'[data-testid=reply][data-turn-id="{first}"][data-done="true"]').wait_for(timeout=90_000)
        assert await page.locator(f'[data-testid=transcript][data-turn-id="{first}"]').count() == 1
        assert await reply.count() == 1
        shown = (await reply.text_content()).strip()
        bot = page.locator(f'[data-testid=reply][data-turn-id="{first}"]')
        shown_interrupted = "interrupted" in await bot.get_attribute("class")
        stored = None
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(30):
                while True:
                    turns = {t.turn_id: t for t in await stored_turns(shared_redis.url, after["dialog_id"])}
                    stored = turns.get(reply_turn_id(first))
                    if stored and (stored.text.strip(), stored.interrupted) == (shown, shown_interrupted):
                        break
                    await asyncio.sleep(0.2)
        assert stored is not None and (stored.text.strip(), stored.interrupted) == (shown, shown_interrupted)

        # The call goes on: a turn said after the reconnection is heard and answered aloud, over the new
        # peer connection (a fragment, if the drop cut into what the caller was saying, counts).
        await page.wait_for_function(SETTLED_TURN, arg={"minWords": 1, "seen": before["turns"]}, timeout=120_000)
        ARTIFACTS.mkdir(exist_ok=True)
        await page.screenshot(path=str(ARTIFACTS / "browser-call-resumed.png"), full_page=True)
        await page.get_by_test_id("call").click()  # hang up
        await page.get_by_test_id("call").filter(has_text="Call").wait_for()
        assert problems == []
    finally:
        await browser.close()


async def test_a_session_taken_over_by_another_window_ends_here_for_good(playwright, server):
    browser = await launch(playwright)
    try:
        first, problems = await ready_page(browser, server)
        stored = await first.evaluate("sessionStorage.getItem('parley.session')")
        # Another window holding this tab's session (as a duplicated tab does) resumes it.
        second = await browser.new_page()
        await second.add_init_script(f"sessionStorage.setItem('parley.session', {json.dumps(stored)})")
        await second.goto(server)
        await second.wait_for_function("() => window.parley.session && window.parley.session.resumed")
        notice = first.locator("#notice")
        await notice.filter(has_text="another window").wait_for(timeout=15_000)
        assert await first.get_by_test_id("state").text_content() == "offline"
        # The other window goes on with the session; this one, its token spent, did not come back
        # meanwhile (it would have been refused, and started a session of its own).
        await second.get_by_test_id("text-input").fill("Say hello.")
        await second.get_by_test_id("text-send").click()
        await second.wait_for_function(
            "() => [...document.querySelectorAll('[data-testid=reply]')].some(e => e.dataset.done === 'true')",
            timeout=60_000,
        )
        assert await first.evaluate("window.parley.ws === null && window.parley.session === null")
        assert await second.evaluate("window.parley.ws.readyState") == 1
        assert problems == []
    finally:
        await browser.close()


async def test_text_chat_without_a_call_on_a_phone_sized_screen_with_the_keyboard(playwright, server):
    browser = await launch(playwright)
    try:
        page, problems = await ready_page(browser, server, viewport={"width": 375, "height": 667})
        await page.keyboard.press("Tab")  # the call button comes first...
        assert await page.evaluate("document.activeElement.dataset.testid") == "call"
        await page.get_by_test_id("text-input").focus()
        await page.keyboard.type("What is the capital of France?")
        await page.keyboard.press("Enter")
        await page.wait_for_function(
            "() => [...document.querySelectorAll('[data-testid=reply]')].some(e => e.textContent.trim().length > 3)",
            timeout=60_000,
        )
        assert await page.get_by_test_id("text-input").input_value() == ""
        width = await page.evaluate("document.documentElement.scrollWidth")
        assert width <= 375, "the page must not scroll sideways on a phone"
        ARTIFACTS.mkdir(exist_ok=True)
        await page.screenshot(path=str(ARTIFACTS / "browser-phone-text.png"), full_page=True)
        assert problems == []
    finally:
        await browser.close()


async def test_a_refused_microphone_is_said_plainly_and_text_still_works(playwright, server):
    browser = await launch(playwright, "--deny-permission-prompts")
    try:
        page, _ = await ready_page(browser, server)
        await page.get_by_test_id("call").click()
        notice = page.locator("#notice")
        await notice.filter(has_text="microphone").wait_for(timeout=15_000)
        assert "typing" in await notice.text_content()
        await page.get_by_test_id("text-input").fill("Say hello.")
        await page.get_by_test_id("text-send").click()
        await page.wait_for_function(
            "() => [...document.querySelectorAll('[data-testid=reply]')].some(e => e.textContent.trim())",
            timeout=60_000,
        )
    finally:
        await browser.close()


async def test_the_page_reconnects_to_a_restarted_server_and_keeps_the_history(
    playwright, shared_redis, proxy, tmp_path
):
    from parley.server_process import free_port

    port = free_port()
    env = server_env(shared_redis.url, proxy.base_url, tmp_path)
    browser = await launch(playwright)
    try:
        async with server_process(env, log_path=str(tmp_path / "first.log"), port=port) as url:
            page, problems = await ready_page(browser, url)
            await page.get_by_test_id("text-input").fill("What is the capital of France?")
            await page.get_by_test_id("text-send").click()
            await page.wait_for_function(
                "() => [...document.querySelectorAll('[data-testid=reply]')].some(e => e.textContent.trim())",
                timeout=60_000,
            )
            await page.get_by_test_id("state").filter(has_text="listening").wait_for()
            # The reply's words (a text turn's element also shows its latency beside them).
            reply = (await page.get_by_test_id("reply-text").last.text_content()).strip()
            dialog_id = await page.evaluate("window.parley.session.dialog_id")
        # The server is gone (its socket closed); another process takes its place, as a replica would.
        await page.get_by_test_id("state").filter(has_text="reconnecting").wait_for(timeout=10_000)
        async with server_process(env, log_path=str(tmp_path / "second.log"), port=port):
            await page.wait_for_function(
                "() => window.parley.ws && window.parley.ws.readyState === 1", timeout=60_000
            )
            await page.get_by_test_id("state").filter(has_text="ready").wait_for(timeout=30_000)
            assert await page.evaluate("window.parley.session.dialog_id") == dialog_id
            assert reply == (await page.get_by_test_id("reply-text").last.text_content()).strip()
            assert "capital of France" in await page.locator("#turns").text_content()
            await asyncio.sleep(0.2)
        # Only the expected failed reconnection attempts while no server listened.
        assert all("WebSocket" in p or "ERR_CONNECTION_REFUSED" in p for p in problems), problems
    finally:
        await browser.close()
