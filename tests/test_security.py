"""The doors an attacker would try (docs/security.md): one address cannot take every line, a
session cannot last for ever, the log keeps nothing of a URL's query, and the server speaks
TLS by itself. The per-address cap alone against a real Redis, then everything through real
servers."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import json
import re
import ssl
from pathlib import Path

import httpx
import pytest
import redis.asyncio as aioredis
import websockets
from aiortc import RTCPeerConnection
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from redis.exceptions import ConnectionError as RedisConnectionError
from starlette.responses import JSONResponse
from starlette.routing import Route

from parley import cli
from parley.redis_client import redis_client
from parley.server_process import server_process
from parley.settings import RedisConfig
from signaling.client_cap import ClientCap, address_key
from signaling.config import AdmissionConfig
from tests.conftest import own_server, server_env, stored_turns
from tests.fake_openai import CountingServer
from tests.messages import messages_until

pytestmark = pytest.mark.slow

CALLER = "198.51.100.7"
NEIGHBOUR = "198.51.100.8"


# --- the cap per address, against a real Redis -------------------------------------------------


@pytest.fixture
async def redis(embedded_redis):
    client = redis_client(RedisConfig(url=embedded_redis.url))
    yield client
    await client.aclose()


def replica(redis, name: str, **config) -> ClientCap:
    return ClientCap(redis, name, AdmissionConfig(**{"max_calls_per_ip": 3, "max_sessions_per_ip": 5, **config}))


async def test_an_address_holds_its_cap_across_replicas_and_a_place_given_back_is_free_again(redis):
    a, b = replica(redis, "a"), replica(redis, "b")
    assert [await a.take("calls", CALLER) for _ in range(2)] == [True, True]
    assert await b.take("calls", CALLER)
    assert not await b.take("calls", CALLER)  # three across both replicas
    assert not await a.take("calls", CALLER)
    assert await a.take("calls", NEIGHBOUR)  # another address has places of its own
    assert await a.take("sessions", CALLER)  # and sessions are counted apart from calls
    await b.release("calls", CALLER)
    assert await a.take("calls", CALLER)
    assert {k: int(v) for k, v in (await redis.hgetall(address_key("calls", CALLER))).items()} == {b"a": 3}


async def test_places_taken_at_once_on_many_replicas_never_pass_the_cap(redis):
    replicas = [replica(redis, f"r{i}", max_calls_per_ip=5) for i in range(4)]
    outcomes = await asyncio.gather(*(r.take("calls", CALLER) for r in replicas for _ in range(5)))
    assert sum(outcomes) == 5
    assert sum(sum(r.held.values()) for r in replicas) == 5


async def test_the_places_of_a_replica_that_died_stop_counting(redis):
    gone = replica(redis, "gone", heartbeat_s=0.1, replica_ttl_s=0.3)
    assert [await gone.take("calls", CALLER) for _ in range(3)] == [True, True, True]
    alive = replica(redis, "alive", heartbeat_s=0.1, replica_ttl_s=0.3)
    assert not await alive.take("calls", CALLER)
    # "gone" dies without a word: once its heartbeat deadline passes, its calls no longer count.
    async with asyncio.timeout(10):
        while not await alive.take("calls", CALLER):
            await asyncio.sleep(0.1)
    assert await redis.hget(address_key("calls", CALLER), "gone") is None


async def test_the_heartbeat_writes_back_a_count_redis_lost(redis):
    a = replica(redis, "a")
    assert await a.take("calls", CALLER)
    await redis.flushall()  # Redis restarted without its data
    await a.publish()
    assert int(await redis.hget(address_key("calls", CALLER), "a")) == 1
    assert 0 < await redis.pttl(address_key("calls", CALLER)) <= 15000  # kept alive by the heartbeat only
    assert [await a.take("calls", CALLER) for _ in range(3)] == [True, True, False]


async def test_a_place_whose_give_back_failed_is_put_right_by_the_heartbeat(redis):
    a = replica(redis, "a")
    assert await a.take("calls", CALLER)

    async def redis_away(**_):
        raise RedisConnectionError("Redis went away")

    a._release = redis_away
    await a.release("calls", CALLER)
    assert await redis.hget(address_key("calls", CALLER), "a") == b"1"  # still counted in Redis
    await a.publish()
    assert await redis.hget(address_key("calls", CALLER), "a") is None


async def test_with_redis_away_a_replica_holds_each_address_to_the_cap_alone():
    dead = aioredis.from_url("redis://127.0.0.1:1", socket_connect_timeout=0.2)
    a = replica(dead, "a")
    assert [await a.take("calls", CALLER) for _ in range(4)] == [True, True, True, False]
    await a.release("calls", CALLER)
    assert await a.take("calls", CALLER)
    await dead.aclose()


async def test_a_cap_of_0_counts_nothing(redis):
    a = replica(redis, "a", max_calls_per_ip=0)
    assert all([await a.take("calls", CALLER) for _ in range(50)])
    await a.release("calls", CALLER)
    assert not a.held and await redis.exists(address_key("calls", CALLER)) == 0


# --- through a real server ----------------------------------------------------------------------


@pytest.fixture(scope="module")
async def offer() -> str:
    """A real SDP offer with one audio section; every test call offers the same."""
    pc = RTCPeerConnection()
    pc.addTransceiver("audio", direction="sendrecv")
    await pc.setLocalDescription(await pc.createOffer())
    sdp = pc.localDescription.sdp
    await pc.close()
    return sdp


def ws_url(url: str) -> str:
    return url.replace("http", "ws", 1) + "/ws"


async def open_session(url: str, forwarded_for: str | None = None, source: str | None = None):
    """A socket and the server's first message; `forwarded_for` as a proxy in front would say it."""
    headers = {"X-Forwarded-For": forwarded_for} if forwarded_for else {}
    bind = {"local_addr": (source, 0)} if source else {}
    ws = await websockets.connect(ws_url(url), additional_headers=headers, **bind)
    return ws, json.loads(await ws.recv())


