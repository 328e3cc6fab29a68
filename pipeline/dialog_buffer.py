"""One call's writes to its dialog, in order, riding out a Redis outage.

Turns get their sequence numbers here, from the dialog's last stored turn on, so
a turn written late (after Redis came back) keeps its place. Unsaved turns wait
in a bounded buffer, flushed in order by a background task that retries with a
backoff; the store's idempotent write makes a retry of a turn that did land a
no-op. The call goes on meanwhile, prompting with what it has.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections import deque

from pipeline.dialog_store import DialogStore, Turn
from pipeline.errors import DialogStoreUnavailable, PipelineError

log = logging.getLogger(__name__)


class DialogBufferFull(PipelineError):
    """Redis has been away so long that the call's unsaved turns filled the buffer."""


class DialogBuffer:
    """Run `run()` as a task of the call; `add()` never waits for Redis."""

    def __init__(self, store: DialogStore, dialog_id: str, *, max_pending: int = 512) -> None:
        self.store = store
        self.dialog_id = dialog_id
        self.max_pending = max_pending
        self._pending: deque[Turn] = deque()
        self._recent: list[Turn] = []  # every turn of this dialog known here, for prompts
        self._next_seq = 0  # 0: not read from Redis yet
        self._based = False  # sequence numbers follow the stored dialog
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
        if self._next_seq == 0:
            self._next_seq = (stored[-1].seq if stored else 0) + 1
            self._based = True
        seen = {t.turn_id for t in stored}
        return stored + [t for t in self._pending if t.turn_id not in seen]

    def add(self, turn: Turn) -> Turn:
        """Give `turn` the next sequence number and queue it for writing."""
        if len(self._pending) >= self.max_pending:
            raise DialogBufferFull(
                f"{len(self._pending)} turns of dialog {self.dialog_id} are waiting for Redis; not taking more"
            )
        if self._next_seq == 0:
            # Redis was never read in this call (it was down from the start): number after
            # what this call knows; the first flush renumbers after the stored dialog.
            self._next_seq = (self._recent[-1].seq if self._recent else 0) + 1
        turn = dataclasses.replace(turn, seq=self._next_seq)
        self._next_seq += 1
        self._pending.append(turn)
        self._recent.append(turn)
        self.flushed.clear()
        self._wake.set()
        return turn

    async def run(self) -> None:
        """Write pending turns in order, retrying with a backoff while Redis is away."""
        backoff = 0.25
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._pending:
                try:
                    if not self._based:
                        await self._rebase()
                    await self.store.append(self.dialog_id, self._pending[0])
                except DialogStoreUnavailable as exc:
                    log.warning("dialog %s: %d turn(s) wait for Redis (%s)", self.dialog_id, len(self._pending), exc)
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, 2.0)
                    continue
                backoff = 0.25
                self._pending.popleft()
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

    async def _rebase(self) -> None:
        """Renumber the unsaved turns to follow the stored dialog (none of them reached Redis yet)."""
        stored = await self.store.turns(self.dialog_id)
        first = (stored[-1].seq if stored else 0) + 1
        renumbered = [dataclasses.replace(t, seq=first + i) for i, t in enumerate(self._pending)]
        by_id = {t.turn_id: t for t in renumbered}
        self._pending = deque(renumbered)
        self._recent = [by_id.get(t.turn_id, t) for t in self._recent]
        self._next_seq = first + len(renumbered)
        self._based = True
