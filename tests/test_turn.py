"""Media through NAT: TURN credentials per session, and a call relayed by Debian's coturn alone."""

from __future__ import annotations

import asyncio
import random
import re
import secrets
import socket
import time

import numpy as np
import pytest
from aioice import stun
from aioice.turn import create_turn_endpoint
from aiortc import RTCIceTransportPolicy

from media.audio_file import read_audio, write_wav
from media.config import MediaConfig
from media.frames import level_dbfs
from media.ice import aiortc_configuration, rtc_configuration, turn_credential
from parley.call_client import CallClient
from parley.errors import ConfigError
from parley.services.coturn import Relay, TurnServer, TurnServerConfig
from parley.settings import load_settings
from signaling import protocol
from tests.conftest import own_server
from tests.speech import JFK, JFK_TEXT, wer
from tests.test_browser import MIN_WORDS, SETTLED_TURN, fake_microphone, launch, ready_page

SESSION_ID = "5b7e4c1d9a2f4e3b8c6d0a1f2e3d4c5b"


def test_a_turn_credential_is_the_rest_api_hmac_of_its_username():
    credential = turn_credential("parley-turn-secret", SESSION_ID, expires_at=1764253000)
    assert credential.username == f"1764253000:{SESSION_ID}"
    # Computed apart from Parley: printf '%s' "1764253000:$SESSION_ID" |
    #   openssl dgst -sha1 -hmac parley-turn-secret -binary | base64
    assert credential.password == "fyn/abgLtDFcYvZqLHOpGEKT33w="
    assert "fyn/" not in repr(credential)


def test_each_session_gets_stun_and_turn_with_credentials_of_its_own():
    config = MediaConfig(
        ice_servers=["stun:turn.example.org:3478", "turn:turn.example.org:3478?transport=udp"],
        turn_secret="parley-turn-secret",
        turn_credential_ttl_s=600,
        ice_transport_policy="relay",
    )
    given = rtc_configuration(config, SESSION_ID, now=1764252400.7)
    assert given == {
        "iceServers": [
            {"urls": ["stun:turn.example.org:3478"]},
            {
                "urls": ["turn:turn.example.org:3478?transport=udp"],
                "username": f"1764253000:{SESSION_ID}",
                "credential": "fyn/abgLtDFcYvZqLHOpGEKT33w=",
            },
        ],
        "iceTransportPolicy": "relay",
    }
    other = rtc_configuration(config, "another-session", now=1764252400)
    assert other["iceServers"][1]["credential"] != given["iceServers"][1]["credential"]

    # aiortc is given the same, with its own policy type.
    aiortc = aiortc_configuration(given)
    assert aiortc.iceTransportPolicy is RTCIceTransportPolicy.RELAY
    assert [(s.urls, s.username, s.credential) for s in aiortc.iceServers] == [
        (["stun:turn.example.org:3478"], None, None),
        (["turn:turn.example.org:3478?transport=udp"], f"1764253000:{SESSION_ID}", "fyn/abgLtDFcYvZqLHOpGEKT33w="),
    ]


def test_no_ice_servers_means_none_for_aiortc_not_its_default():
    given = rtc_configuration(MediaConfig(), SESSION_ID)
    assert given == {"iceServers": [], "iceTransportPolicy": "all"}
    # None would make aiortc ask Google's public STUN server.
    assert aiortc_configuration(given).iceServers == []
    assert aiortc_configuration(None).iceServers == []
    message = protocol.session(SESSION_ID, "dialog", "token", rtc_configuration=given)
    assert message["rtc_configuration"] == given


def test_ice_settings_come_from_the_environment_and_the_secret_stays_out_of_reprs():
    settings = load_settings(environ={
        "PARLEY_MEDIA_ICE_SERVERS": "stun:127.0.0.1:3478, turn:127.0.0.1:3478?transport=udp",
        "PARLEY_MEDIA_TURN_SECRET": "do-not-print-me",
        "PARLEY_MEDIA_ICE_TRANSPORT_POLICY": "relay",
    })
    media = settings.media
    assert media.ice_servers == ("stun:127.0.0.1:3478", "turn:127.0.0.1:3478?transport=udp")
    assert media.turn_urls == ("turn:127.0.0.1:3478?transport=udp",)
    assert media.turn_secret == "do-not-print-me"
    assert "do-not-print-me" not in repr(settings)
    assert "do-not-print-me" not in repr(TurnServerConfig(secret="do-not-print-me"))
    assert load_settings(environ={}).media.ice_servers == ()


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"PARLEY_MEDIA_ICE_SERVERS": "turn:127.0.0.1:3478"}, "turn_secret is empty"),
        ({"PARLEY_MEDIA_ICE_TRANSPORT_POLICY": "relay"}, '"relay" needs a TURN URL'),
        ({"PARLEY_MEDIA_ICE_TRANSPORT_POLICY": "none"}, 'must be "all" or "relay"'),
        ({"PARLEY_MEDIA_ICE_SERVERS": "http://127.0.0.1:3478"}, "is not a STUN or TURN URL"),
        ({"PARLEY_MEDIA_ICE_SERVERS": "stun:127.0.0.1:3478?transport=udp"}, "is not a STUN or TURN URL"),
        ({"PARLEY_MEDIA_TURN_CREDENTIAL_TTL_S": "0"}, "more than 0"),
    ],
)
def test_ice_settings_that_cannot_work_are_refused_at_start(environ, message):
    with pytest.raises(ConfigError, match=message):
        load_settings(environ=environ)