async def dial(url: str, offer: str, forwarded_for: str | None = None, source: str | None = None):
    """A session that offers a call: the socket and the server's `answer` or refusal."""
    ws, first = await open_session(url, forwarded_for, source)
    if first["type"] != "session":
        return ws, first
    await ws.send(json.dumps({"type": "offer", "sdp": offer}))
    return ws, (await messages_until(ws, lambda m: m["type"] in ("answer", "error"), timeout=30))[-1]


async def close_code(ws) -> int:
    """The code the server closed `ws` with (every message before it read and dropped)."""
    async with asyncio.timeout(10):
        try:
            while True:
                await ws.recv()
        except websockets.ConnectionClosed as closed:
            return closed.rcvd.code


def counter(exposition: str, name: str) -> float:
    return sum(float(line.split()[-1]) for line in exposition.splitlines() if line.startswith(name))


async def test_one_address_gets_max_calls_per_ip_and_max_sessions_per_ip_and_no_more(
    shared_redis, proxy, tmp_path, offer
):
    limits = {
        "PARLEY_ADMISSION_MAX_CALLS": "8",
        "PARLEY_ADMISSION_MAX_CALLS_PER_IP": "2",
        "PARLEY_ADMISSION_MAX_SESSIONS_PER_IP": "4",
    }
    async with own_server(shared_redis.url, proxy.base_url, tmp_path, **limits) as url:
        # From 127.0.0.1 (a trusted proxy: [server] forwarded_allow_ips) the caller is the address
        # X-Forwarded-For names.
        held = [await dial(url, offer, CALLER) for _ in range(2)]
        assert [answer["type"] for _, answer in held] == ["answer", "answer"]
        refused, refusal = await dial(url, offer, CALLER)
        assert (refusal["code"], refusal["kind"], refusal["limit"]) == ("too_many_calls", "call", 2)
        assert await close_code(refused) == 1008
        # Another address has places of its own; and from an address that is not a trusted proxy,
        # the header is ignored: the caller is the socket's own address, whatever it claims.
        neighbour, answer = await dial(url, offer, NEIGHBOUR)
        assert answer["type"] == "answer"
        claimed, answer = await dial(url, offer, CALLER, source="127.0.0.2")
        assert answer["type"] == "answer"

        # A call that ends gives its place back (as the server sees the socket close).
        await held.pop()[0].close()
        async with asyncio.timeout(20):
            while True:
                again, answer = await dial(url, offer, CALLER)
                if answer["type"] == "answer":
                    break
                assert answer["code"] == "too_many_calls"
                await again.close()
                await asyncio.sleep(0.05)
        held.append((again, answer))

        # Sessions, text or voice, are capped per address too.
        texts = [await open_session(url, "203.0.113.9") for _ in range(4)]
        assert [first["type"] for _, first in texts] == ["session"] * 4
        extra, refusal = await open_session(url, "203.0.113.9")
        assert (refusal["code"], refusal["kind"], refusal["limit"]) == ("too_many_calls", "session", 4)
        assert await close_code(extra) == 1008

        async with httpx.AsyncClient() as http:
            exposition = (await http.get(f"{url}/metrics")).text
        for ws, _ in [*held, (neighbour, None), (claimed, None), *texts]:
            await ws.close()
    assert counter(exposition, 'parley_client_cap_refusals_total{kind="calls"}') >= 1
    assert counter(exposition, 'parley_client_cap_refusals_total{kind="sessions"}') == 1


