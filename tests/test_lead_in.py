"""Cutting the silence before a synthesised sentence's first sound (pipeline.tts.trim_lead_in)."""

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from pipeline.tts import trim_lead_in

RATE = 22050


def _pcm(silence_ms: int, sound_ms: int) -> bytes:
    silence = np.zeros(RATE * silence_ms // 1000, np.int16)
    t = np.arange(RATE * sound_ms // 1000) / RATE
    # A cosine, so that the sound's first sample is not silent (a sine's is 0: cutting it is right).
    sound = (8000 * np.cos(2 * np.pi * 220 * t)).astype(np.int16)
    return np.concatenate([silence, sound]).tobytes()


def test_the_silence_before_the_first_sound_is_cut_to_the_lead_in():
    pcm = _pcm(40, 200)
    trimmed = trim_lead_in(pcm, RATE, 5)
    lead = (len(trimmed) - RATE * 200 // 1000 * 2) / 2 / RATE * 1000
    assert 4 <= lead <= 6
    assert pcm.endswith(trimmed)


def test_silence_throughout_and_a_sound_at_once_are_left_as_they_are():
    assert trim_lead_in(_pcm(300, 0), RATE, 5) == _pcm(300, 0)
    assert trim_lead_in(_pcm(0, 100), RATE, 5) == _pcm(0, 100)
    assert trim_lead_in(b"\x01\x00" * 10, RATE, 5) == b"\x01\x00" * 10  # shorter than one window


@given(silence_ms=st.integers(0, 500), sound_ms=st.integers(0, 300), keep_ms=st.integers(0, 50))
def test_only_leading_samples_go_and_never_more_than_the_silence(silence_ms, sound_ms, keep_ms):
    pcm = _pcm(silence_ms, sound_ms)
    trimmed = trim_lead_in(pcm, RATE, keep_ms)
    assert pcm.endswith(trimmed)
    assert len(trimmed) % 2 == 0
    cut_ms = (len(pcm) - len(trimmed)) / 2 / RATE * 1000
    assert cut_ms <= silence_ms
    if sound_ms >= 5:  # a sound there is kept whole, with at most keep_ms (and one window) before it
        assert len(trimmed) >= RATE * sound_ms // 1000 * 2
        assert cut_ms >= silence_ms - keep_ms - 5 - 1
