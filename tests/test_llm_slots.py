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


def test_a_spare_prompt_is_given_up_before_any_dialogs():
    slots = SlotMap(2)
    slots.give_back(slots.take("a"))
    spare = slots.take("a/aside", spare=True)  # quick to read again: the system prompt and a few words
    slots.give_back(spare)
    assert slots.take("c") == spare  # though a's was used longer ago


def test_a_take_that_evicts_no_one_takes_only_its_own_a_free_or_a_spare_slot():
    slots = SlotMap(2)
    slots.give_back(slots.take("a"))
    slots.give_back(slots.take("b"))
    assert slots.take("x", spare=True, evict=False) is None  # both hold a dialog's prompt
    assert not slots.has_room("x") and slots.has_room("a")
    assert {slots.owner(0), slots.owner(1)} == {"a", "b"}
    slots.give_back(slots.take("a"))
    spare = slots.take("a/aside", spare=True)  # takes b's, the older (a reply's own re-ask may)
    slots.give_back(spare)
    assert slots.take("y/aside", spare=True, evict=False) == spare
    assert slots.take("a", evict=False) == 1 - spare  # its own


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


@given(
    st.lists(st.tuples(st.booleans(), st.sampled_from("abcdef"), st.booleans(), st.booleans()), max_size=200),
    st.integers(1, 5),
)
def test_a_busy_slot_is_never_lent_twice_and_a_dialog_owns_at_most_one(steps, count):
    slots = SlotMap(count)
    busy: list[int] = []
    spares: set[str] = set()  # dialogs whose prompt was last taken as spare
    for take, dialog, spare, evict in steps:
        if take:
            before = [slots.owner(s) for s in range(count)]
            slot = slots.take(dialog, spare=spare, evict=evict)
            if len(busy) == count:
                assert slot is None
            elif evict:
                assert slot is not None and slot not in busy
            elif slot is None:
                # Not evicting, and nothing to take: every free slot holds another dialog's own prompt.
                assert all(
                    before[s] not in (None, dialog) and before[s] not in spares for s in range(count) if s not in busy
                )
            if slot is not None:
                assert slot not in busy
                # Not evicting: the slot was its own, nobody's, or held a spare prompt.
                assert evict or before[slot] in (None, dialog) or before[slot] in spares
                busy.append(slot)
                spares.discard(dialog)
                if spare:
                    spares.add(dialog)
        elif busy:
            slots.give_back(busy.pop(0))
        owners = [slots.owner(s) for s in range(count) if slots.owner(s) is not None]
        assert len(owners) == len(set(owners))