# -- against a real coturn -------------------------------------------------------------------------


def _free_udp_and_tcp_port() -> int:
    """A port free on 127.0.0.1 for both UDP and TCP (coturn listens on both)."""
    while True:
        with socket.socket() as tcp:
            tcp.bind(("127.0.0.1", 0))
            port = tcp.getsockname()[1]
            with socket.socket(type=socket.SOCK_DGRAM) as udp:
                try:
                    udp.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port


def _free_udp_range(size: int) -> tuple[int, int]:
    """`size` UDP ports in a row, free now, below Linux's ephemeral range (32768 up): the sockets
    other tests and aioice open meanwhile take their ports from there, not from this range."""
    while True:
        start = random.randrange(20000, 32768 - size)
        sockets = []
        try:
            for port in range(start, start + size):
                udp = socket.socket(type=socket.SOCK_DGRAM)
                sockets.append(udp)
                udp.bind(("127.0.0.1", port))
        except OSError:
            continue
        finally:
            for udp in sockets:
                udp.close()
        return start, start + size - 1


@pytest.fixture(scope="module")
async def turn_server(tmp_path_factory):
    """Debian's coturn on loopback: REST API credentials from a secret of its own, relaying to
    loopback peers (both ends of the call are on this machine)."""
    min_port, max_port = _free_udp_range(40)
    config = TurnServerConfig(
        port=_free_udp_and_tcp_port(), min_port=min_port, max_port=max_port,
        secret=secrets.token_urlsafe(24), allow_loopback_peers=True,
    )
    server = TurnServer(config, state_dir=tmp_path_factory.mktemp("coturn"))
    await server.start()
    yield server
    await server.stop()


async def _allocate(server: TurnServer, username: str, password: str) -> tuple[str, int]:
    """A relayed address from coturn for these credentials (released at once)."""
    transport, _ = await create_turn_endpoint(
        asyncio.DatagramProtocol, (server.config.host, server.config.port), username, password
    )
    try:
        return transport.get_extra_info("sockname")
    finally:
        transport.close()


def _relay_only(server: TurnServer) -> dict[str, str]:
    """A Parley server's settings for calls through `server` alone."""
    return {
        "PARLEY_MEDIA_ICE_SERVERS": server.url,
        "PARLEY_MEDIA_TURN_SECRET": server.config.secret,
        "PARLEY_MEDIA_ICE_TRANSPORT_POLICY": "relay",
    }


async def _closed_relays(server: TurnServer, session_id: str, *, count: int) -> list[Relay]:
    """The relays made for `session_id`'s credentials, once `count` of them have closed."""
    async with asyncio.timeout(15):
        while True:
            relays = [r for r in server.relays() if r.username.endswith(f":{session_id}")]
            if sum(r.closed for r in relays) >= count:
                return relays
            # coturn writes its log on its own schedule; nothing to wait on but the file.
            await asyncio.sleep(0.1)


@pytest.mark.slow
async def test_coturn_relays_for_a_session_credential_and_refuses_a_wrong_or_expired_one(turn_server):
    expiry = int(time.time()) + 600
    right = turn_credential(turn_server.config.secret, SESSION_ID, expires_at=expiry)
    host, port = await _allocate(turn_server, right.username, right.password)
    assert host == "127.0.0.1" and turn_server.config.min_port <= port <= turn_server.config.max_port

    wrong = turn_credential("not-the-secret", SESSION_ID, expires_at=expiry)
    with pytest.raises(stun.TransactionFailed) as refused:
        await _allocate(turn_server, wrong.username, wrong.password)
    assert refused.value.response.error_code == 401

    expired = turn_credential(turn_server.config.secret, SESSION_ID, expires_at=int(time.time()) - 5)
    with pytest.raises(stun.TransactionFailed) as refused:
        await _allocate(turn_server, expired.username, expired.password)
    assert refused.value.response.error_code == 401


