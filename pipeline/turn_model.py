"""The end-of-turn model: how likely the caller has finished, from how their turn sounds.

Smart Turn v3.2 (pipecat's, BSD-2-Clause) is a Whisper-tiny encoder with a
classifier head: 16 kHz mono, the last 8 s of the turn (zero-padded in front when
shorter), as Whisper log-mel features of the waveform normalised to zero mean and
unit variance; out comes the probability that the turn is complete. This follows
pipecat's own preparation (`LocalSmartTurnAnalyzerV3`); faster-whisper's feature
extractor computes the same features (within 1e-5 of pipecat's on JFK's sentence).

A decision takes ~50-110 ms on one core, so it runs in an inference lane of its own
(one thread by default: one decision at a time for the whole process), never queued
behind a transcription. A decision the lane refuses raises TurnModelBusy, and the
turn is left to silence alone.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.config import TurnModelConfig
from pipeline.errors import ModelNotFound, TurnModelBusy, TurnModelError
from pipeline.inference import InferenceConfig, InferenceLane, LaneConfig
from pipeline.model_files import cached_model_file

SAMPLE_RATE = 16000
FOLDER = "smart-turn"


def locate(config: TurnModelConfig) -> Path:
    """The model file, checked against its sha256; ModelNotFound with what to do otherwise."""
    return cached_model_file(FOLDER, config.file_name, config.sha256)


class TurnCompletionModel:
    """Smart Turn loaded once per process; `complete_probability` is safe from any task."""

    def __init__(
        self, config: TurnModelConfig = TurnModelConfig(), lane: LaneConfig = InferenceConfig().turn_model
    ) -> None:
        import onnxruntime  # installed with piper
        from faster_whisper.feature_extractor import FeatureExtractor

        self.config = config
        path = locate(config)
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = config.threads
        options.inter_op_num_threads = 1
        options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
        # Idle spinning threads would take CPU from the ASR and TTS between decisions.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self._session = onnxruntime.InferenceSession(
                str(path), sess_options=options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # onnxruntime raises its own untyped errors for a bad file
            raise ModelNotFound(f"cannot load the end-of-turn model {path}: {exc}") from exc
        self._samples = int(config.max_audio_s * SAMPLE_RATE)
        self._features = FeatureExtractor(
            feature_size=80, sampling_rate=SAMPLE_RATE, hop_length=160, chunk_length=int(config.max_audio_s), n_fft=400
        )
        self.lane = InferenceLane("turn_model", lane, busy=TurnModelBusy)

    def probability_blocking(self, pcm: bytes | np.ndarray) -> float:
        """The probability that the turn in `pcm` (16 kHz mono int16, to now) is complete."""
        samples = np.frombuffer(pcm, np.int16) if isinstance(pcm, bytes) else pcm.astype(np.int16, copy=False)
        x = samples[-self._samples :].astype(np.float32) / 32768.0
        x = np.pad(x, (self._samples - x.size, 0))
        x = (x - x.mean()) / np.sqrt(x.var() + 1e-7)
        # faster-whisper drops the last frame, like Whisper: 8 s give exactly the 800 frames the model reads.
        features = self._features(x, padding=0)[:, : self._samples // 160].astype(np.float32)
        try:
            logits = self._session.run(None, {"input_features": features[np.newaxis]})[0]
        except Exception as exc:  # onnxruntime's errors are untyped
            raise TurnModelError(f"end-of-turn model failed: {exc}") from exc
        return float(np.asarray(logits).reshape(-1)[0])

    async def complete_probability(self, pcm: bytes) -> float:
        """`probability_blocking` in the model's own lane (TurnModelBusy when it refuses)."""
        return await self.lane.run(self.probability_blocking, pcm)

    def is_complete(self, probability: float) -> bool:
        return probability >= self.config.threshold
