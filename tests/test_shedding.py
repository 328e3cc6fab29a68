"""The shedding ladder: which work a turn leaves out at a given load."""

from hypothesis import given
from hypothesis import strategies as st

from pipeline.shedding import FULL, SheddingConfig, TurnPlan, plan_for

marks = st.floats(min_value=0.0, max_value=2.0)
loads = st.floats(min_value=0.0, max_value=1.0)


def test_the_default_ladder_sheds_partials_with_reply_length_and_keeps_drafts():
    ladder = SheddingConfig()
    assert plan_for(0.0, ladder) == FULL and plan_for(0.5, ladder) == FULL and plan_for(0.74, ladder) == FULL
    assert plan_for(0.75, ladder) == TurnPlan(partials=False, max_tokens=40, early_judgements=False)
    assert plan_for(1.0, ladder).shed == ("partials", "long_replies", "early_judgements")


@given(marks, marks, marks, marks, marks, loads, loads)
def test_more_load_never_gives_back_work_a_lighter_load_shed(partials, drafts, short, early, audio, load, more):
    ladder = SheddingConfig(
        partials_off_at=partials, drafts_off_at=drafts, short_replies_at=short, early_judgements_off_at=early,
        audio_judgements_off_at=audio,
    )
    lighter, heavier = plan_for(min(load, more), ladder), plan_for(max(load, more), ladder)
    assert set(lighter.shed) <= set(heavier.shed)


@given(loads)
def test_a_mark_above_one_never_applies_and_a_mark_of_zero_always_does(load):
    never = SheddingConfig(
        partials_off_at=2, drafts_off_at=2, short_replies_at=2, early_judgements_off_at=2, audio_judgements_off_at=2
    )
    assert plan_for(load, never) == FULL
    always = SheddingConfig(
        partials_off_at=0, drafts_off_at=0, short_replies_at=0, early_judgements_off_at=0, audio_judgements_off_at=0
    )
    assert plan_for(load, always) == TurnPlan(
        partials=False, drafts=False, max_tokens=40, early_judgements=False, audio_judgements=False
    )
