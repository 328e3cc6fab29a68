"""Media through NAT: TURN credentials per session, and a call relayed by Debian's coturn alone."""

from __future__ import annotations

import asyncio
import random
import secrets
import socket
import time

import pytest
from aioice import stun
from aioice.turn import create_turn_endpoint
from aiortc import RTCIceTransportPolicy

from media.audio_file import read_audio
from media.config import MediaConfig
from media.frames import level_dbfs
from media.ice import aiortc_configuration, rtc_configuration, turn_credential
from parley.call_client import CallClient
from parley.errors import ConfigError
from parley.services.coturn import TurnServer, TurnServerConfig
from parley.settings import load_settings
from signaling import protocol
from tests.conftest import own_server
from tests.speech import JFK, JFK_TEXT, wer

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
    settings = {
        "PARLEY_MEDIA_ICE_SERVERS": turn_server.url,
        "PARLEY_MEDIA_TURN_SECRET": turn_server.config.secret,
        "PARLEY_MEDIA_ICE_TRANSPORT_POLICY": "relay",
    }
    async with own_server(shared_redis.url, proxy.base_url, tmp_path, **settings) as server:
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
    log = (tmp_path / "server.log").read_text()
    assert turn_server.config.secret not in log

    # Both ends took relayed candidates only, and the audio went between the two relays.
    assert pair == ("relay", "relay")
    # One relay for each end, allocated by coturn to this session's credentials.
    allocated = [user for user in turn_server.allocations() if user.endswith(f":{session_id}")]
    assert len(allocated) == 2, turn_server.allocations()

    # The call itself: the caller heard and understood, the reply spoken back through the relay.
    assert wer(JFK_TEXT, report.transcript) <= 0.10, report.transcript
    assert report.reply_text.strip()
    reply = read_audio(report.reply_audio)
    assert max(level_dbfs(reply[i : i + 320]) for i in range(0, reply.size - 320, 320)) > -30
    heard = (await transcriber.transcribe(reply)).text
    assert wer(report.reply_text, heard) <= 0.20, (report.reply_text, heard)
