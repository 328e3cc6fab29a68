"""The web client in a real browser: Debian's chromium driven by Playwright, against the real server.

Chromium's fake microphone plays a WAV made from ../shared/audio/jfk.flac; screenshots are
saved under test-artifacts/ for a person to look at.
"""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import numpy as np
import pytest

from media.audio_file import read_audio, write_wav
from parley.server_process import server_process
from tests.conftest import server_env
from tests.speech import JFK, JFK_TEXT, wer

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
async def playwright():
    from playwright.async_api import async_playwright

    async with async_playwright() as running:
        yield running


async def launch(playwright, *flags: str):
    return await playwright.chromium.launch(executable_path=CHROMIUM, args=[*BASE_FLAGS, *flags])


MIN_WORDS = 18
# The id of a turn whose final transcript has at least `minWords` words and whose reply is done and
# was heard (the page shows voice to voice once the reply's audio plays); null until there is one.
SETTLED_TURN = """(minWords) => {
  for (const user of document.querySelectorAll("[data-testid=transcript]")) {
    if (user.textContent.trim().split(/\\s+/).length < minWords) continue;
    const reply = document.querySelector(`[data-testid=reply][data-turn-id="${user.dataset.turnId}"]`);
    const latency = reply && reply.querySelector("[data-testid=latency]");
    if (reply && reply.dataset.done === "true" && latency && latency.textContent.includes("voice to voice")) {
      return user.dataset.turnId;
    }
  }
  return null;
}"""


def watch_console(page) -> list[str]:
    problems: list[str] = []
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(str(e)))
    return problems


async def test_a_call_in_the_browser(playwright, server, microphone_wav):
    browser = await launch(
        playwright,
        "--use-fake-ui-for-media-stream",
        "--use-fake-device-for-media-stream",
        f"--use-file-for-fake-audio-capture={microphone_wav}%noloop",
    )
    try:
        page = await browser.new_page()
        problems = watch_console(page)
        await page.goto(server)
        await page.get_by_test_id("state").filter(has_text="ready").wait_for()
        await page.get_by_test_id("call").click()
        # A settled conversation, whatever the machine's speed: the final transcript of the whole
        # sentence (JFK says 22 words; a turn ended in one of his pauses would have at most 14), the
        # reply to that same turn finished, and its voice heard here. The page is read only then.
        await page.wait_for_function(SETTLED_TURN, arg=MIN_WORDS, timeout=120_000)
        turn_id = await page.evaluate(SETTLED_TURN, MIN_WORDS)
        texts = [t.strip() for t in await page.get_by_test_id("transcript").all_text_contents()]
        assert len(texts) == 1, texts  # one turn: JFK's pauses did not end it
        assert wer(JFK_TEXT, texts[0]) <= 0.15, texts
        reply = page.locator(f'[data-testid=reply][data-turn-id="{turn_id}"]')
        assert (await reply.text_content()).strip()
        assert await page.evaluate("window.parley.maxRemoteDb") > -45  # the reply was heard
        latency = await reply.get_by_test_id("latency").text_content()
        assert "voice to voice" in latency and "server:" in latency, latency
        assert "turn ended after" in latency and "talked over 0 ms" in latency, latency
        ARTIFACTS.mkdir(exist_ok=True)
        await page.screenshot(path=str(ARTIFACTS / "browser-call.png"), full_page=True)
        await page.get_by_test_id("call").click()  # hang up
        await page.get_by_test_id("call").filter(has_text="Call").wait_for()
        assert problems == []
    finally:
        await browser.close()


async def test_text_chat_without_a_call_on_a_phone_sized_screen_with_the_keyboard(playwright, server):
    browser = await launch(playwright)
    try:
        page = await browser.new_page(viewport={"width": 375, "height": 667})
        problems = watch_console(page)
        await page.goto(server)
        await page.get_by_test_id("state").filter(has_text="ready").wait_for()
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
        page = await browser.new_page()
        await page.goto(server)
        await page.get_by_test_id("state").filter(has_text="ready").wait_for()
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
            page = await browser.new_page()
            problems = watch_console(page)
            await page.goto(url)
            await page.get_by_test_id("state").filter(has_text="ready").wait_for()
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
