"""Speech recognition: an utterance's audio in, its transcript out, with faster-whisper in a thread.

faster-whisper pads every segment's features to a 30 s window (3000 frames,
hard-coded in its `pad_or_trim`); CTranslate2's encoder accepts less. On these
machines a window of max(10 s, audio + 2 s, rounded up to 5 s) transcribes
an utterance about 3x faster (a 5 s clip: 170 ms instead of 490 ms) with the
same words, while a window as short as the audio makes the decoder loop. So the
window is sized per utterance (`ASRConfig.window_s`, bench/results/asr.md), through
`_install_window_sizing`.

A sized window has one cost, which `heard_segments` takes back: greedy decoding sometimes
goes on past the speech into the silent padding and writes the utterance again there, or
"uh...". On JFK's first phrase cut where a pause would cut it, 11 of 180 cuts came back
doubled ("and so my fellow america and so my fellow america"), more over G.711; a 30 s
window gave none. The doubled words made the end-of-turn judgement read a finished
sentence and the LLM answer nonsense.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar

import numpy as np

from pipeline.config import ASRConfig
from pipeline.errors import ASRBusy, TranscriptionError, TranscriptionGivenUp
from pipeline.inference import InferenceConfig, InferenceLane, LaneConfig, Priority, Urgency
from pipeline.model_files import model_dir

SAMPLE_RATE = 16000


@dataclass(frozen=True, slots=True)
class Transcript:
    """What was said.

    text: the words, stripped ("" when nothing was recognised).
    no_speech_prob: Whisper's probability that the audio holds no speech (the highest over its segments).
    avg_logprob: mean token log-probability (the lowest over its segments); low means unsure.
    audio_ms: length of the audio transcribed.
    language: the language spoken (as configured, or detected by a multilingual model).
    """

    text: str
    no_speech_prob: float
    avg_logprob: float
    audio_ms: float
    language: str

    def heard_nothing(self, max_no_speech_prob: float, max_words: int) -> bool:
        """No speech at all: no words, or at most `max_words` of them (letters and digits: "♪ ♪"
        has none) in audio Whisper rates more likely silence than `max_no_speech_prob` (its guess at
        a breath or a noise is a short stock phrase: "Thank you."). More words are speech whatever
        the rating: faster-whisper already dropped what it rated likely silence *and* decoded
        unsurely (a mean log-probability below -1), and real speech cut into a 12 s turn, 38 words,
        was rated 0.61. `max_words` 0: only a transcript without words is nothing."""
        words = len(_WORD.findall(self.text))
        return words == 0 or (self.no_speech_prob > max_no_speech_prob and words <= max_words)


_window = threading.local()

# A word of a transcript, for counting: a run of letters, digits or apostrophes.
_WORD = re.compile(r"[^\W_]+(?:'[^\W_]+)*")

# Words that say nothing alone: a segment of only these is Whisper's filler for silence.
_FILLERS = frozenset({"uh", "um", "er", "ah", "hmm", "mm"})


class _Segment(Protocol):
    start: float
    text: str


_S = TypeVar("_S", bound=_Segment)


def heard_segments(segments: Sequence[_S], *, audio_s: float, window_s: float) -> list[_S]:
    """The segments that transcribe the audio, not the padding after it.

    Whisper times segments as if its window were 30 s: in a window of `window_s` a segment
    said to start at t starts t * window_s / 30 into the audio. One that starts only after the
    audio has ended was decoded from the padding (a repeat of the utterance, or "uh..."), and so
    is one of nothing but filler words.
    """
    scale = window_s / 30.0
    return [
        s for s in segments
        if s.start * scale < audio_s and not set(re.findall(r"[a-z']+", s.text.lower())) <= _FILLERS
    ]


def _install_window_sizing() -> None:
    """Make faster-whisper pad to the window set for this thread instead of always 30 s.

    faster-whisper offers no option for it (its `chunk_length` only changes how audio is
    split, not the padding), so its module-level `pad_or_trim` is wrapped once. A thread
    that has not set a window gets faster-whisper's own behaviour.
    """
    import faster_whisper.transcribe as fw_transcribe

    if getattr(fw_transcribe.pad_or_trim, "parley_sized", False):
        return
    original = fw_transcribe.pad_or_trim

    def pad_or_trim(array, length: int = 3000, *, axis: int = -1):
        return original(array, getattr(_window, "frames", length), axis=axis)

    pad_or_trim.parley_sized = True  # type: ignore[attr-defined]
    fw_transcribe.pad_or_trim = pad_or_trim


def _stoppable(encode):
    """faster-whisper's encoder step, checking before and after it whether the transcription under
    way in this thread is still wanted: the encoder is about half a transcription's time, and the
    decoding after it cannot be stopped (one CTranslate2 call)."""

    def checked(features):
        _raise_if_given_up()
        encoded = encode(features)
        _raise_if_given_up()
        return encoded

    return checked


def _raise_if_given_up() -> None:
    urgency = getattr(_window, "urgency", None)
    if urgency is not None and not urgency.wanted:
        raise TranscriptionGivenUp("transcription given up while under way")


def to_float32(audio: bytes | np.ndarray) -> np.ndarray:
    """16-bit PCM (bytes or int16 array) as float32 in [-1, 1], which faster-whisper takes."""
    samples = np.frombuffer(audio, dtype=np.int16) if isinstance(audio, bytes) else audio
    if samples.dtype != np.int16:
        raise TypeError(f"expected 16-bit PCM, got {samples.dtype}")
    return samples.astype(np.float32) / 32768.0


class Transcriber:
    """One loaded Whisper model; `transcribe` is safe to call from many calls at once.

    Transcriptions run in the model's own inference lane (`lane`); one it refuses raises ASRBusy.
    """

    def __init__(self, config: ASRConfig, lane: LaneConfig = InferenceConfig().asr) -> None:
        from faster_whisper import WhisperModel  # heavy import, kept off the module's import path

        self.config = config
        _install_window_sizing()
        path = model_dir(config.model, config.source())
        try:
            # CTranslate2 runs one transcription per worker at a time, whatever the number of
            # Python threads calling it: the lane's threads need as many workers to run at once.
            self._model = WhisperModel(
                str(path), device="cpu", compute_type=config.compute_type, cpu_threads=config.cpu_threads,
                num_workers=lane.threads,
            )
        except (RuntimeError, ValueError, OSError) as exc:
            raise TranscriptionError(f"cannot load ASR model {config.model!r} from {path}: {exc}") from exc
        # So that a transcription given up (`Urgency.give_up`) stops at the encoder.
        self._model.encode = _stoppable(self._model.encode)
        # As many transcriptions run at once as the lane has threads (and the model workers):
        # one by default, since two would only share the same cores. A cancelled partial's job
        # runs on to its end; the next waits for its thread.
        self.lane = InferenceLane("asr", lane, busy=ASRBusy)

    async def transcribe(
        self, audio: bytes | np.ndarray, *, priority: Priority | Urgency = Priority.WAITED_FOR
    ) -> Transcript:
        """Transcribe 16 kHz mono 16-bit PCM. `priority`: how soon it is wanted (a turn's final
        transcript before one made ahead at a pause, which may be hurried once the turn has ended;
        a periodic partial only on an idle thread). An `Urgency` given up while the transcription
        runs stops it at the encoder with TranscriptionGivenUp."""
        urgency = priority if isinstance(priority, Urgency) else Urgency(priority)
        return await self.lane.run(self._transcribe_blocking, to_float32(audio), urgency, priority=urgency)

    def _transcribe_blocking(self, samples: np.ndarray, urgency: Urgency) -> Transcript:
        audio_s = samples.size / SAMPLE_RATE
        _window.urgency = urgency
        try:
            # 100 feature frames a second; 30 s is faster-whisper's own window.
            window_s = self.config.window_s(audio_s)
            _window.frames = window_s * 100
            segments, info = self._model.transcribe(
                samples,
                language=self.config.language or None,
                beam_size=self.config.beam_size,
                no_speech_threshold=self.config.no_speech_threshold,
                condition_on_previous_text=False,
                # Greedy decoding without timestamp tokens tends to stop before a short last
                # sentence ("... speaking." dropping "Goodbye."); with them it does not.
                without_timestamps=False,
                vad_filter=False,
                max_new_tokens=self.config.max_new_tokens(audio_s),
            )
            # The segments are a lazy generator: the decoding happens here, in this thread.
            segments = heard_segments(list(segments), audio_s=audio_s, window_s=window_s)
        except (RuntimeError, ValueError) as exc:
            raise TranscriptionError(f"transcription failed: {exc}") from exc
        finally:
            _window.urgency = None
        return Transcript(
            text=" ".join(s.text.strip() for s in segments).strip(),
            no_speech_prob=max((s.no_speech_prob for s in segments), default=1.0),
            avg_logprob=min((s.avg_logprob for s in segments), default=0.0),
            audio_ms=1000.0 * audio_s,
            language=info.language,
        )
