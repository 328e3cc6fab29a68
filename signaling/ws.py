"""The call WebSocket at /ws: one socket, one session, one call.

Tasks per socket, in one TaskGroup: the reader (this handler), the writer (a
bounded outbox), the call (turn loop and media) and the application-level
pinger. Protocol-level keepalive (ping every 30 s, close 1011 when no pong
within 10 s) and the 64 KiB message limit (close 1009) are enforced by the
WebSocket server itself (uvicorn's ws_ping_interval, ws_ping_timeout, ws_max_size).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

from fastapi import WebSocket
from redis.exceptions import RedisError
from starlette.websockets import WebSocketDisconnect, WebSocketState

from media.ice import rtc_configuration
from pipeline.dialog_store import Turn, reply_turn_id
from pipeline.errors import DialogStoreUnavailable
from pipeline.events import TranscriptEvent, TurnEvent, TurnMetrics
from pipeline.shedding import TurnPlan, plan_for
from pipeline.turns import TurnLoop
from signaling import metrics, protocol
from signaling.admission import Kind, Refusal
from signaling.call import Call
from signaling.drain import REPLY_GRACE_S
from signaling.event_log import EventLogError, LostOwnership
from signaling.protocol import Bye, IceCandidate, Offer, Ping, Pong, ProtocolError, Resume, Text
from signaling.config import SignalingConfig
from signaling.sessions import Session, SessionError

log = logging.getLogger(__name__)

OUTBOX_SIZE = 256
# How long an unanswered turn of a resumed voice call waits for the new peer connection's audio.
RESUMED_OFFER_WAIT_S = 5.0
# Messages the writer logs in one round trip to Redis, at most: a burst of reply deltas costs one.
LOG_BATCH = 64
# The longest the writer waits for Redis to log a batch before sending it without ids.
LOG_TIMEOUT_S = 1.0


def over_capacity(refusal: Refusal) -> dict[str, Any]:
    """The protocol's refusal of a newcomer: why, whether another replica has room, when to retry."""
    what = "voice call" if refusal.kind == "calls" else "session"
    why = {
        "draining": "this server is shutting down",
        "cluster": "every line in the service is busy",
        "line": "callers who came first are waiting for the free lines",
    }.get(refusal.reason, "all lines on this server are busy")
    place = "" if refusal.position is None else f"; you are number {refusal.position} in line"
    line = {} if refusal.position is None else {"position": refusal.position, "waiting": refusal.waiting}
    return protocol.error(
        "over_capacity",
        f"no room for a new {what}: {why}{place}; try again in {refusal.retry_after_s:.0f} s",
        retry_after=refusal.retry_after_s,
        kind="call" if refusal.kind == "calls" else "session",
        reason=refusal.reason,
        room_elsewhere=refusal.room_elsewhere,
        **line,
    )


def too_many_calls(kind: Kind, limit: int) -> dict[str, Any]:
    """The protocol's refusal of a newcomer whose address holds its cap already (signaling.client_cap)."""
    what = "voice calls" if kind == "calls" else "sessions"
    return protocol.error(
        "too_many_calls",
        f"this address already has {limit} {what} open, the most one address may; end one and try again",
        kind="call" if kind == "calls" else "session",
        limit=limit,
    )


class _Hangup(Exception):
    """The client said bye or went away: end the socket's task group."""


