"""A recording proxy in front of the real llama-server: the tests read the prompts the server sent."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from parley.server_process import free_port
from tests.asgi_server import serving


class RecordingProxy:
    """Forwards /v1/* to `upstream`; keeps each chat request's JSON body in `requests`."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/")
        self.requests: list[dict] = []
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self._client = httpx.AsyncClient(timeout=60)
        self.app = Starlette(
            routes=[
                Route("/v1/chat/completions", self._chat, methods=["POST"]),
                Route("/v1/models", self._models, methods=["GET"]),
            ]
        )

    async def _chat(self, request: Request) -> Response:
        body = await request.json()
        self.requests.append(body)
        upstream = await self._client.send(
            self._client.build_request("POST", f"{self.upstream}/chat/completions", json=body), stream=True
        )

        async def relay() -> AsyncIterator[bytes]:
            try:
                async for chunk in upstream.aiter_raw():
                    yield chunk
            finally:
                await upstream.aclose()

        return StreamingResponse(relay(), status_code=upstream.status_code, media_type="text/event-stream")

    async def _models(self, request: Request) -> Response:
        upstream = await self._client.get(f"{self.upstream}/models")
        return Response(upstream.content, status_code=upstream.status_code, media_type="application/json")

    def prompts_answering(self, user_text: str) -> list[str]:
        """The messages of each request whose last message is `user_text`, as one JSON string (for `in` checks)."""
        return [json.dumps(r["messages"]) for r in self.requests if r["messages"][-1]["content"] == user_text]

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[RecordingProxy]:
        try:
            async with serving(self.app, self.port, "llm-proxy"):
                yield self
        finally:
            await self._client.aclose()
