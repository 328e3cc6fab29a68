"""Reference recordings and word error rate, shared by the tests."""

from __future__ import annotations

import re
from pathlib import Path

import jiwer
import numpy as np

SHARED_AUDIO = Path(__file__).resolve().parents[2] / "shared" / "audio"
JFK = SHARED_AUDIO / "jfk.flac"
STEREO = SHARED_AUDIO / "stereo_diarization.wav"
JFK_TEXT = (
    "And so my fellow Americans, ask not what your country can do for you, ask what you can do for your country."
)
STEREO_TEXT = {
    0: "He began a confused complaint against the wizard, who had vanished behind the curtain on the left.",
    1: "The horizon seems extremely distant.",
}


def normalise(text: str) -> str:
    """Lower case, no punctuation, single spaces."""
    return " ".join(re.sub(r"[^a-z0-9' ]+", " ", text.lower()).split())


def wer(reference: str, hypothesis: str) -> float:
    """Word error rate after normalising case and punctuation."""
    return jiwer.wer(normalise(reference), normalise(hypothesis) or "<empty>")


def stereo_sentence(channel: int):
    """One speaker's sentence from the stereo recording, 16 kHz, trimmed to its voiced frames."""
    from media.audio_file import read_audio
    from parley.call_client import first_voiced_offset_s, last_voiced_offset_s

    samples = read_audio(STEREO, 16000, channel=channel)
    return samples[int(16000 * first_voiced_offset_s(samples, 16000)) : int(16000 * last_voiced_offset_s(samples, 16000))]


def monologue(seconds: float) -> tuple[np.ndarray, str]:
    """Real speech said on and on, without a pause long enough to end a turn: JFK and the two
    stereo sentences, each trimmed to its voiced frames, 40 ms apart, until `seconds`; 16 kHz
    int16, and what it says."""
    from media.audio_file import read_audio
    from parley.call_client import first_voiced_offset_s, last_voiced_offset_s

    jfk = read_audio(JFK, 16000)
    jfk = jfk[int(16000 * first_voiced_offset_s(jfk, 16000)) : int(16000 * last_voiced_offset_s(jfk, 16000))]
    clips = [(jfk, JFK_TEXT), (stereo_sentence(0), STEREO_TEXT[0]), (stereo_sentence(1), STEREO_TEXT[1])]
    gap = np.zeros(640, np.int16)
    pieces, texts, total = [], [], 0
    while total < seconds * 16000:
        clip, text = clips[len(texts) % len(clips)]
        pieces += [clip, gap]
        texts.append(text)
        total += clip.size + gap.size
    return np.concatenate(pieces), " ".join(texts)
