"""Streaming chat completions from an OpenAI-compatible server over httpx.

One request, one stream of text deltas. Failures come out as LLMUnavailable or
LLMTimeout, never as httpx's own exceptions. The LLM pool builds on this.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Sequence
from typing import TypedDict

import httpx

from pipeline.config import LLMConfig
from pipeline.errors import LLMTimeout, LLMUnavailable


class Message(TypedDict):
    role: str
    content: str


class LLMClient:
    """A client for one OpenAI-compatible base URL (…/v1). Close it with `aclose()`."""

    def __init__(self, config: LLMConfig, *, base_url: str | None = None, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.config = config
        self.base_url = (base_url or config.base_url).rstrip("/")
        if not self.base_url:
            raise ValueError("LLM base URL is empty: configure [llm] base_url or start the embedded server")
        headers = {"Authorization": f"Bearer {config.api_key}"} if config.api_key else {}
        self._http = httpx.AsyncClient(
            base_url=self.base_url,
            headers=headers,
            transport=transport,
            # The read timeout bounds each wait for the next chunk; first-token and
            # total deadlines are enforced around the stream.
            timeout=httpx.Timeout(config.first_token_timeout_s, connect=config.connect_timeout_s),
        )

    async def aclose(self) -> None:
        await asyncio.shield(self._http.aclose())

    async def __aenter__(self) -> LLMClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def request_body(self, messages: Sequence[Message]) -> dict:
        """The JSON body of a streamed chat completion for `messages`."""
        body: dict = {
            "model": self.config.model,
            "messages": list(messages),
            "stream": True,
            "max_tokens": self.config.max_tokens,
            "temperature": self.config.temperature,
        }
        if self.config.seed >= 0:
            body["seed"] = self.config.seed
        return body

    def with_system_prompt(self, messages: Sequence[Message]) -> list[Message]:
        """`messages` preceded by the configured system prompt (when there is one)."""
        system: list[Message] = [{"role": "system", "content": self.config.system_prompt}]
        return (system if self.config.system_prompt else []) + list(messages)

    async def stream_chat(self, messages: Sequence[Message]) -> AsyncIterator[str]:
        """Yield the reply's text deltas as they arrive."""
        try:
            async with asyncio.timeout(self.config.total_timeout_s):
                async with self._http.stream("POST", "/chat/completions", json=self.request_body(messages)) as response:
                    if response.status_code != 200:
                        detail = (await response.aread()).decode(errors="replace")[:200]
                        raise LLMUnavailable(f"LLM server answered HTTP {response.status_code}: {detail}")
                    async for delta in _deltas(response):
                        yield delta
        except TimeoutError as exc:
            raise LLMTimeout(f"no complete reply within {self.config.total_timeout_s:g} s") from exc
        except httpx.TimeoutException as exc:
            raise LLMTimeout(f"LLM server timed out ({type(exc).__name__}) at {self.base_url}") from exc
        except httpx.HTTPError as exc:
            raise LLMUnavailable(f"LLM server unreachable at {self.base_url}: {exc or type(exc).__name__}") from exc


async def _deltas(response: httpx.Response) -> AsyncIterator[str]:
    """The content deltas of a server-sent-event stream of chat completion chunks."""
    async for line in response.aiter_lines():
        if not line.startswith("data:"):
            continue
        data = line[5:].strip()
        if data == "[DONE]":
            return
        try:
            chunk = json.loads(data)
        except json.JSONDecodeError as exc:
            raise LLMUnavailable(f"LLM server sent a malformed event: {data[:100]!r}") from exc
        if "error" in chunk:
            raise LLMUnavailable(f"LLM server error: {chunk['error']}")
        for choice in chunk.get("choices", ()):
            if content := (choice.get("delta") or {}).get("content"):
                yield content