@pytest.mark.slow
async def test_a_call_through_turn_alone_is_heard_and_answered(turn_server, shared_redis, proxy, transcriber, tmp_path):
    async with own_server(shared_redis.url, proxy.base_url, tmp_path, **_relay_only(turn_server)) as server:
        async with CallClient(server) as client:
            # The session told the client to relay too, with credentials for this session.
            given = client.session["rtc_configuration"]
            assert given["iceTransportPolicy"] == "relay"
            (turn,) = given["iceServers"]
            assert turn["urls"] == [turn_server.url]
            assert turn["username"].endswith(f":{client.session['session_id']}")
            report, _ = await client.talk(str(JFK), out_dir=tmp_path, index=1)
            pair = client.candidate_pair()
            session_id = client.session["session_id"]
            voiced_packets = sum(loud for _, _, loud in client._recorder.frames)  # the reply, 20 ms a packet
            answer = next(m["sdp"] for _, m in client.messages if m["type"] == "answer")
    log = (tmp_path / "server.log").read_text()
    assert turn_server.config.secret not in log

    # The server offered its relayed candidates only, and the client's pair joins its own relay to one.
    offered = re.findall(r"^a=candidate:.* typ (\w+)", answer, re.MULTILINE)
    assert offered and set(offered) == {"relay"}, offered
    assert pair == ("relay", "relay")
    # coturn allocated one relay for each end to this session's credentials, and relayed the call's
    # audio between them: one way at least the file's 20 ms packets, the other at least the packets
    # of the reply heard (a quiet bot sends few: DTX). (Its last counts come as the relays close,
    # after the hang-up.)
    relays = await _closed_relays(turn_server, session_id, count=2)
    assert len(relays) == 2, relays
    file_packets = read_audio(JFK, 16000).size // 320
    assert voiced_packets > 0
    assert all(
        max(r.to_peers, r.from_peers) >= file_packets and min(r.to_peers, r.from_peers) >= voiced_packets
        for r in relays
    ), (file_packets, voiced_packets, relays)

    # The call itself: the caller heard and understood, the reply spoken back through the relay.
    assert wer(JFK_TEXT, report.transcript) <= 0.10, report.transcript
    assert report.reply_text.strip()
    reply = read_audio(report.reply_audio)
    assert max(level_dbfs(reply[i : i + 320]) for i in range(0, reply.size - 320, 320)) > -30
    heard = (await transcriber.transcribe(reply)).text
    assert wer(report.reply_text, heard) <= 0.20, (report.reply_text, heard)


# What the page's peer connection was given, and the types of the candidates its audio flows between.
PAGE_ICE = """async () => {
  const pc = window.parley.pc;
  const stats = await pc.getStats();
  let pair = null;
  stats.forEach((s) => { if (s.type === "transport" && s.selectedCandidatePairId) pair = stats.get(s.selectedCandidatePairId); });
  return {
    policy: pc.getConfiguration().iceTransportPolicy,
    pair: pair && [stats.get(pair.localCandidateId).candidateType, stats.get(pair.remoteCandidateId).candidateType],
  };
}"""


@pytest.mark.slow
async def test_the_page_calls_through_turn_alone(turn_server, shared_redis, proxy, tmp_path):
    from playwright.async_api import async_playwright

    microphone = tmp_path / "jfk-then-silence.wav"
    speech = read_audio(JFK, 48000)
    write_wav(microphone, np.concatenate([np.zeros(48000, np.int16), speech, np.zeros(48000 * 8, np.int16)]), 48000)
    async with own_server(shared_redis.url, proxy.base_url, tmp_path, **_relay_only(turn_server)) as server, async_playwright() as playwright:
        browser = await launch(playwright, *fake_microphone(microphone, loop=False))
        try:
            page, problems = await ready_page(browser, server)
            session_id = await page.evaluate("window.parley.session.session_id")
            await page.get_by_test_id("call").click()
            await page.wait_for_function(SETTLED_TURN, arg={"minWords": MIN_WORDS}, timeout=120_000)
            ice = await page.evaluate(PAGE_ICE)
            texts = [t.strip() for t in await page.get_by_test_id("transcript").all_text_contents()]
            assert await page.evaluate("window.parley.maxRemoteDb") > -45  # the reply was heard
            await page.get_by_test_id("call").click()  # hang up
            await page.get_by_test_id("call").filter(has_text="Call").wait_for()
            assert problems == []
        finally:
            await browser.close()
    # The page gave its peer connection the session's configuration, and chromium took its TURN
    # relay to the server's: both ends relayed, by coturn, for this session's credentials.
    assert ice == {"policy": "relay", "pair": ["relay", "relay"]}
    assert wer(JFK_TEXT, texts[0]) <= 0.15, texts
    relays = await _closed_relays(turn_server, session_id, count=2)
    assert len(relays) == 2 and all(r.to_peers and r.from_peers for r in relays), relays
