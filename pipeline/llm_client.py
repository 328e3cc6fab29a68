"""Streaming chat completions from an OpenAI-compatible server over httpx.

One request, one stream of text deltas. Failures come out as LLMUnavailable or
LLMTimeout, never as httpx's own exceptions. The LLM pool builds on this.

What the server did with the prompt (its tokens, and how many its cache held) is
reported as `PromptUsage` when the server says: llama-server's `timings` (on every
chunk when asked for `timings_per_token`, so it is known at the first token), or the
OpenAI `usage` of the last chunk (`prompt_tokens_details.cached_tokens`).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypedDict

import httpx

from pipeline.config import LLMConfig
from pipeline.errors import LLMConnectError, LLMTimeout, LLMUnavailable


class Message(TypedDict):
    role: str
    content: str


@dataclass(frozen=True, slots=True)
class PromptUsage:
    """A request's prompt as the server handled it: its tokens, and how many came from its cache."""

    tokens: int
    cached: int

    @property
    def read(self) -> int:
        """The tokens the server had to read: what its cache did not hold."""
        return self.tokens - self.cached


UsageSink = Callable[[PromptUsage], None]
# Told when the server stopped a reply at its max_tokens (OpenAI's finish_reason "length"), most
# likely mid-sentence.
CappedSink = Callable[[], None]


def prompt_usage(chunk: dict[str, Any]) -> PromptUsage | None:
    """The prompt figures a streamed chunk carries, if any (llama-server's timings, or OpenAI usage)."""
    timings, usage = chunk.get("timings"), chunk.get("usage")
    if isinstance(timings, dict) and _count(timings.get("prompt_n")) is not None:
        read, cached = _count(timings["prompt_n"]), _count(timings.get("cache_n")) or 0
        return PromptUsage(read + cached, cached)
    if isinstance(usage, dict) and (tokens := _count(usage.get("prompt_tokens"))) is not None:
        details = usage.get("prompt_tokens_details")
        cached = _count(details.get("cached_tokens")) if isinstance(details, dict) else None
        return PromptUsage(tokens, min(cached or 0, tokens))
    return None


def _count(value: object) -> int | None:
    # A server's count, or None for anything that is not a count (a bool is not one).
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


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

    def request_body(
        self, messages: Sequence[Message], *, slot: int | None = None, max_tokens: int | None = None
    ) -> dict:
        """The JSON body of a streamed chat completion for `messages` (`max_tokens`: a lower cap).

        `slot`: the llama-server slot to run on, whose cache holds this dialog's earlier prompt;
        the body then also asks for the cache and for timings with every chunk.
        """
        body: dict = {
            "model": self.config.model,
            "messages": list(messages),
            "stream": True,
            "stream_options": {"include_usage": True},
            "max_tokens": min(self.config.max_tokens, max_tokens or self.config.max_tokens),
            "temperature": self.config.temperature,
        }
        if self.config.seed >= 0:
            body["seed"] = self.config.seed
        if slot is not None:
            body.update(id_slot=slot, cache_prompt=True, timings_per_token=True)
        return body

    def with_system_prompt(self, messages: Sequence[Message]) -> list[Message]:
        """`messages` preceded by the configured system prompt (when there is one)."""
        system: list[Message] = [{"role": "system", "content": self.config.system_prompt}]
        return (system if self.config.system_prompt else []) + list(messages)

    async def stream_chat(
        self,
        messages: Sequence[Message],
        *,
        slot: int | None = None,
        on_usage: UsageSink | None = None,
        max_tokens: int | None = None,
        on_capped: CappedSink | None = None,
    ) -> AsyncIterator[str]:
        """Yield the reply's text deltas as they arrive; `on_usage` hears the prompt figures once
        known, `on_capped` that the reply was stopped at max_tokens."""
        told = None
        body = self.request_body(messages, slot=slot, max_tokens=max_tokens)
        async for chunk in self._stream("/chat/completions", body):
            if on_usage is not None and (usage := prompt_usage(chunk)) is not None and usage != told:
                told = usage
                on_usage(usage)
            for choice in chunk.get("choices", ()):
                if content := (choice.get("delta") or {}).get("content"):
                    yield content
                if choice.get("finish_reason") == "length" and on_capped is not None:
                    on_capped()

    async def stream_completions(self, prompts: Sequence[str]) -> AsyncIterator[tuple[int, str | None]]:
        """One /v1/completions request for several prompts; yields (prompt index, text delta), and
        (prompt index, None) when that prompt's reply was stopped at max_tokens."""
        body = self.request_body([])
        del body["messages"]
        body["prompt"] = list(prompts)
        async for chunk in self._stream("/completions", body):
            for choice in chunk.get("choices", ()):
                index = int(choice.get("index", 0))
                if text := choice.get("text"):
                    yield index, text
                if choice.get("finish_reason") == "length":
                    yield index, None

    async def problem(self) -> str | None:
        """Why the server cannot serve now (GET /models fails), or None; for readiness probes."""
        try:
            response = await self._http.get("/models", timeout=2.0)
        except httpx.HTTPError as exc:
            return f"{type(exc).__name__} at {self.base_url}"
        return None if response.status_code == 200 else f"HTTP {response.status_code} from {self.base_url}/models"

    async def apply_template(self, messages: Sequence[Message]) -> str:
        """The model's chat template applied to `messages` (llama-server's /apply-template)."""
        root = self.base_url.removesuffix("/v1")
        try:
            response = await self._http.post(f"{root}/apply-template", json={"messages": list(messages)})
        except httpx.HTTPError as exc:
            raise LLMConnectError(f"LLM server unreachable at {root}: {exc or type(exc).__name__}") from exc
        if response.status_code != 200:
            raise LLMUnavailable(f"LLM server answered HTTP {response.status_code} to /apply-template")
        return response.json()["prompt"]

    async def _stream(self, path: str, body: dict) -> AsyncIterator[dict]:
        """POST `body` and yield the streamed events; every failure as an LLMError."""
        try:
            async with asyncio.timeout(self.config.total_timeout_s):
                async with self._http.stream("POST", path, json=body) as response:
                    if response.status_code != 200:
                        detail = (await response.aread()).decode(errors="replace")[:200]
                        raise LLMUnavailable(f"LLM server answered HTTP {response.status_code}: {detail}")
                    async for chunk in _events(response):
                        yield chunk
        except (httpx.TimeoutException, TimeoutError) as exc:
            raise LLMTimeout(f"LLM server timed out ({type(exc).__name__}) at {self.base_url}") from exc
        except (httpx.ConnectError, httpx.RemoteProtocolError) as exc:
            raise LLMConnectError(f"LLM server unreachable at {self.base_url}: {exc or type(exc).__name__}") from exc
        except httpx.HTTPError as exc:
            raise LLMUnavailable(f"LLM server failed at {self.base_url}: {exc or type(exc).__name__}") from exc


async def _events(response: httpx.Response) -> AsyncIterator[dict]:
    """The JSON events of a server-sent-event stream, up to [DONE]."""
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
        if chunk is None:
            continue  # llama-server opens a multi-prompt stream with `data: null`
        if not isinstance(chunk, dict) or not isinstance(chunk.get("choices", []), list):
            raise LLMUnavailable(f"LLM server sent an unexpected event: {data[:100]!r}")
        if "error" in chunk:
            raise LLMUnavailable(f"LLM server error: {chunk['error']}")
        yield chunk
