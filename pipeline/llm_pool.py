"""All LLM traffic of a process: micro-batching, backpressure and a circuit breaker.

Requests are gathered up to `max_batch` or `window_ms`, whichever comes first,
and sent together; when nothing else is in flight a request goes at once, so a
lone caller never waits for the window. Two ways to send a batch:
- `concurrent`: one streamed /v1/chat/completions per request, side by side,
  relying on the server's continuous batching;
- `prompts`: one /v1/completions request carrying the batch's prompts (chat
  template applied by the server's /apply-template), its stream split by index.
At most `max_inflight` requests are at a server; a caller waits for a slot at
most `queue_timeout_ms`, then gets LLMBusy. The breaker fails calls at once
while the LLM is failing (LLMCircuitOpen). A request is retried once on a
connection error, never once a token has arrived.

`[llm] base_url` may name several servers, comma-separated (the bundled LLM runs
`[llm_server] instances` of llama-server): each dialog is served by one of them,
the one with the fewest dialogs when it first asks, so that server's cache holds
its prompt; `max_inflight` is per server. With `[llm] server_slots` (llama-server),
each dialog's requests also go to the slot that served it before
(pipeline.llm_slots), so the server's prompt cache holds the dialog so far.
`prime` has the server read a prompt's beginning into that cache ahead of time
(the caller's words while they still talk), when the pool is idle. Requests asked
aside a dialog (`aside`: a copy's re-ask, without the dialog) go to the server after
the dialog's, where their short prompt is kept as a spare, the first slot given up. A
caller that gives up (barge-in, a dropped draft) cancels its request at once: the
connection closes and the server stops working for nobody.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Literal

import httpx

from pipeline.circuit_breaker import CircuitBreaker
from pipeline.config import LLMConfig
from pipeline.errors import LLMBusy, LLMCircuitOpen, LLMConnectError, LLMError, LLMUnavailable
from pipeline.llm_client import CappedSink, LLMClient, Message, PromptUsage, UsageSink
from pipeline.llm_slots import SlotMap

log = logging.getLogger(__name__)

_DONE = object()
_CAPPED = object()  # the server stopped the reply at max_tokens
# Dialogs whose server the pool remembers; one past it is forgotten (the longest unheard of), and
# comes back to whichever server then has the fewest.
_HOMES_KEPT = 4096
# Ends the id of requests asked beside a dialog (LLMPool.aside).
_ASIDE = "/aside"


def _is_aside(dialog_id: str | None) -> bool:
    """Whether `dialog_id` is that of requests asked aside a dialog (LLMPool.aside)."""
    return dialog_id is not None and dialog_id.endswith(_ASIDE)


@dataclass(frozen=True, slots=True, kw_only=True)
class PoolConfig:
    """mode: `concurrent` or `prompts`; max_batch, window_ms: a batch closes at this size or age;
    max_inflight: requests at the server at once; queue_timeout_ms: the longest a caller waits for one;
    retries: attempts again after a connection error before any token."""

    mode: Literal["concurrent", "prompts"] = "concurrent"
    max_batch: int = 4
    window_ms: int = 50
    max_inflight: int = 4
    queue_timeout_ms: int = 2000
    retries: int = 1

    def __post_init__(self) -> None:
        if self.mode not in ("concurrent", "prompts"):
            raise ValueError(f"llm_pool.mode must be 'concurrent' or 'prompts', not {self.mode!r}")
        if min(self.max_batch, self.max_inflight) < 1:
            raise ValueError("llm_pool.max_batch and max_inflight must be at least 1")


@dataclass(eq=False, slots=True)
class _Server:
    """One LLM server of the pool: its client, its share of max_inflight, its slots."""

    client: LLMClient
    permits: asyncio.Semaphore
    slots: SlotMap | None
    dialogs: int = 0  # dialogs the pool sends here
    inflight: int = 0
    # Batches are admitted one after another, in the order they came: a batch that got part of
    # its slots never waits on another that holds the rest.
    admitting: asyncio.Lock = field(default_factory=asyncio.Lock)


@dataclass(eq=False, slots=True)
class _Request:
    messages: list[Message]
    deadline: float
    server: _Server
    dialog_id: str | None = None
    max_tokens: int | None = None
    out: asyncio.Queue = field(default_factory=lambda: asyncio.Queue(maxsize=1024))
    admitted: asyncio.Event = field(default_factory=asyncio.Event)
    abandoned: bool = False
    task: asyncio.Task[None] | None = None  # the request at the server, once sent


class LLMPool:
    """Use as `async with LLMPool(...) as pool`; then `stream_chat` like an LLMClient."""

    def __init__(
        self,
        config: LLMConfig,
        pool: PoolConfig = PoolConfig(),
        breaker: CircuitBreaker | None = None,
        *,
        base_url: str | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.config = config
        self.pool = pool
        self.breaker = breaker or CircuitBreaker()
        urls = [url.strip() for url in (base_url or config.base_url).split(",") if url.strip()]
        self._servers = [
            _Server(
                LLMClient(config, base_url=url, transport=transport),
                asyncio.Semaphore(pool.max_inflight),
                SlotMap(config.server_slots) if config.server_slots > 0 else None,
            )
            for url in urls or [""]  # none: LLMClient says what is missing
        ]
        self.base_url = ",".join(server.client.base_url for server in self._servers)
        self._homes: OrderedDict[str, _Server] = OrderedDict()  # dialog -> its server, newest last
        self._pending: asyncio.Queue[_Request] = asyncio.Queue(maxsize=1024)
        self._priming: dict[str, asyncio.Task[None]] = {}  # by dialog: at most one prime each
        self.inflight = 0
        self._waiting = 0  # taken from the queue, waiting for a slot
        self._tasks: asyncio.TaskGroup | None = None
        self._runner: asyncio.Task[None] | None = None
        self._running = asyncio.Event()

    async def __aenter__(self) -> LLMPool:
        self._runner = asyncio.create_task(self._run(), name="llm-pool")
        await self._running.wait()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await asyncio.shield(self.aclose())

    async def aclose(self) -> None:
        if self._runner is not None:
            self._runner.cancel()
            # Wait for it to end without raising its CancelledError (ours still propagates).
            await asyncio.wait([self._runner])
            self._runner = None
        for server in self._servers:
            await server.client.aclose()

    def with_system_prompt(self, messages: Sequence[Message]) -> list[Message]:
        return self._servers[0].client.with_system_prompt(messages)

    async def problem(self) -> str | None:
        """Why a server of the pool cannot serve now, or None; for readiness probes."""
        problems = await asyncio.gather(*(server.client.problem() for server in self._servers))
        return "; ".join(p for p in problems if p is not None) or None

    async def warm(self) -> int:
        """Have every slot of every server read the system prompt, which every dialog's prompt
        begins with; the slots warmed. A cold slot reads the whole prompt for its first dialog
        (~150 tokens: 0.8 s on an idle core, seconds while a surge's other calls share it); a
        warm one only what follows the system prompt, as later dialogs on any slot do. Best
        effort, before the first call: a slot not warmed is only slower once. Nothing to do
        without [llm] server_slots (a server shared with others places requests itself).
        """
        messages = self.with_system_prompt([])
        if len(messages) == 0:
            return 0

        async def read(server: _Server, slot: int) -> bool:
            try:
                async for _ in server.client.stream_chat(messages, slot=slot, max_tokens=1):
                    pass
            except LLMError as exc:
                log.info("LLM slot %d at %s not warmed: %s", slot, server.client.base_url, exc)
                return False
            return True

        slots = [(server, slot) for server in self._servers if server.slots for slot in range(server.slots.count)]
        return sum(await asyncio.gather(*(read(server, slot) for server, slot in slots)))

    def aside(self, dialog_id: str) -> str:
        """The id under which requests asked beside the dialog, without its history, keep a prompt
        cache of their own (a reply asked again afresh, pipeline.copy_guard). They go to the server
        after the dialog's (with two or more), so one runs while the dialog's own request still
        streams; they count as no dialog there, so the dialogs stay spread as they were; and their
        slot is the first another dialog takes (SlotMap `spare`)."""
        return dialog_id + _ASIDE

    def _server_for(self, dialog_id: str | None, *, place: bool = True) -> _Server:
        """The dialog's server: the one it was sent to before, else the one with fewest dialogs
        (`place`: now its home); for requests aside a dialog, the server after the dialog's; for
        requests without a dialog, the one with the fewest in flight."""
        if len(self._servers) == 1:
            return self._servers[0]
        if dialog_id is None:
            return min(self._servers, key=lambda server: server.inflight)
        if _is_aside(dialog_id):
            home = self._servers.index(self._server_for(dialog_id.removesuffix(_ASIDE), place=place))
            return self._servers[(home + 1) % len(self._servers)]
        server = self._homes.get(dialog_id)
        if server is None:
            server = min(self._servers, key=lambda server: server.dialogs)
            if not place:
                return server
            server.dialogs += 1
            self._homes[dialog_id] = server
            if len(self._homes) > _HOMES_KEPT:
                _, gone = self._homes.popitem(last=False)
                gone.dialogs -= 1
        if place:
            self._homes.move_to_end(dialog_id)
        return server

    def has_idle_server(self, dialog_id: str | None = None) -> bool:
        """Whether a request of `dialog_id` (None: without a dialog, which goes to the server with
        the fewest requests in flight), sent now, starts at once on a server with nothing else to
        do: the pool running, the breaker closed, nobody waiting for a place, and that server (any
        server, without a dialog) with none in flight, and for requests aside a dialog, a slot to
        take without giving up another dialog's prompt. For work that may be thrown away, such as
        a reply asked again beside one that may be a copy.
        """
        servers = self._servers if dialog_id is None else [self._server_for(dialog_id, place=False)]
        # Requests aside a dialog are thrown away more often than not: they take no dialog's slot.
        aside = _is_aside(dialog_id)
        return (
            self._tasks is not None
            and self.breaker.state == "closed"
            and self.queue_depth == 0
            and any(
                server.inflight == 0 and (not aside or server.slots is None or server.slots.has_room(dialog_id))
                for server in servers
            )
        )

    @property
    def queue_depth(self) -> int:
        """Requests waiting to be sent (for a batch to close, or for a slot)."""
        return self._pending.qsize() + self._waiting


    async def stream_chat(
        self,
        messages: Sequence[Message],
        *,
        dialog_id: str | None = None,
        on_usage: UsageSink | None = None,
        max_tokens: int | None = None,
        on_capped: CappedSink | None = None,
    ) -> AsyncIterator[str]:
        """The reply's text deltas; LLMBusy, LLMCircuitOpen or another LLMError when it cannot come.

        `dialog_id` keeps a dialog's requests where its prompt is cached; `on_usage` hears how
        much of the prompt the server read and how much its cache held; `max_tokens` caps this
        reply below the configured cap (a turn shedding load), and `on_capped` hears when the
        reply was stopped there.
        """
        if self._tasks is None:
            raise RuntimeError("Cannot stream: the LLM pool is not running (use `async with`)")
        if not self.breaker.try_acquire():
            raise LLMCircuitOpen(f"the LLM is failing; calls resume in {self.breaker.retry_after_s():.1f} s")
        request = _Request(
            list(messages), time.monotonic() + self.pool.queue_timeout_ms / 1000, self._server_for(dialog_id),
            dialog_id, max_tokens,
        )
        outcome: bool | None = None  # failed?
        try:
            try:
                self._pending.put_nowait(request)
                async with asyncio.timeout(self.pool.queue_timeout_ms / 1000):
                    await request.admitted.wait()
            except (asyncio.QueueFull, TimeoutError):
                raise LLMBusy(f"no LLM slot free within {self.pool.queue_timeout_ms} ms") from None
            while (item := await request.out.get()) is not _DONE:
                if isinstance(item, LLMError):
                    outcome = True
                    raise item
                if isinstance(item, PromptUsage):
                    if on_usage is not None:
                        on_usage(item)
                    continue
                if item is _CAPPED:
                    if on_capped is not None:
                        on_capped()
                    continue
                yield item
            outcome = False
        finally:
            request.abandoned = True
            if request.task is not None and not request.task.done():
                # Closing the stream now, not at its next token, frees the server's slot even
                # while it is still reading a long prompt for a reply nobody will hear.
                request.task.cancel()
            if outcome is None:
                self.breaker.abandon()
            else:
                self.breaker.record(failed=outcome)

    async def prime(self, messages: Sequence[Message], *, dialog_id: str) -> bool:
        """Have the server read `messages` into the dialog's slot cache now, so that a request
        beginning the same way soon after reads only what follows. False when it is not done:
        no slots to keep a cache in, the dialog's server or that slot busy, the breaker not
        closed, or a prime of this dialog still under way; for requests aside a dialog (`aside`),
        no free slot but one holding another dialog's prompt. Best effort: a failed prime costs
        its request only what it would have read anyway, and nothing waits for one except the
        dialog's next request, which goes to the same slot once it is over.
        """
        server = self._server_for(dialog_id)
        if (
            self._tasks is None
            or server.slots is None
            or dialog_id in self._priming
            or server.permits.locked()
            or not self._pending.empty()
            or self.breaker.state != "closed"
        ):
            return False
        # A free permit is taken without suspending: nothing can come between the check and this.
        await server.permits.acquire()
        # An aside's prime gives up no dialog's cached prompt: a re-ask may never come.
        slot = server.slots.take(dialog_id, spare=_is_aside(dialog_id), evict=not _is_aside(dialog_id))
        if slot is None:
            server.permits.release()
            return False
        self._count_in(server)
        task = self._tasks.create_task(
            self._send_prime(server, list(messages), slot, dialog_id), name="llm-pool-prime"
        )
        self._priming[dialog_id] = task
        return True

    async def _send_prime(self, server: _Server, messages: list[Message], slot: int, dialog_id: str) -> None:
        try:
            async for _ in server.client.stream_chat(messages, slot=slot, max_tokens=1):
                pass
        except LLMError as exc:
            log.debug("prime of dialog %s failed: %s", dialog_id, exc)
        finally:
            assert server.slots is not None
            server.slots.give_back(slot)
            self._release(server)
            del self._priming[dialog_id]

    async def _run(self) -> None:
        async with asyncio.TaskGroup() as tasks:
            self._tasks = tasks
            self._running.set()
            tasks.create_task(self._batcher(), name="llm-pool-batcher")

    async def _batcher(self) -> None:
        window = self.pool.window_ms / 1000
        while True:
            batch = [await self._pending.get()]
            if self.inflight:
                # Others are in flight, so this request would wait for the server anyway:
                # gather company for it, up to the window.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(window):
                        while len(batch) < self.pool.max_batch:
                            batch.append(await self._pending.get())
            while len(batch) < self.pool.max_batch and not self._pending.empty():
                batch.append(self._pending.get_nowait())
            # Each server's share of the batch waits for that server's slots alone.
            for server in self._servers:
                if group := [request for request in batch if request.server is server]:
                    self._tasks.create_task(self._admit(server, group), name="llm-pool-admit")

    async def _admit(self, server: _Server, group: list[_Request]) -> None:
        """Send `group` (all for `server`) as its slots free: one request at a time as each gets
        one, or (mode `prompts`) those that got one together."""
        assert self._tasks is not None
        together = []
        async with server.admitting:
            for request in group:
                if not await self._take_slot(server, request):
                    continue
                if self.pool.mode == "prompts" and len(group) > 1:
                    together.append(request)
                else:
                    request.task = self._tasks.create_task(self._send_chat(server, request), name="llm-pool-chat")
        if len(together) > 1:
            self._tasks.create_task(self._send_prompts(server, together), name="llm-pool-prompts")
        elif together:
            together[0].task = self._tasks.create_task(self._send_chat(server, together[0]), name="llm-pool-chat")

    async def _take_slot(self, server: _Server, request: _Request) -> bool:
        """A slot for `request` before its deadline; False if its caller gave up or it timed out."""
        if request.abandoned:
            return False
        self._waiting += 1
        try:
            async with asyncio.timeout(max(0.0, request.deadline - time.monotonic())):
                await server.permits.acquire()
        except TimeoutError:
            return False
        finally:
            self._waiting -= 1
        if request.abandoned:
            server.permits.release()
            return False
        self._count_in(server)
        request.admitted.set()
        return True

    def _count_in(self, server: _Server, count: int = 1) -> None:
        self.inflight += count
        server.inflight += count

    def _release(self, server: _Server, count: int = 1) -> None:
        self.inflight -= count
        server.inflight -= count
        for _ in range(count):
            server.permits.release()

    async def _send_chat(self, server: _Server, request: _Request) -> None:
        if (priming := self._priming.get(request.dialog_id or "")) is not None:
            # The prime holds the dialog's slot and is reading the beginning of this prompt:
            # after it, this request reads only the rest there.
            await asyncio.wait([priming])
        spare = _is_aside(request.dialog_id)
        slot = server.slots.take(request.dialog_id, spare=spare) if server.slots is not None else None
        try:
            for attempt in range(self.pool.retries + 1):
                started = False
                try:
                    async for delta in server.client.stream_chat(
                        request.messages, slot=slot, on_usage=lambda usage: _offer(request, usage),
                        max_tokens=request.max_tokens, on_capped=lambda: _offer(request, _CAPPED),
                    ):
                        started = True
                        if request.abandoned:
                            return  # the caller left (barge-in): closing the stream stops generation
                        await _deliver(request, delta)
                    break
                except LLMConnectError as exc:
                    if started or attempt == self.pool.retries:
                        await _deliver(request, exc)
                        return
                    log.warning("LLM connection failed (%s); retrying once", exc)
                    await asyncio.sleep(0.05)
                except LLMError as exc:
                    await _deliver(request, exc)
                    return
            await _deliver(request, _DONE)
        except Exception as exc:
            # A bug here must not leave the caller waiting forever, nor take the pool down.
            log.exception("LLM pool: chat request failed unexpectedly")
            await _deliver(request, LLMUnavailable(f"LLM request failed unexpectedly: {exc!r}"))
        finally:
            if server.slots is not None:
                server.slots.give_back(slot)
            self._release(server)

    async def _send_prompts(self, server: _Server, batch: list[_Request]) -> None:
        try:
            try:
                prompts = await asyncio.gather(*(server.client.apply_template(r.messages) for r in batch))
                async for index, text in server.client.stream_completions(prompts):
                    await _deliver(batch[index], _CAPPED if text is None else text)
            except LLMError as exc:
                for request in batch:
                    await _deliver(request, exc)
                return
            except Exception as exc:
                log.exception("LLM pool: batched request failed unexpectedly")
                for request in batch:
                    await _deliver(request, LLMUnavailable(f"LLM request failed unexpectedly: {exc!r}"))
                return
            for request in batch:
                await _deliver(request, _DONE)
        finally:
            self._release(server, len(batch))


async def _deliver(request: _Request, item: object) -> None:
    """Hand a delta, an error or the end to the caller, unless it has gone."""
    if not request.abandoned:
        await request.out.put(item)


def _offer(request: _Request, item: PromptUsage | object) -> None:
    """Pass the prompt figures (or the cap's news) on with the deltas; dropped if the caller is far
    behind (they are not the reply)."""
    if not request.abandoned:
        with contextlib.suppress(asyncio.QueueFull):
            request.out.put_nowait(item)
