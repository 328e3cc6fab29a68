"""Voice activity: 16 kHz mono 16-bit frames in, speech-start and end-of-turn events out.

A frame counts as voiced when webrtcvad says so *and* it is loud enough *and*
its spectrum is not flat: webrtcvad alone calls white noise at -20 dBFS speech,
while voiced speech has a spectral flatness near 0.01 and white noise near 0.56.
A turn starts after `start_speech_ms` of voiced frames within `start_window_ms`
(a click or a cough is shorter) and ends after `end_silence_ms` without one.
That figure can be changed for the turn in progress (the turn loop sets it from
its end-of-turn judgement): the detector only counts the silence.
"""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass

import numpy as np
import webrtcvad

from media.frames import AudioFrame, level_dbfs
from pipeline.config import VADConfig

SAMPLE_RATE = 16000


@dataclass(frozen=True, slots=True)
class SpeechStarted:
    """The user started talking; at_ms is the stream time of the first voiced frame."""

    at_ms: float


@dataclass(frozen=True, slots=True)
class TurnEnded:
    """The user stopped talking.

    audio: the utterance as 16 kHz mono 16-bit PCM, from the pre-roll to the end of the pause.
    start_ms, end_ms: stream times of the first voiced frame and the end of the last one.
    speech_bytes: how much of `audio` runs up to the end of the last voiced frame; a
        transcript of that much is already the final one.
    silence_ms: the silence after the last voiced frame that ended the turn (0 when the
        stream ended or the turn ran too long).
    """

    audio: bytes
    start_ms: float
    end_ms: float
    speech_bytes: int = 0
    silence_ms: float = 0.0


@dataclass(frozen=True, slots=True)
class SpeechPaused:
    """The user has been quiet for `pause_ms` within a turn: the turn may be ending.

    What was said so far can be transcribed now, during the end-of-turn silence.
    speech_bytes: how much of the utterance runs up to the end of the last voiced frame;
        if the turn ends without another voiced frame, its TurnEnded has the same figure.
    """

    at_ms: float
    speech_bytes: int = 0


@dataclass(frozen=True, slots=True)
class SpeechLull:
    """The user has been quiet for `transcribe_ms` within a turn, short of a pause.

    What was said so far is transcribed now rather than at the pause, which needs it to
    judge the turn: a lull the user talks through leaves only a partial transcript.
    speech_bytes: as SpeechPaused's.
    """

    at_ms: float
    speech_bytes: int = 0


VADEvent = SpeechStarted | SpeechLull | SpeechPaused | TurnEnded


def spectral_flatness(samples: np.ndarray) -> float:
    """Geometric over arithmetic mean of the power spectrum: ~0.56 for white noise, ~0 for a tone."""
    window = np.hanning(samples.size)
    power = np.abs(np.fft.rfft(samples.astype(np.float64) * window)) ** 2 + 1e-10
    return float(np.exp(np.mean(np.log(power))) / np.mean(power))


