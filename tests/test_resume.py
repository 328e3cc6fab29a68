"""Resuming a session over the protocol, against a real server: the missed events are replayed,
one token makes one owner, the former owner is told, and the token never reaches a log."""

from __future__ import annotations

import asyncio
import json

import pytest
import websockets

from tests.conftest import own_server, stored_turns

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
async def resumable(shared_redis, proxy, tmp_path_factory):
    folder = tmp_path_factory.mktemp("resume-server")
    async with own_server(shared_redis.url, proxy.base_url, folder) as url:
        yield url.replace("http", "ws"), folder / "server.log"


async def next_of(ws, kind: str, timeout: float = 60) -> dict:
    async with asyncio.timeout(timeout):
        while True:
            message = json.loads(await ws.recv())
            if message["type"] == kind:
                return message


async def resume(url: str, session: dict, last_event_id: str | None):
    ws = await websockets.connect(url + "/ws?resume")
    await ws.send(json.dumps({
        "type": "resume", "session_id": session["session_id"], "resume_token": session["resume_token"],
        "last_event_id": last_event_id,
    }))
    return ws


def ids_in_order(events: list[dict]) -> bool:
    keys = [tuple(map(int, e["id"].split("-"))) for e in events]
    return keys == sorted(keys) and len(set(keys)) == len(keys)


async def test_a_client_dropped_mid_reply_resumes_and_gets_every_event_it_missed(resumable, shared_redis):
    url, log_path = resumable
    ws = await websockets.connect(url + "/ws")
    session = json.loads(await ws.recv())
    assert session["type"] == "session" and session["resumed"] is False
    await ws.send(json.dumps({"type": "text", "text": "Tell me about the moon in three sentences."}))
    first = await next_of(ws, "reply")  # the first delta: then the line drops, mid-reply
    assert "delta" in first and first["id"]
    ws.transport.abort()

    # Redis already holds the caller's turn, before the reply is done.
    turns = await stored_turns(shared_redis.url, session["dialog_id"])
    assert [(t.role, t.text) for t in turns][:1] == [("user", "Tell me about the moon in three sentences.")]

    async with await resume(url, session, first["id"]) as back:
        resumed = json.loads(await back.recv())
        assert resumed["type"] == "session" and resumed["resumed"] is True
        assert resumed["session_id"] == session["session_id"] and resumed["dialog_id"] == session["dialog_id"]
        assert resumed["resume_token"] != session["resume_token"]
        history = json.loads(await back.recv())
        assert history["type"] == "history" and history["turns"][0]["role"] == "user"
        events = []
        async with asyncio.timeout(60):
            while not (events and events[-1]["type"] == "reply" and events[-1].get("done")):
                message = json.loads(await back.recv())
                if "id" in message:
                    events.append(message)
        # After the last id seen: every event (replayed, then live), in order, none twice.
        assert ids_in_order([first, *events])
        # The reply cut by the drop is answered again, whole, from a restart on.
        restarts = [i for i, e in enumerate(events) if e.get("restart")]
        assert len(restarts) == 1 and not events[restarts[0]].get("replayed")
        deltas = "".join(e.get("delta", "") for e in events[restarts[0] :])
        assert events[-1]["text"] == deltas.strip() and events[-1]["text"]
        # The call goes on with the same dialog.
        await back.send(json.dumps({"type": "text", "text": "Thank you."}))
        await next_of(back, "reply")
    turns = await stored_turns(shared_redis.url, session["dialog_id"])
    assert [t.role for t in turns][:3] == ["user", "assistant", "user"] and [t.seq for t in turns] == sorted(t.seq for t in turns)

    # The spent token no longer works: a new session is started instead.
    async with await resume(url, session, None) as stale:
        error = json.loads(await stale.recv())
        assert error["code"] == "resume_failed"
        assert json.loads(await stale.recv())["session_id"] != session["session_id"]
    assert session["resume_token"] not in log_path.read_text()
    assert resumed["resume_token"] not in log_path.read_text()


async def test_two_clients_racing_to_resume_one_token_make_one_winner_and_the_owner_is_told(resumable):
    url, _ = resumable
    for _ in range(5):
        owner = await websockets.connect(url + "/ws")
        session = json.loads(await owner.recv())
        racers = await asyncio.gather(*(resume(url, session, None) for _ in range(4)))
        firsts = [json.loads(await r.recv()) for r in racers]
        won = [f for f in firsts if f["type"] == "session" and f.get("resumed")]
        lost = [f for f in firsts if f["type"] == "error"]
        assert len(won) == 1 and len(lost) == 3 and {f["code"] for f in lost} == {"resume_failed"}, firsts
        # The socket that held the session hears at once that it moved.
        bye = await next_of(owner, "bye", timeout=10)
        assert bye["reason"] == "resumed_elsewhere" and not bye.get("reconnect")
        for ws in [owner, *racers]:
            await ws.close()


async def test_a_socket_opened_to_resume_must_say_resume_first(resumable):
    url, _ = resumable
    async with websockets.connect(url + "/ws?resume") as ws:
        await ws.send(json.dumps({"type": "text", "text": "hello"}))
        error = json.loads(await ws.recv())
        assert error["code"] == "out_of_order"
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await ws.recv()
        assert closed.value.rcvd.code == 1008
