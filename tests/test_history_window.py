from hypothesis import given
from hypothesis import strategies as st

from pipeline.dialog_store import Turn
from pipeline.history_window import history_window, sliding_window, stable_window, turn_tokens


def dialog(lengths: list[int]) -> list[Turn]:
    """A dialog alternating user and assistant turns, with texts of the given lengths."""
    return [
        Turn(role="user" if i % 2 == 0 else "assistant", text="x" * n, turn_id=f"t{i}", seq=i)
        for i, n in enumerate(lengths)
    ]


def cost(turns: list[Turn]) -> int:
    return sum(turn_tokens(t) for t in turns)


lengths = st.lists(st.integers(min_value=0, max_value=800), max_size=80)
budgets = st.integers(min_value=20, max_value=2000)


def test_the_sliding_window_keeps_the_newest_turns_that_fit():
    turns = [Turn(role="user", text="x" * 400, seq=i) for i in range(10)]  # ~104 tokens each
    assert [t.seq for t in sliding_window(turns, 350)] == [7, 8, 9]


def test_a_dialog_within_budget_is_kept_whole():
    turns = dialog([40] * 10)
    assert stable_window(turns, 600) == turns == history_window(turns, 600)


@given(lengths, budgets)
def test_the_stable_window_is_the_newest_turns_within_budget_opening_on_the_caller(lengths, budget):
    turns = dialog(lengths)
    kept = stable_window(turns, budget)
    assert kept == turns[len(turns) - len(kept):]  # a suffix: the newest turns, in order
    assert cost(kept) <= budget
    if kept != turns:
        assert kept == [] or kept[0].role == "user"


@given(lengths, budgets)
def test_the_stable_window_keeps_at_least_half_a_budget_less_two_turns(lengths, budget):
    turns = dialog(lengths)
    kept = stable_window(turns, budget)
    # Dropping stops within a page (half the budget), plus one turn that crossed the page's
    # end, plus the assistant turn skipped so the window opens on the caller.
    biggest = max((turn_tokens(t) for t in turns), default=0)
    assert cost(kept) >= min(cost(turns), budget - budget // 2 - 2 * biggest)


@given(st.lists(st.integers(min_value=0, max_value=400), min_size=1, max_size=120), budgets)
def test_as_the_dialog_grows_the_stable_window_starts_anew_once_a_page(lengths, budget):
    # The window's first turn is where the server's cached prompt stops matching: it may move
    # only when the dialog has grown by a page (half the budget) since it last moved.
    turns = dialog(lengths)
    starts, grown_at_move = [], []
    for n in range(1, len(turns) + 1):
        kept = stable_window(turns[:n], budget)
        start = n - len(kept)
        if starts and start != starts[-1]:
            grown_at_move.append(cost(turns[:n]))
        starts.append(start)
    assert starts == sorted(starts)  # never moves back
    for before, after in zip(grown_at_move, grown_at_move[1:]):
        assert after - before >= budget // 2 - 2 * max(turn_tokens(t) for t in turns)


def test_a_long_dialog_moves_the_sliding_window_every_turn_and_the_stable_one_rarely():
    turns = dialog([60, 200] * 30)  # 60 turns: a caller's sentence, a reply of ~50 tokens
    sliding = [n - len(sliding_window(turns[:n], 600)) for n in range(1, 61)]
    stable = [n - len(stable_window(turns[:n], 600)) for n in range(1, 61)]
    assert len(set(sliding)) > 40
    assert len(set(stable)) <= 8
