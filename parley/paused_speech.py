"""Speech with a pause where a caller stops to think, for `parley say` and the turn-taking tests.

`Please enter your conference number followed by the | pound key.` is spoken as
one sentence by piper, so the words around the mark keep the sound of a sentence
that goes on, and the audio is then cut at the word boundary under the mark and
`pause_s` of silence put in. Synthesising the two halves apart would instead give
the first half the falling tone of a finished sentence, which is not what a
caller who pauses mid-sentence sounds like.

The boundary comes from piper's phoneme alignments (its model patched in memory
by piper, which needs the `onnx` package): words are the space-separated groups
of the sentence's phonemes, and the cut falls in the middle of the space.
"""

from __future__ import annotations

import numpy as np

from pipeline.config import TTSConfig
from pipeline.model_files import package_dir

PAUSE_MARK = "|"
# A few milliseconds of fade either side of the cut, so it does not click.
FADE_SAMPLES = 64


def split_marks(text: str) -> tuple[str, list[int]]:
    """The text without its pause marks, and after how many words each mark stands."""
    words: list[str] = []
    marks: list[int] = []
    for token in text.split():
        if token == PAUSE_MARK:
            marks.append(len(words))
        else:
            words.append(token)
    if any(not 0 < m < len(words) for m in marks):
        raise ValueError(f"a pause mark {PAUSE_MARK!r} must stand between two words: {text!r}")
    return " ".join(words), marks


class PausedSpeech:
    """One piper voice loaded with alignments: text with `|` marks in, 16-bit PCM with pauses out."""

    def __init__(self, config: TTSConfig = TTSConfig()) -> None:
        from piper import PiperVoice, SynthesisConfig  # heavy import (onnxruntime)

        try:
            import onnx  # noqa: F401  piper needs it to expose alignments
        except ImportError as exc:
            raise RuntimeError("speech with pauses needs the onnx package (pip install 'piper-tts[alignment]')") from exc
        model = package_dir(config.package) / config.directory / f"{config.voice}.onnx"
        self._voice = PiperVoice.load(model, include_alignments=True)
        # No sampling noise: the same text is the same audio every time, so a test or a benchmark hears
        # the same caller on every run (with piper's noise, the cut "...hours of the" once scored 0.63
        # where it usually scores 0.02-0.05).
        self._syn_config = SynthesisConfig(length_scale=config.length_scale, noise_scale=0.0, noise_w_scale=0.0)
        self.sample_rate = int(self._voice.config.sample_rate)

    def say(self, text: str, pause_s: float) -> np.ndarray:
        """Speak `text`, with `pause_s` of silence at each `|`; int16 samples at `sample_rate`."""
        silence = np.zeros(int(round(pause_s * self.sample_rate)), np.int16)
        pieces = self.pieces(text)
        return np.concatenate([x for piece in pieces for x in (silence, piece)][1:])

    def pieces(self, text: str) -> list[np.ndarray]:
        """The speech between the `|` marks of `text`, spoken as one sentence and cut at the marks."""
        clean, marks = split_marks(text)
        pieces: list[tuple[np.ndarray, list[int]]] = []
        for chunk in self._voice.synthesize(clean, syn_config=self._syn_config, include_alignments=True):
            audio = chunk.audio_int16_array
            if not chunk.phoneme_alignments:
                raise RuntimeError("the voice gave no phoneme alignments, so it cannot pause between words")
            pieces.append((audio, _word_gaps(chunk.phoneme_alignments)))
        samples = np.concatenate([a for a, _ in pieces])
        gaps = [offset + sum(len(a) for a, _ in pieces[:i]) for i, (_, g) in enumerate(pieces) for offset in g]
        cuts = []
        words = clean.split()
        for mark in marks:
            # espeak may run words together ("in the" is one group), so the gap under the mark is
            # found by phonemising the words before it: as many spaces as they hold come first.
            before = sum(p.count(" ") for p in self._voice.phonemize(" ".join(words[:mark])))
            if before >= len(gaps):
                raise ValueError(f"cannot find the word boundary for the pause in {text!r}")
            cuts.append(gaps[before])
        bounds = [0, *sorted(cuts), samples.size]
        return [_faded(samples[start:end]) for start, end in zip(bounds, bounds[1:], strict=False)]


def _word_gaps(alignments) -> list[int]:
    """Sample offsets of the middle of each space between words, in order."""
    gaps, position = [], 0
    for alignment in alignments:
        if alignment.phoneme == " ":
            gaps.append(position + alignment.num_samples // 2)
        position += alignment.num_samples
    return gaps


def _faded(samples: np.ndarray) -> np.ndarray:
    """The samples with a short fade in and out."""
    out = samples.astype(np.float32)
    n = min(FADE_SAMPLES, out.size // 2)
    out[:n] *= np.linspace(0.0, 1.0, n)
    out[out.size - n :] *= np.linspace(1.0, 0.0, n)
    return out.astype(np.int16)
