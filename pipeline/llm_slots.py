"""Which llama-server slot serves a dialog's next request, so its prompt cache is still there.

llama-server keeps, per slot, the tokens of the last prompt it read; a request whose
prompt starts the same way reads only what is new. A dialog's prompt grows by a turn or
two each time, so sent to the slot that served it before, a turn reads only its new
words. Sent elsewhere (the server's own choice when several slots are free), it reads
the whole dialog again: at ~100 tokens a second on one thread, seconds.

The map is the pool's alone: one process, one server. It remembers the home of at most
one dialog per slot; a new dialog takes the free slot used longest ago, and the dialog
that lived there reads its prompt afresh when it comes back. A spare prompt (a copy's
re-ask: the system prompt and a few words, quick to read again) is the first to go.
"""

from __future__ import annotations

import itertools


class SlotMap:
    """Slots of one llama-server, lent out one request at a time."""

    def __init__(self, count: int) -> None:
        if count < 1:
            raise ValueError(f"a slot map needs at least one slot, not {count}")
        self.count = count
        self._owner: list[str | None] = [None] * count  # the dialog whose prompt each slot holds
        self._spare = [False] * count  # its prompt is quick to read again: the first to give up
        self._busy = [False] * count
        self._last_used = [0] * count
        self._clock = itertools.count(1)

    def take(self, dialog_id: str | None, *, spare: bool = False, evict: bool = True) -> int | None:
        """A free slot for the dialog's request: its own if free, else one nobody owns, else one
        holding a spare prompt, else the one used longest ago.

        `spare`: this dialog's prompt is quick to read again, so its slot is the first another
        dialog takes. `evict=False`: no other dialog's prompt but a spare one is given up for
        this request (a prime, worth it only if it costs no one). None when no slot is to be
        had: every slot busy (more requests in flight than slots), the server then places the
        request itself; or, not evicting, every free slot holding a dialog's prompt.
        """
        free = self._open_to(dialog_id, evict=evict)
        if not free:
            return None
        own = [slot for slot in free if dialog_id is not None and self._owner[slot] == dialog_id]
        # Slots nobody owns go first, then spare prompts, then the one whose owner was served longest ago.
        slot = own[0] if own else min(
            free, key=lambda s: (self._owner[s] is not None, not self._spare[s], self._last_used[s])
        )
        if dialog_id is not None:
            for other in range(self.count):
                if other != slot and self._owner[other] == dialog_id:
                    self._owner[other] = None  # this slot now holds the dialog's newest prompt
                    self._spare[other] = False
        self._owner[slot] = dialog_id
        self._spare[slot] = spare
        self._busy[slot] = True
        self._last_used[slot] = next(self._clock)
        return slot

    def has_room(self, dialog_id: str | None) -> bool:
        """Whether a request of the dialog would now find a slot without giving up another
        dialog's prompt (`take` with evict=False)."""
        return bool(self._open_to(dialog_id, evict=False))

    def _open_to(self, dialog_id: str | None, *, evict: bool) -> list[int]:
        """The free slots the dialog may take; not evicting, only its own, nobody's, or a spare."""
        free = [slot for slot in range(self.count) if not self._busy[slot]]
        if evict:
            return free
        own = dialog_id is not None
        return [s for s in free if self._owner[s] is None or self._spare[s] or (own and self._owner[s] == dialog_id)]

    def give_back(self, slot: int | None) -> None:
        """The request on `slot` is over; its prompt stays cached there for the dialog's next turn."""
        if slot is not None:
            self._busy[slot] = False

    def owner(self, slot: int) -> str | None:
        """The dialog whose prompt `slot` holds (None: none, or a request without a dialog)."""
        return self._owner[slot]