class VoiceActivityDetector:
    """A per-call state machine over 20 ms frames (or whatever `config.frame_ms` says)."""

    def __init__(self, config: VADConfig = VADConfig()) -> None:
        self.config = config
        self._vad = webrtcvad.Vad(config.aggressiveness)
        self._pre_roll: deque[AudioFrame] = deque(maxlen=max(1, config.pre_roll_ms // config.frame_ms))
        self._window: deque[tuple[bool, float]] = deque(maxlen=max(1, config.start_window_ms // config.frame_ms))
        self._utterance = bytearray()
        self._speaking = False
        self._start_ms = 0.0
        self._last_voiced_end_ms = 0.0
        self._silence_ms = 0.0
        self._speech_bytes = 0
        self.start_speech_ms = config.start_speech_ms
        # The silence that ends the turn in progress; the turn loop sets it per turn.
        self.end_silence_ms = config.end_silence_ms
        self.last_voiced = False  # whether the last frame pushed sounded like speech
        # Speech of an earlier stretch that the turn in progress continues (the turn loop sets it):
        # it counts toward max_turn_ms, so a continued turn never outgrows the ASR's window.
        self.carried_ms = 0.0

    @property
    def speaking(self) -> bool:
        """True between SpeechStarted and TurnEnded."""
        return self._speaking

    def utterance(self) -> bytes:
        """The current utterance so far (empty while nobody speaks): the input of a partial transcript."""
        return bytes(self._utterance)

    @property
    def speech_bytes(self) -> int:
        """How much of the current utterance runs up to the end of its last voiced frame."""
        return self._speech_bytes if self._speaking else 0

    def is_voiced(self, frame: AudioFrame) -> bool:
        """Whether one frame sounds like speech (webrtcvad, level and spectral flatness all agree)."""
        if frame.sample_rate != SAMPLE_RATE:
            raise ValueError(f"VAD needs {SAMPLE_RATE} Hz frames, got {frame.sample_rate} Hz")
        if frame.duration_ms != self.config.frame_ms:
            raise ValueError(f"VAD needs {self.config.frame_ms} ms frames, got {frame.duration_ms:g} ms")
        if level_dbfs(frame.pcm) < self.config.min_level_dbfs:
            return False
        if not self._vad.is_speech(frame.pcm, SAMPLE_RATE):
            return False
        return spectral_flatness(frame.array()) <= self.config.max_spectral_flatness

    def push(self, frame: AudioFrame) -> VADEvent | None:
        """Feed one frame; returns the event it causes, if any."""
        voiced = self.last_voiced = self.is_voiced(frame)
        start_ms = 1000.0 * frame.pts / SAMPLE_RATE
        end_ms = start_ms + frame.duration_ms
        if not self._speaking:
            self._pre_roll.append(frame)
            self._window.append((voiced, start_ms))
            voiced_ms = sum(self.config.frame_ms for v, _ in self._window if v)
            # start_speech_ms can be lowered while the bot talks, so barge-in reacts faster.
            if voiced_ms < self.start_speech_ms:
                return None
            self._speaking = True
            self._start_ms = next(t for v, t in self._window if v)
            self._utterance = bytearray(b"".join(f.pcm for f in self._pre_roll))
            self._last_voiced_end_ms = end_ms
            self._speech_bytes = len(self._utterance)
            self._silence_ms = 0.0
            self._window.clear()
            self._pre_roll.clear()
            return SpeechStarted(self._start_ms)

        self._utterance += frame.pcm
        if voiced:
            self._silence_ms = 0.0
            self._last_voiced_end_ms = end_ms
            self._speech_bytes = len(self._utterance)
        else:
            self._silence_ms += frame.duration_ms
        too_long = end_ms - self._start_ms + self.carried_ms >= self.config.max_turn_ms
        if self._silence_ms >= self.end_silence_ms or too_long:
            return self._end_turn(self._silence_ms if not too_long else 0.0)
        if not voiced and self._silence_ms == self.config.pause_ms:
            return SpeechPaused(end_ms, self._speech_bytes)
        if not voiced and self._silence_ms == self.config.transcribe_ms:
            return SpeechLull(end_ms, self._speech_bytes)
        return None

    def flush(self) -> TurnEnded | None:
        """End the stream: a turn in progress ends now."""
        return self._end_turn(0.0) if self._speaking else None

    def reset(self) -> None:
        """Forget any turn in progress (e.g. after barge-in handling)."""
        self._speaking = False
        self.carried_ms = 0.0
        self._utterance = bytearray()
        self._window.clear()
        self._pre_roll.clear()
        self._silence_ms = 0.0

    async def events(self, frames: AsyncIterable[AudioFrame]) -> AsyncIterator[VADEvent]:
        """The stage as a stream: frames in, events out; a turn in progress ends with the stream."""
        async for frame in frames:
            if (event := self.push(frame)) is not None:
                yield event
        if (event := self.flush()) is not None:
            yield event

    @property
    def silence_ms(self) -> float:
        """Silence since the last voiced frame of the turn in progress."""
        return self._silence_ms

    def _end_turn(self, silence_ms: float) -> TurnEnded:
        event = TurnEnded(
            bytes(self._utterance), self._start_ms, self._last_voiced_end_ms, self._speech_bytes, silence_ms
        )
        self.reset()
        return event
