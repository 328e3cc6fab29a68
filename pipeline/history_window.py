"""Which of a dialog's turns go into the prompt, within a token budget.

The LLM server reuses the cached prompt only up to the first token that changed. A
window that slides by one turn whenever the dialog is over budget ("sliding") changes
the prompt's beginning at every turn of a long call, and every turn re-reads the
whole dialog: seconds, on this hardware. The "stable" window drops the oldest turns
a page at a time (half the budget), at page boundaries counted from the start of the
dialog: its beginning stays put while the dialog grows by a page, and each turn
reads only its new words. The window holds between half the budget (less a turn) and
the whole of it.

Both are pure functions of the stored turns, so every replica, and every retry, makes
the same prompt.
"""

from __future__ import annotations

from collections.abc import Sequence
from pipeline.dialog_store import Turn

def turn_tokens(turn: Turn) -> int:
    """About what a turn costs in the prompt: 4 characters a token, plus its role markers."""
    return len(turn.text) // 4 + 4


def sliding_window(turns: Sequence[Turn], budget_tokens: int) -> list[Turn]:
    """The newest turns that fit `budget_tokens`, oldest first: the beginning moves every turn."""
    kept: list[Turn] = []
    used = 0
    for turn in reversed(turns):
        cost = turn_tokens(turn)
        if used + cost > budget_tokens:
            break
        kept.append(turn)
        used += cost
    return kept[::-1]


def stable_window(turns: Sequence[Turn], budget_tokens: int) -> list[Turn]:
    """The turns after the last page boundary that leaves the rest within `budget_tokens`.

    Pages are half the budget, counted in tokens from the dialog's first turn; the window
    starts at the first user turn past the dropped pages, so it opens as a conversation does.
    """
    costs = [turn_tokens(turn) for turn in turns]
    excess = sum(costs) - budget_tokens
    if excess <= 0:
        return list(turns)
    page = max(1, budget_tokens // 2)
    drop = -(-excess // page) * page  # whole pages: the cut moves once per page of new dialog
    start, dropped = 0, 0
    while start < len(turns) and dropped < drop:
        dropped += costs[start]
        start += 1
    while start < len(turns) and turns[start].role != "user":
        start += 1
    return list(turns[start:])


def history_window(turns: Sequence[Turn], budget_tokens: int, window: str = "stable") -> list[Turn]:
    """The turns for the prompt, by the configured window (`[turns] history_window`: stable or sliding)."""
    if window == "sliding":
        return sliding_window(turns, budget_tokens)
    return stable_window(turns, budget_tokens)