class CallSocket:
    """Serves one accepted WebSocket until the client leaves."""

    def __init__(self, websocket: WebSocket, services: Any, config: SignalingConfig) -> None:
        self.ws = websocket
        self.services = services
        self.config = config
        # (message, whether it goes into the session's event log): see protocol.logged.
        self.outbox: asyncio.Queue[tuple[dict[str, Any], bool]] = asyncio.Queue(maxsize=OUTBOX_SIZE)
        self._session: Session | None = None
        self._log_failing = False  # the event log's Redis is away (warned once per outage)
        self._last_bye: dict[str, Any] | None = None  # said after everything else, as the socket closes
        self._voice = False  # holds one of the replica's places for voice calls, and one of its address's
        # The peer's address, or the client's that a trusted proxy forwarded ([server] forwarded_allow_ips).
        self.client_ip = websocket.client.host if websocket.client else "unknown"
        self._close_code = 1000
        self._turns: TurnLoop | None = None
        self._end = asyncio.Event()  # the server ends the session (drain)
        self._finished = asyncio.Event()  # everything said and the socket closed
        self._sending: list[tuple[dict[str, Any], bool]] = []  # the writer's batch, until sent
        # Turns whose stages went to the metrics: a turn's metrics event comes a second time
        # only to add the prompt figures the first lacked.
        self._timed: set[str] = set()

    @property
    def voice(self) -> bool:
        """The session carries a voice call (its offer was admitted)."""
        return self._voice

    async def drain(self) -> None:
        """End the session for a replica that is going away: after the reply in progress, a
        `bye` with reason `draining` and `reconnect`; the resume token stays valid."""
        if self._turns is not None:
            await self._turns.quiet()
        self._last_bye = protocol.bye("draining", reconnect=True)
        self._end.set()
        # Returns once the bye is out and the socket closed: the server may then exit, and its
        # own shutdown (close code 1012) cuts nothing.
        await self._finished.wait()

    async def serve(self) -> None:
        await self.ws.accept()
        decision = await self.services.limiter.take(self.client_ip)
        if not decision.admitted:
            # Only new calls are limited: a call already admitted is never cut by the limiter.
            await self.ws.send_json(
                protocol.error("rate_limited", "too many new calls; try again later", retry_after=decision.retry_after_s)
            )
            await self.ws.close(code=1013)
            return
        if not await self.services.client_cap.take("sessions", self.client_ip):
            # Not worth retrying at once: the address's own sessions hold the places.
            await self.ws.send_json(too_many_calls("sessions", self.services.client_cap.cap("sessions")))
            await self.ws.close(code=1008)
            return
        try:
            await self._serve_within_capacity()
        finally:
            await asyncio.shield(self.services.client_cap.release("sessions", self.client_ip))

    async def _serve_within_capacity(self) -> None:
        if (refusal := await self.services.admission.admit("sessions")) is not None:
            await self.ws.send_json(over_capacity(refusal))
            await self.ws.close(code=1013)
            return
        try:
            await self._serve_admitted()
        finally:
            await asyncio.shield(self.services.admission.release("sessions"))

    async def _serve_admitted(self) -> None:
        try:
            session, resumed, last_event_id = await self._open_session()
        except SessionError as exc:
            if exc.code == "unavailable":
                metrics.REDIS_ERRORS.labels("sessions").inc()
            await self.ws.send_json(protocol.error(exc.code, str(exc)))
            await self.ws.close(code=1013 if exc.code == "unavailable" else 1008)
            return
        except WebSocketDisconnect:
            return  # gone before saying which session to resume (or closed for a message too big)
        self._session = session
        turns = TurnLoop(
            dialog_id=session.dialog_id,
            store=self.services.dialogs,
            llm=self.services.chat,
            transcriber=self.services.transcriber,
            synthesizer=self.services.synthesizer,
            emit=self.emit,
            vad_config=self.services.settings.vad,
            config=self.services.settings.turns,
            turn_model=self.services.turn_model,
            planner=self._plan_turn,
            fence=session.fence,
        )
        self._turns = turns
        media = self.services.settings.media
        call = Call(turns, media, ice_user=session.session_id, on_media_failed=self._media_failed)
        await self.send(protocol.session(
            session.session_id, session.dialog_id, session.resume_token, resumed=resumed,
            rtc_configuration=rtc_configuration(media, session.session_id),
        ))
        unanswered = None
        if resumed:
            stored = await self._send_history(session.dialog_id)
            await self._replay(session.session_id, last_event_id)
            unanswered = await self._unanswered(session, stored)
        self.services.sockets.add(self)
        self.services.owners.watch(session, self._taken_elsewhere)
        try:
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(self._write(), name=f"ws-writer-{session.session_id}")
                tasks.create_task(self._ping(), name=f"ws-pinger-{session.session_id}")
                tasks.create_task(call.run(), name=f"call-{session.session_id}")
                tasks.create_task(self._ended_by_server(), name=f"ws-end-{session.session_id}")
                if self.config.max_call_s > 0:
                    tasks.create_task(self._end_at_max_length(session), name=f"ws-max-length-{session.session_id}")
                if unanswered is not None:
                    # A resumed voice call offers again at once: the answer waits a moment to be spoken.
                    wait = RESUMED_OFFER_WAIT_S if session.voice else 0.0
                    tasks.create_task(turns.answer_again(unanswered, wait_for_voice_s=wait), name=f"again-{session.session_id}")
                await self._read(call)
                raise _Hangup
        except* (_Hangup, WebSocketDisconnect):
            pass
        finally:
            self.services.sockets.discard(self)
            self.services.owners.forget(session)
            if self._voice:
                await asyncio.shield(self._release_call())
            await asyncio.shield(call.close())
            await asyncio.shield(self._detach(session))
            if self.ws.client_state == WebSocketState.CONNECTED:
                await asyncio.shield(self._close())
            self._finished.set()
            log.info("session %s ended", session.session_id)

    async def _open_session(self) -> tuple[Session, bool, str | None]:
        """A new session, or, on a socket opened as `/ws?resume`, the one its first message
        (`resume`) names: (session, resumed, the last event id the client saw).

        The resume token travels in that message, never in the URL, which servers and proxies log.
        """
        if "resume" in self.ws.query_params:
            resume = await self._resume_message()
            try:
                session = await self.services.sessions.resume(resume.session_id, resume.resume_token)
                log.info("session %s resumed here at epoch %d", session.session_id, session.epoch)
                metrics.SESSIONS_RESUMED.labels("resumed").inc()
                return session, True, resume.last_event_id
            except SessionError as exc:
                if exc.code != "resume_failed":
                    raise
                metrics.SESSIONS_RESUMED.labels("failed").inc()
                await self.send(protocol.error(exc.code, f"{exc}; starting a new session"))
        return await self.services.sessions.create(), False, None

    async def _resume_message(self) -> Resume:
        try:
            async with asyncio.timeout(self.config.resume_wait_s):
                received = await self.ws.receive()
            if received["type"] == "websocket.disconnect":
                raise WebSocketDisconnect(received.get("code", 1000))
            if received.get("text") is None:
                raise ProtocolError("invalid_message", "binary messages are not part of the protocol")
            message = protocol.parse(received["text"])
        except TimeoutError:
            raise SessionError("out_of_order", "a socket opened to resume must send `resume` first; none came") from None
        except ProtocolError as exc:
            raise SessionError(exc.code, exc.message) from None
        if not isinstance(message, Resume):
            raise SessionError("out_of_order", "a socket opened to resume must send `resume` first")
        return message

    async def _replay(self, session_id: str, last_event_id: str | None) -> None:
        """The events the client missed while it was away (from whichever replica sent them)."""
        try:
            missed = await self.services.events.since(session_id, last_event_id)
        except EventLogError as exc:
            await self.send(protocol.error("unavailable", f"missed events cannot be replayed: {exc}"))
            return
        for message in missed:
            await self.send({**message, "replayed": True})
        metrics.EVENTS_REPLAYED.inc(len(missed))
        log.info("session %s: %d missed event(s) replayed", session_id, len(missed))

    def _taken_elsewhere(self) -> None:
        """Another replica resumed this session: end this side at once (the client is there now)."""
        if self._session is not None:
            log.info("session %s resumed elsewhere; ending it here", self._session.session_id)
        self._last_bye = protocol.bye("resumed_elsewhere")
        self._end.set()

    async def _send_history(self, dialog_id: str) -> list[Turn]:
        """The dialog so far, so a client that came back (to any replica) can show it again."""
        try:
            turns = await self.services.dialogs.turns(dialog_id)
        except DialogStoreUnavailable as exc:
            await self.send(protocol.error("dialog_store_unavailable", f"history not available: {exc}"))
            return []
        await self.send(protocol.history(turns))
        return turns

    async def _unanswered(self, session: Session, stored: list[Turn]) -> Turn | None:
        """The caller's last turn, if its reply never ended: the replica answering it went away
        (or the client dropped) mid-reply. Its deltas so far are in the log, but not its end."""
        users = [t for t in stored if t.role == "user"]
        if not users:
            return None
        turn = users[-1]
        # After it, nothing but what was heard of its own reply (stored as it played: the
        # re-answer replaces that, in place).
        if any(t.turn_id != reply_turn_id(turn.turn_id) for t in stored[stored.index(turn) + 1 :]):
            return None
        try:
            logged = await self.services.events.since(session.session_id, None)
        except EventLogError:
            return None  # cannot tell: better silent than answering twice
        ended = any(e["type"] == "reply" and e.get("done") and e.get("turn_id") == turn.turn_id for e in logged)
        return None if ended else turn

    async def emit(self, event: TurnEvent) -> None:
        """Turn loop events to the client. Partial transcripts are dropped when the outbox is full
        (the next one supersedes them); everything else waits for room."""
        message = protocol.from_event(event)
        if isinstance(event, TurnMetrics):
            self._measure(event)
        if isinstance(event, TranscriptEvent) and not event.final:
            if not self.outbox.full():
                self.outbox.put_nowait((message, False))
            return
        await self.outbox.put((message, protocol.logged(message)))

    def _measure(self, event: TurnMetrics) -> None:
        stages = {} if event.turn_id in self._timed else event.stages_ms
        self._timed.add(event.turn_id)
        metrics.turn_measured(stages, event.prompt.read if event.prompt is not None else None)

    async def send(self, message: dict[str, Any]) -> None:
        """A message for this connection only (not logged for replay)."""
        await self.outbox.put((message, False))

    async def _read(self, call: Call) -> None:
        while True:
            received = await self.ws.receive()
            if received["type"] == "websocket.disconnect":
                if received.get("code") == 1011:  # the WebSocket server's pong deadline passed
                    metrics.KEEPALIVE_CLOSES.inc()
                return
            raw = received.get("text")
            if raw is None:
                await self.send(protocol.error("invalid_message", "binary messages are not part of the protocol"))
                continue
            message = None
            try:
                message = protocol.parse(raw)
                if await self._handle(call, message):
                    return
            except ProtocolError as exc:
                await self.send(protocol.error(exc.code, exc.message))
            except Exception:  # noqa: BLE001 - the boundary of one message: it fails, the call goes on
                # Logged by its kind, never its content (a typed turn is the caller's words).
                log.exception("call %s: handling a %s message failed", call.turns.dialog_id, type(message).__name__)
                await self.send(protocol.error("internal_error", "the server failed on that message; the call goes on"))

    async def _handle(self, call: Call, message: protocol.ClientMessage) -> bool:
        """Act on one message; True when the client said bye."""
        match message:
            case Offer(sdp, wait_in_line):
                if not self._voice:
                    if (refused := await self._admit_call(wait_in_line)) is not None:
                        # Refused before any media work; the client tries again later, or elsewhere.
                        await self.send(refused[0])
                        self._close_code = refused[1]
                        return True
                    if self._session is not None and not self._session.voice:
                        await self._mark_voice(self._session)
                await self.send(protocol.answer(await call.accept_offer(sdp)))
            case IceCandidate():
                await call.add_ice_candidate(message)
            case Text(text):
                if not call.turns.submit_text(text):
                    await self.send(protocol.error("busy", "too many messages waiting; try again shortly"))
            case Ping():
                await self.send({"type": "pong"})
            case Pong():
                pass
            case Bye():
                if self._session is not None and not self._voice:
                    # A caller waiting in line who hangs up gives up its place at once: those behind move up.
                    await self.services.admission.leave_line("calls", self._session.session_id)
                await self.send(protocol.bye("client said bye"))
                return True
            case Resume():
                raise ProtocolError("out_of_order", "`resume` is only the first message of a socket opened as /ws?resume")
        return False

    async def _admit_call(self, wait_in_line: bool = False) -> tuple[dict[str, Any], int] | None:
        """A voice call's places: one of its address's, then one of the replica's (and the
        cluster's). None when both are taken; otherwise the refusal and the close code.
        `wait_in_line`: refused, the session holds a place in the service's line (its id is the
        ticket: the page resumes the same session to try again)."""
        cap = self.services.client_cap
        if not await cap.take("calls", self.client_ip):
            # 1008, not 1013: trying again at once will not help while the address's calls go on.
            return too_many_calls("calls", cap.cap("calls")), 1008
        try:
            ticket = self._session.session_id if wait_in_line and self._session is not None else None
            refusal = await self.services.admission.admit("calls", ticket)
            self._voice = refusal is None
        finally:
            if not self._voice:  # refused, or cut short on the way: the address's place goes back
                await asyncio.shield(cap.release("calls", self.client_ip))
        return None if refusal is None else (over_capacity(refusal), 1013)

    async def _release_call(self) -> None:
        await self.services.admission.release("calls")
        await self.services.client_cap.release("calls", self.client_ip)

    async def _end_at_max_length(self, session: Session) -> None:
        """At `[signaling] max_call_s` from the session's creation (on whichever replica), end it
        like a drain does: after the reply in progress, `bye` with reason `max_call_length`. Its
        resume token no longer works (SessionStore.resume refuses a session that old)."""
        await asyncio.sleep(session.created_at + self.config.max_call_s - time.time())
        metrics.CALLS_AT_MAX_LENGTH.inc()
        log.info("session %s reached its maximum length (%.0f s); ending it", session.session_id, self.config.max_call_s)
        if self._turns is not None:
            # A reply still going after the grace is cut: what was heard of it is stored all the same.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(REPLY_GRACE_S):
                    await self._turns.quiet()
        self._last_bye = protocol.bye("max_call_length")
        raise _Hangup

    async def _ended_by_server(self) -> None:
        await self._end.wait()
        raise _Hangup

    async def _write(self) -> None:
        while True:
            # The batch stays in `_sending` until sent: if the session ends meanwhile, `_close`
            # sends the rest of it before anything queued after it.
            batch = self._sending = [await self.outbox.get()]
            while len(batch) < LOG_BATCH and not self.outbox.empty():
                batch.append(self.outbox.get_nowait())
            try:
                await self._log([message for message, logged in batch if logged])
            except LostOwnership:
                self._taken_elsewhere()
                return
            while batch:
                await self.ws.send_json(batch[0][0])
                batch.pop(0)

    async def _log(self, messages: list[dict[str, Any]]) -> None:
        """Append the conversation's messages to the session's event log and give each its `id`.

        When Redis is away they go out without ids (the client has them; only a replay would
        miss them): a slow log never holds up the call.
        """
        if not messages or self._session is None:
            return
        try:
            async with asyncio.timeout(LOG_TIMEOUT_S):
                ids = await self.services.events.append(self._session, messages)
        except (EventLogError, TimeoutError) as exc:
            metrics.REDIS_ERRORS.labels("event_log").inc()
            if not self._log_failing:
                log.warning("session %s: events go out unlogged: %s", self._session.session_id, exc or "Redis timed out")
            self._log_failing = True
            return
        self._log_failing = False
        for message, event_id in zip(messages, ids, strict=True):
            message["id"] = event_id

    async def _ping(self) -> None:
        # For clients that cannot see protocol pings (browsers): they answer with a pong and
        # learn, from our pings arriving, that the server is alive.
        while True:
            await asyncio.sleep(self.config.ping_interval_s)
            await self.send({"type": "ping"})

    def _plan_turn(self) -> TurnPlan:
        """What a turn beginning now may leave out: the load is this replica's calls over its capacity."""
        admission = self.services.admission
        load = admission.active["calls"] / max(1, admission.capacity("calls"))
        plan = plan_for(load, self.services.settings.shedding)
        for rung in plan.shed:
            metrics.TURNS_SHED.labels(rung).inc()
        return plan

    async def _media_failed(self, reason: str) -> None:
        await self.send(protocol.error("media_failed", reason))

    async def _mark_voice(self, session: Session) -> None:
        try:
            await self.services.sessions.mark_voice(session)
        except (RedisError, OSError) as exc:
            log.warning("session %s: could not note its voice call: %s", session.session_id, exc)

    async def _detach(self, session: Session) -> None:
        try:
            await self.services.sessions.detach(session)
        except (RedisError, OSError) as exc:
            log.warning("session %s: could not shorten its TTL: %s", session.session_id, exc)

    async def _close(self) -> None:
        # Flush what the writer had not sent yet (a final bye, an error) before closing.
        pending = [message for message, _ in self._sending]
        self._sending = []
        while not self.outbox.empty():
            pending.append(self.outbox.get_nowait()[0])
        if self._last_bye is not None:
            pending.append(self._last_bye)
        for message in pending:
            try:
                await self.ws.send_json(message)
            except (WebSocketDisconnect, RuntimeError, OSError):
                return
        try:
            await self.ws.close(code=self._close_code)
        except (RuntimeError, OSError):
            pass  # the client closed first