class SlowLLM(CountingServer):
    """An OpenAI-compatible server whose replies take seconds: a reply is still going when it matters."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.app.router.routes.append(Route("/v1/models", self._models, methods=["GET"]))

    async def _models(self, request) -> JSONResponse:
        return JSONResponse({"object": "list", "data": [{"id": "slow", "object": "model"}]})


async def test_a_session_at_max_call_s_ends_after_its_reply_with_bye_and_its_dialog_is_kept(shared_redis, tmp_path):
    # 50 tokens 0.1 s apart: the reply asked for at once is still being written at the 3 s mark.
    async with SlowLLM(tokens=50, token_delay_s=0.1).running() as llm:
        async with own_server(shared_redis.url, llm.base_url, tmp_path, PARLEY_SIGNALING_MAX_CALL_S="3") as url:
            ws, session = await open_session(url)
            await ws.send(json.dumps({"type": "text", "text": "Tell me a long story."}))
            received = await messages_until(ws, lambda m: m["type"] == "bye", timeout=30)
            assert await close_code(ws) == 1000

            # The session is over for good: its token resumes nothing; a new session follows.
            async with websockets.connect(ws_url(url) + "?resume") as back:
                await back.send(json.dumps({
                    "type": "resume", "session_id": session["session_id"],
                    "resume_token": session["resume_token"], "last_event_id": None,
                }))
                error = json.loads(await back.recv())
                assert (error["type"], error["code"]) == ("error", "resume_failed")
                assert "maximum length" in error["message"]
                assert json.loads(await back.recv())["session_id"] != session["session_id"]
            async with httpx.AsyncClient() as http:
                exposition = (await http.get(f"{url}/metrics")).text
    assert received[-1] == {"type": "bye", "reason": "max_call_length"}
    (done,) = [m for m in received if m["type"] == "reply" and m.get("done")]
    assert done["text"].split() == [f"w{i}" for i in range(50)] and not done["interrupted"]  # finished, not cut
    turns = await stored_turns(shared_redis.url, session["dialog_id"])
    assert [(t.role, t.text) for t in turns] == [("user", "Tell me a long story."), ("assistant", done["text"])]
    assert counter(exposition, "parley_calls_at_max_length_total") == 1


async def test_the_info_log_holds_no_query_string_and_no_resume_token(shared_redis, proxy, tmp_path):
    async with own_server(shared_redis.url, proxy.base_url, tmp_path) as url:
        async with httpx.AsyncClient() as http:
            assert (await http.get(f"{url}/?ref=QUERY-MARK-1")).status_code == 200
        ws, session = await open_session(url)
        async with websockets.connect(ws_url(url) + "?via=QUERY-MARK-2") as marked:
            assert json.loads(await marked.recv())["type"] == "session"
        await ws.close()
        async with websockets.connect(ws_url(url) + "?resume") as back:
            await back.send(json.dumps({
                "type": "resume", "session_id": session["session_id"],
                "resume_token": session["resume_token"], "last_event_id": None,
            }))
            resumed = json.loads(await back.recv())
            assert resumed["resumed"] is True
    logged = (tmp_path / "server.log").read_text()
    # The access log and the WebSocket handshakes are logged, each with its path alone.
    assert '"GET / HTTP/1.1" 200' in logged and '"WebSocket /ws" [accepted]' in logged
    assert not re.search(r'"(GET|HEAD|POST|WebSocket) [^" ]*\?', logged)
    for secret in ("QUERY-MARK-1", "QUERY-MARK-2", "?resume", session["resume_token"], resumed["resume_token"]):
        assert secret not in logged, secret


def self_signed(folder: Path) -> tuple[str, str]:
    """A certificate for 127.0.0.1 signed by its own key: (certificate, key) PEM files."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return str(cert_path), str(key_path)


async def test_a_server_given_a_certificate_speaks_https_and_wss(shared_redis, proxy, tmp_path):
    cert, key = self_signed(tmp_path)
    trust = ssl.create_default_context(cafile=cert)
    env = server_env(shared_redis.url, proxy.base_url, tmp_path)
    async with server_process(env, log_path=str(tmp_path / "server.log"), tls=(cert, key)) as url:
        assert url.startswith("https://")
        async with httpx.AsyncClient(verify=trust) as http:
            assert (await http.get(f"{url}/healthz")).json() == {"status": "ok"}
        async with websockets.connect(url.replace("https", "wss", 1) + "/ws", ssl=trust) as ws:
            assert json.loads(await ws.recv())["type"] == "session"
            await ws.send(json.dumps({"type": "text", "text": "Say hello."}))
            done = (await messages_until(ws, lambda m: m["type"] == "reply" and m.get("done")))[-1]
        assert done["text"]
        # Plain ws:// is not served on that port.
        with pytest.raises((websockets.InvalidMessage, websockets.ConnectionClosed, OSError, EOFError)):
            async with websockets.connect(url.replace("https", "ws", 1) + "/ws", open_timeout=5):
                pass


def test_serve_wants_both_the_certificate_and_its_key(tmp_path, capsys):
    cert, _ = self_signed(tmp_path)
    assert cli.main(["serve", "--ssl-certfile", cert]) == cli.EXIT_BAD_INPUT
    assert "--ssl-certfile and --ssl-keyfile go together" in capsys.readouterr().err
    assert cli.main(["serve", "--ssl-certfile", cert, "--ssl-keyfile", str(tmp_path / "missing.pem")]) == 2
    assert "no such file" in capsys.readouterr().err
