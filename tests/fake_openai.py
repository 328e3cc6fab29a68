"""A small OpenAI-compatible server for pool tests: streams canned tokens slowly and counts
how many requests are in progress at once. It is the test's instrument, not a model."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route

from parley.server_process import free_port
from tests.asgi_server import serving


class CountingServer:
    """first_token_delay_s: the wait before the first token, as while a long prompt is read.
    A request that asks for `timings_per_token` gets llama-server's `timings` with every chunk:
    its prompt read in full when it names no `id_slot`, else all but 10 tokens from the cache."""

    def __init__(self, *, tokens: int = 5, token_delay_s: float = 0.02, first_token_delay_s: float = 0.0) -> None:
        self.tokens = tokens
        self.token_delay_s = token_delay_s
        self.first_token_delay_s = first_token_delay_s
        self.active = 0
        self.max_active = 0
        self.requests: list[dict] = []
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self.app = Starlette(
            routes=[
                Route("/v1/chat/completions", self._chat, methods=["POST"]),
                Route("/v1/completions", self._completions, methods=["POST"]),
                Route("/apply-template", self._template, methods=["POST"]),
            ]
        )

    async def _stream(self, events) -> AsyncIterator[bytes]:
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        try:
            await asyncio.sleep(self.first_token_delay_s)
            for i in range(self.tokens):
                await asyncio.sleep(self.token_delay_s)
                for event in events(i):
                    yield f"data: {json.dumps(event)}\n\n".encode()
            yield b"data: [DONE]\n\n"
        finally:
            self.active -= 1

    async def _chat(self, request: Request) -> StreamingResponse:
        body = await request.json()
        self.requests.append(body)
        prompt = 10 * sum(len(m["content"].split()) for m in body["messages"]) + 20
        cached = prompt - 10 if "id_slot" in body else 0
        timings = {"timings": {"prompt_n": prompt - cached, "cache_n": cached}} if body.get("timings_per_token") else {}
        return StreamingResponse(
            self._stream(lambda i: [{"choices": [{"index": 0, "delta": {"content": f"w{i} "}}], **timings}]),
            media_type="text/event-stream",
        )

    async def _completions(self, request: Request) -> StreamingResponse:
        body = await request.json()
        self.requests.append(body)
        prompts = body["prompt"]
        return StreamingResponse(
            self._stream(lambda i: [{"choices": [{"index": n, "text": f"p{n}w{i} "}]} for n in range(len(prompts))]),
            media_type="text/event-stream",
        )

    async def _template(self, request: Request) -> JSONResponse:
        body = await request.json()
        return JSONResponse({"prompt": " | ".join(m["content"] for m in body["messages"])})

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[CountingServer]:
        async with serving(self.app, self.port, "fake-openai"):
            yield self


class ServingLLM(CountingServer):
    """A CountingServer a whole `parley serve` can use: it answers readiness's GET /v1/models too
    (five tokens 20 ms apart by default: a dialog of many turns in seconds)."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.app.router.routes.append(Route("/v1/models", self._models, methods=["GET"]))

    async def _models(self, request: Request) -> JSONResponse:
        return JSONResponse({"object": "list", "data": [{"id": "counting", "object": "model"}]})
