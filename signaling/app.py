"""The FastAPI application: health and readiness now; the call WebSocket builds on it."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import httpx
import redis.asyncio as aioredis
from fastapi import FastAPI
from fastapi.responses import JSONResponse
from redis.exceptions import RedisError

from parley.runtime import Services, services
from parley.settings import Settings


def create_app(settings: Settings) -> FastAPI:
    """An app that starts (or connects to) Redis and the LLM for its lifetime."""
    state: dict[str, object] = {}

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with services(settings) as running:
            state["services"] = running
            state["redis"] = aioredis.from_url(running.settings.redis.url)
            try:
                yield
            finally:
                await state["redis"].aclose()  # type: ignore[attr-defined]

    app = FastAPI(title="Parley", lifespan=lifespan)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        """The process is up."""
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        """Redis and the LLM answer; 503 with the reasons otherwise."""
        running: Services = state["services"]  # type: ignore[assignment]
        problems = []
        try:
            await state["redis"].ping()  # type: ignore[attr-defined]
        except (RedisError, OSError) as exc:
            problems.append(f"redis: {exc}")
        base = running.settings.llm.base_url.rstrip("/")
        try:
            async with httpx.AsyncClient(timeout=2.0) as client:
                response = await client.get(f"{base}/models")
            if response.status_code != 200:
                problems.append(f"llm: HTTP {response.status_code} from {base}/models")
        except httpx.HTTPError as exc:
            problems.append(f"llm: {type(exc).__name__} at {base}")
        if running.llm_server is not None and running.llm_server.child and running.llm_server.child.failure:
            problems.append(f"llm: {running.llm_server.child.failure}")
        if problems:
            return JSONResponse({"status": "not ready", "problems": problems}, status_code=503)
        return JSONResponse({"status": "ready"})

    return app
