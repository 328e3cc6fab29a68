"""One call's writes to its dialog, in order, riding out a Redis outage.

Redis numbers the turns as they land (pipeline.dialog_store), so the buffer only
keeps order: unsaved turns wait in a bounded queue, flushed in order by a background
task that retries with a backoff; the store's idempotent write makes a retry of a
turn that did land a no-op. A turn written again (the caller went on after a pause,
the reply was played further) replaces its unsaved version in the queue. The call
goes on meanwhile, prompting with what it has. A fenced write (another replica took
the session) drops what is pending: those turns are no longer this replica's to write.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque

from pipeline.dialog_store import DialogStore, Fence, Turn
from pipeline.errors import DialogFenced, DialogStoreUnavailable, PipelineError

log = logging.getLogger(__name__)


class DialogBufferFull(PipelineError):
    """Redis has been away so long that the call's unsaved turns filled the buffer."""


class DialogBuffer:
    """Run `run()` as a task of the call; `add()` never waits for Redis."""

    def __init__(
        self, store: DialogStore, dialog_id: str, *, max_pending: int = 512, fence: Fence | None = None
    ) -> None:
        """`fence`: write only while the session is still this call's (signaling.sessions)."""
        self.store = store
        self.dialog_id = dialog_id
        self.max_pending = max_pending
        self.fence = fence
        self.fenced = False  # another replica took the session: nothing more is written
        self._pending: deque[Turn] = deque()
        self._recent: list[Turn] = []  # every turn of this dialog known here, for prompts
        self._wake = asyncio.Event()
        self.flushed = asyncio.Event()
        self.flushed.set()

    @property
    def pending(self) -> int:
        return len(self._pending)

    async def history(self) -> list[Turn]:
        """The dialog so far: from Redis when it answers, plus turns not written yet."""
        try:
            stored = await self.store.turns(self.dialog_id)
        except DialogStoreUnavailable as exc:
            log.warning("%s; prompting with this call's turns", exc)
            return list(self._recent)
        pending = {t.turn_id: t for t in self._pending}
        merged = [pending.pop(t.turn_id, t) for t in stored]
        return merged + list(pending.values())

    def add(self, turn: Turn) -> None:
        """Queue `turn` for writing; a turn already queued under its id is replaced where it stands."""
        if self.fenced:
            return
        if not _replace(self._pending, turn):
            if len(self._pending) >= self.max_pending:
                raise DialogBufferFull(
                    f"{len(self._pending)} turns of dialog {self.dialog_id} are waiting for Redis; not taking more"
                )
            self._pending.append(turn)
        if not _replace(self._recent, turn):
            self._recent.append(turn)
        self.flushed.clear()
        self._wake.set()

    async def run(self) -> None:
        """Write pending turns in order, retrying with a backoff while Redis is away."""
        backoff = 0.25
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._pending:
                head = self._pending[0]
                try:
                    await self.store.put(self.dialog_id, head, fence=self.fence)
                except DialogFenced as exc:
                    log.warning("%s; %d unsaved turn(s) dropped", exc, len(self._pending))
                    self.fenced = True
                    self._pending.clear()
                    break
                except DialogStoreUnavailable as exc:
                    log.warning("dialog %s: %d turn(s) wait for Redis (%s)", self.dialog_id, len(self._pending), exc)
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, 2.0)
                    continue
                backoff = 0.25
                if self._pending and self._pending[0] is head:
                    self._pending.popleft()  # else a newer version of it came meanwhile: write that too
            self.flushed.set()

    async def flush(self, timeout_s: float) -> bool:
        """Write what is pending, retrying for up to `timeout_s`; True when nothing is left.

        For the end of a call, after `run()` was cancelled with the call's other tasks.
        """
        if not self._pending:
            return True
        self._wake.set()
        writer = asyncio.create_task(self.run(), name=f"dialog-flush-{self.dialog_id}")
        try:
            async with asyncio.timeout(timeout_s):
                await self.flushed.wait()
        except TimeoutError:
            return False
        finally:
            writer.cancel()
            await asyncio.wait([writer])
        return True


def _replace(turns: deque[Turn] | list[Turn], turn: Turn) -> bool:
    """Put `turn` in the place of the turn with its id; False when there is none."""
    for i, known in enumerate(turns):
        if known.turn_id == turn.turn_id:
            turns[i] = turn
            return True
    return False
