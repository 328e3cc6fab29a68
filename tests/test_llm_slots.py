from hypothesis import given
from hypothesis import strategies as st

from pipeline.llm_slots import SlotMap


def test_a_dialog_comes_back_to_its_own_slot():
    slots = SlotMap(4)
    first = slots.take("a")
    slots.give_back(first)
    others = [slots.take(d) for d in "bcd"]
    for slot in others:
        slots.give_back(slot)
    assert first not in others
    assert slots.take("a") == first


def test_a_new_dialog_takes_an_unowned_slot_then_the_one_used_longest_ago():
    slots = SlotMap(2)
    a = slots.take("a")
    slots.give_back(a)
    b = slots.take("b")
    slots.give_back(b)
    assert a != b
    slots.give_back(slots.take("a"))  # a was used last: b's slot is the older
    assert slots.take("c") == b
    assert slots.owner(b) == "c"


def test_with_every_slot_busy_the_server_places_the_request():
    slots = SlotMap(2)
    assert None not in (slots.take("a"), slots.take("b"))
    assert slots.take("c") is None
    slots.give_back(None)  # nothing to give back


def test_the_same_dialog_twice_at_once_moves_to_the_newer_slot():
    slots = SlotMap(3)
    old = slots.take("a")  # e.g. a draft still being cancelled
    new = slots.take("a")
    assert new != old
    assert slots.owner(new) == "a" and slots.owner(old) is None


@given(st.lists(st.tuples(st.booleans(), st.sampled_from("abcdef")), max_size=200), st.integers(1, 5))
def test_a_busy_slot_is_never_lent_twice_and_a_dialog_owns_at_most_one(steps, count):
    slots = SlotMap(count)
    busy: list[int] = []
    for take, dialog in steps:
        if take:
            slot = slots.take(dialog)
            if len(busy) == count:
                assert slot is None
            else:
                assert slot is not None and slot not in busy
                busy.append(slot)
        elif busy:
            slots.give_back(busy.pop(0))
        owners = [slots.owner(s) for s in range(count) if slots.owner(s) is not None]
        assert len(owners) == len(set(owners))
