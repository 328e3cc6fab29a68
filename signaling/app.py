"""The FastAPI application: the web client, health and readiness, and the call WebSocket."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import redis.asyncio as aioredis
from fastapi import FastAPI, Request, WebSocket
from fastapi.responses import FileResponse, JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from fastapi.staticfiles import StaticFiles
from redis.exceptions import RedisError

from parley.free_memory import heap_figures, trim_periodically
from parley.redis_client import redis_client, sentinel_replicas
from parley.runtime import Services, services
from parley.settings import Settings
from pipeline.asr import Transcriber
from pipeline.dialog_store import DialogStore
from pipeline.circuit_breaker import CircuitBreaker
from pipeline.copy_guard import CopyGuard
from pipeline import unit_questions
from pipeline.llm_pool import LLMPool
from pipeline.quick_answers import QuickAnswers
from pipeline.tts import Synthesizer
from pipeline.turn_model import TurnCompletionModel
from pipeline.turns import ChatModel
from signaling import metrics
from signaling.loop_lag import watch_loop_lag
from signaling.admission import Admission
from signaling.client_cap import ClientCap
from signaling.rate_limit import RateLimiter
from signaling.event_log import EventLog
from signaling.origin import origin_allowed, parse_origins
from signaling.ownership import OwnershipWatch
from signaling.sessions import SessionStore
from signaling.ws import CallSocket

log = logging.getLogger(__name__)

WEB_DIR = Path(__file__).resolve().parent.parent / "web"
# Health probes and counters are never rate limited: a load balancer must always see the truth.
UNLIMITED_PATHS = frozenset({"/healthz", "/readyz", "/stats", "/metrics"})


@dataclass(slots=True)
class AppServices:
    """What every call of this process shares: models, clients, stores, and the live calls."""

    settings: Settings
    running: Services
    redis: aioredis.Redis
    sessions: SessionStore
    dialogs: DialogStore
    limiter: RateLimiter
    admission: Admission
    client_cap: ClientCap
    llm: LLMPool
    chat: ChatModel  # what the turn loops ask: the LLM pool, behind Parley's quick answers
    transcriber: Transcriber
    synthesizer: Synthesizer
    turn_model: TurnCompletionModel | None
    events: EventLog
    owners: OwnershipWatch
    sockets: set = field(default_factory=set)  # the CallSockets being served (the drain ends them)


def create_app(settings: Settings) -> FastAPI:
    """An app that starts (or connects to) Redis and the LLM and loads the models for its lifetime."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with contextlib.AsyncExitStack() as stack:
            running = await stack.enter_async_context(services(settings))
            redis = redis_client(running.settings.redis)
            stack.push_async_callback(redis.aclose)
            llm = await stack.enter_async_context(
                LLMPool(running.settings.llm, settings.llm_pool, CircuitBreaker(settings.llm_breaker))
            )
            # Each LLM slot reads the system prompt while the models load, before any call.
            warming = asyncio.create_task(llm.warm(), name="llm-warm")
            stack.callback(warming.cancel)
            # Loading takes seconds; in a plain thread, so the loop stays free and no lane refuses it.
            lanes = settings.inference.for_calls(settings.admission.max_calls)
            transcriber = await asyncio.to_thread(Transcriber, settings.asr, lanes.asr)
            synthesizer = await asyncio.to_thread(Synthesizer, settings.tts, lanes.tts)
            await synthesizer.prepare(settings.turns.fallback_line, settings.turns.busy_line)
            chat: ChatModel = llm
            if settings.llm.copy_words:
                chat = CopyGuard(
                    llm,
                    settings.llm.copy_words,
                    ask_again_at=settings.llm.copy_reask_words,
                    prime_again=settings.llm.copy_reask_primed,
                    on_copy=metrics.LLM_COPIES.inc,
                )
            if settings.quick_answers.any:
                if settings.quick_answers.conversions:
                    await asyncio.to_thread(unit_questions.registry)  # a second to load, before any call
                chat = QuickAnswers(
                    chat, settings.quick_answers, on_answer=lambda kind: metrics.QUICK_ANSWERS.labels(kind).inc()
                )
            turn_model = None
            if settings.turns.end_of_turn == "model":
                turn_model = await asyncio.to_thread(
                    TurnCompletionModel, settings.turn_model, settings.inference.turn_model
                )
            replica = f"{socket.gethostname()}:{os.getpid()}"
            admission = Admission(redis, replica, settings.admission)
            heartbeat = asyncio.create_task(admission.heartbeat(), name="admission-heartbeat")
            stack.callback(heartbeat.cancel)
            stack.push_async_callback(admission.withdraw)
            client_cap = ClientCap(redis, replica, settings.admission)
            counting = asyncio.create_task(client_cap.heartbeat(), name="client-cap-heartbeat")
            stack.callback(counting.cancel)
            owners = OwnershipWatch(redis)
            watching = asyncio.create_task(owners.run(), name="ownership-watch")
            stack.callback(watching.cancel)
            trimming = asyncio.create_task(trim_periodically(settings.server.malloc_trim_s), name="malloc-trim")
            stack.callback(trimming.cancel)
            lag = asyncio.create_task(watch_loop_lag(), name="loop-lag")
            stack.callback(lag.cancel)
            app.state.services = AppServices(
                settings=running.settings,
                running=running,
                redis=redis,
                sessions=SessionStore(
                    redis,
                    replica=replica,
                    attached_ttl_s=settings.signaling.session_ttl_s,
                    detached_ttl_s=settings.signaling.detached_session_ttl_s,
                    max_age_s=settings.signaling.max_call_s,
                ),
                dialogs=DialogStore(
                    redis, ttl_s=settings.dialog.ttl_s, replicas=sentinel_replicas(redis, running.settings.redis)
                ),
                limiter=RateLimiter(redis, settings.rate_limit),
                admission=admission,
                client_cap=client_cap,
                llm=llm,
                chat=chat,
                transcriber=transcriber,
                synthesizer=synthesizer,
                turn_model=turn_model,
                events=EventLog(redis, max_events=settings.signaling.event_log_max),
                owners=owners,
            )
            metrics.bind(app.state.services)
            warmed = await warming
            log.info(
                "Parley ready: ASR %s, voice %s, LLM at %s (%d slots warmed), end of turn by %s",
                settings.asr.model, settings.tts.voice, llm.base_url, warmed, settings.turns.end_of_turn,
            )
            yield

    app = FastAPI(title="Parley", lifespan=lifespan)

    @app.middleware("http")
    async def rate_limit(request: Request, call_next):
        """429 with Retry-After past the client's or the service's token bucket (probes are exempt)."""
        shared: AppServices | None = getattr(app.state, "services", None)
        if shared is None or request.url.path in UNLIMITED_PATHS:
            return await call_next(request)
        decision = await shared.limiter.take(request.client.host if request.client else "unknown")
        if not decision.admitted:
            return JSONResponse(
                {"error": "rate_limited", "retry_after": decision.retry_after_s},
                status_code=429,
                headers={"Retry-After": str(int(decision.retry_after_s))},
            )
        return await call_next(request)

    @app.get("/")
    async def index() -> FileResponse:
        """The web client."""
        return FileResponse(WEB_DIR / "index.html")

    app.mount("/static", StaticFiles(directory=WEB_DIR), name="static")

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        """The process is up."""
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        """Redis and the LLM answer and the models are loaded; 503 with the reasons otherwise."""
        shared: AppServices | None = getattr(app.state, "services", None)
        if shared is None:
            return JSONResponse({"status": "not ready", "problems": ["models are loading"]}, status_code=503)
        if shared.admission.draining:
            return JSONResponse({"status": "draining", "active_calls": len(shared.sockets)}, status_code=503)
        problems = []
        try:
            await shared.redis.ping()
        except (RedisError, OSError) as exc:
            problems.append(f"redis: {exc}")
        # The pool's own connections: a probe every few seconds opens no new client.
        if (llm_problem := await shared.llm.problem()) is not None:
            problems.append(f"llm: {llm_problem}")
        for server in shared.running.llm_servers:
            if server.child is not None and server.child.failure:
                problems.append(f"llm: {server.child.failure}")
        breaker = shared.llm.breaker.state
        if breaker == "open":
            problems.append(f"llm: circuit breaker open for {shared.llm.breaker.retry_after_s():.1f} s more")
        body = {"llm_breaker": breaker, "active_calls": len(shared.sockets)}
        if problems:
            return JSONResponse({"status": "not ready", "problems": problems, **body}, status_code=503)
        return JSONResponse({"status": "ready", **body})

    @app.get("/stats")
    async def stats() -> dict[str, float]:
        """Live counters of this process: sessions, voice calls, asyncio tasks (a leak shows here
        first), Python's allocated blocks (objects kept grow this) and what malloc holds (in use,
        and freed but kept)."""
        shared: AppServices | None = getattr(app.state, "services", None)
        if shared is None:
            counts = {"active_calls": 0, "sessions": 0, "voice_calls": 0}
        else:
            counts = {
                "active_calls": len(shared.sockets),
                "sessions": shared.admission.active["sessions"],
                "voice_calls": shared.admission.active["calls"],
            }
        return {**counts, "tasks": len(asyncio.all_tasks()), "python_blocks": sys.getallocatedblocks(),
                **heap_figures()}

    @app.get("/metrics")
    async def prometheus_metrics() -> Response:
        """Prometheus metrics (docs/metrics.md)."""
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    allowed_origins = parse_origins(settings.signaling.allowed_origins)

    @app.websocket("/ws")
    async def call_socket(websocket: WebSocket) -> None:
        origin = websocket.headers.get("origin")
        if not origin_allowed(origin, websocket.headers.get("host"), allowed_origins):
            # Closed before the handshake completes: the browser sees HTTP 403.
            log.warning("a page from %s may not open calls here ([signaling] allowed_origins)", origin)
            metrics.ORIGIN_REFUSALS.inc()
            await websocket.close(code=1008)
            return
        await CallSocket(websocket, app.state.services, settings.signaling).serve()

    return app
