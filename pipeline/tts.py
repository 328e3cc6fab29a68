"""Speech synthesis with piper: text in, 22.05 kHz mono 16-bit PCM out, one sentence at a time.

piper splits the text into sentences and synthesises them lazily; each is
produced in the voice's own inference lane and handed over as soon as it is ready, so the
first sentence plays while the next is computed.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from media.frames import level_dbfs
from pipeline.config import TTSConfig
from pipeline.errors import SynthesisError, TTSBusy
from pipeline.inference import InferenceConfig, InferenceLane, LaneConfig, Priority, Urgency
from pipeline.model_files import package_dir

if TYPE_CHECKING:
    import onnxruntime


def _session(model: Path, config: TTSConfig) -> onnxruntime.InferenceSession:
    import onnxruntime  # heavy, and loaded with piper anyway

    options = onnxruntime.SessionOptions()
    options.enable_cpu_mem_arena = config.memory_arena
    if config.threads:
        options.intra_op_num_threads = config.threads
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if config.spin_wait else "0")
    return onnxruntime.InferenceSession(str(model), sess_options=options, providers=["CPUExecutionProvider"])


class Synthesizer:
    """One loaded piper voice; a sentence its inference lane (`lane`) refuses raises TTSBusy."""

    def __init__(self, config: TTSConfig, lane: LaneConfig = InferenceConfig().tts) -> None:
        from piper import PiperConfig, PiperVoice, SynthesisConfig  # heavy import (onnxruntime)

        self.config = config
        folder = package_dir(config.package) / config.directory
        model = folder / f"{config.voice}.onnx"
        try:
            # PiperVoice.load gives no say in onnxruntime's threads, so the voice is put together here.
            voice_config = PiperConfig.from_dict(json.loads(Path(f"{model}.json").read_text()))
            self._voice = PiperVoice(session=_session(model, config), config=voice_config)
        except (OSError, ValueError, KeyError, RuntimeError) as exc:
            raise SynthesisError(f"cannot load voice {config.voice!r} from {folder}: {exc}") from exc
        self._syn_config = SynthesisConfig(
            length_scale=config.length_scale, noise_scale=config.noise_scale, noise_w_scale=config.noise_w_scale
        )
        # Fixed lines (the fallback when the LLM fails, the busy line) are synthesised once at
        # start-up, so they play at once, when the machine is most likely struggling.
        self._phrases: dict[str, bytes] = {}
        self.lane = InferenceLane("tts", lane, busy=TTSBusy)

    @property
    def sample_rate(self) -> int:
        return int(self._voice.config.sample_rate)

    async def prepare(self, *phrases: str) -> None:
        """Synthesise fixed phrases now; `stream` then plays them without synthesis."""
        for phrase in phrases:
            self._phrases[phrase] = b"".join([chunk async for chunk in self._synthesize(phrase)])

    async def stream(
        self, text: str, *, urgency: Callable[[], Priority | Urgency] | None = None
    ) -> AsyncIterator[bytes]:
        """Yield the PCM of each sentence of `text` as soon as it is synthesised.

        `urgency` gives each sentence's priority in the lane as its synthesis is asked for (None:
        waited for). One asked ahead of need that the lane turns away (displaced by work someone
        waits for, or past the lane's deadline) is asked again as waited for: it is never lost.
        """
        if (prepared := self._phrases.get(text)) is not None:
            yield prepared
            return
        async for chunk in self._synthesize(text, urgency):
            yield chunk

    async def _synthesize(
        self, text: str, urgency: Callable[[], Priority | Urgency] | None = None
    ) -> AsyncIterator[bytes]:
        sentences = self._voice.synthesize(text, syn_config=self._syn_config)
        while True:
            priority = urgency() if urgency is not None else Priority.WAITED_FOR
            try:
                chunk = await self.lane.run(self._next_chunk, sentences, priority=priority)
            except TTSBusy:
                if (priority.priority if isinstance(priority, Urgency) else priority) is Priority.WAITED_FOR:
                    raise
                chunk = await self.lane.run(self._next_chunk, sentences)  # it never ran: ask again
            if chunk is None:
                return
            yield chunk if self.config.lead_in_ms < 0 else trim_lead_in(chunk, self.sample_rate, self.config.lead_in_ms)

    async def synthesize(self, text: str) -> bytes:
        """All of `text` as one PCM buffer."""
        return b"".join([chunk async for chunk in self.stream(text)])

    @staticmethod
    def _next_chunk(sentences: Iterator) -> bytes | None:
        try:
            chunk = next(sentences, None)
        except (RuntimeError, ValueError) as exc:
            raise SynthesisError(f"synthesis failed: {exc}") from exc
        return None if chunk is None else chunk.audio_int16_bytes


# A 5 ms window whose level is under this holds no sound anyone hears: piper starts each sentence
# with 30-40 ms of it (about -90 dBFS) before a consonant's onset rises through -60.
_SILENT_DBFS = -60.0
_WINDOW_MS = 5


def trim_lead_in(pcm: bytes, sample_rate: int, keep_ms: int) -> bytes:
    """16-bit PCM with its leading silence cut to `keep_ms`: the caller hears the first sound that
    much sooner (dead air before the reply's first word is pure latency). Silence throughout is
    returned as it is. Only the windows up to the first sound are read (the last may be shorter:
    a sound that ends the audio is still found)."""
    window = sample_rate * _WINDOW_MS // 1000 * 2  # bytes
    if len(pcm) < window:
        return pcm
    for start in range(0, len(pcm) - 1, window):
        if level_dbfs(pcm[start : start + window]) > _SILENT_DBFS:
            return pcm[max(0, start - sample_rate * keep_ms // 1000 * 2) :]
    return pcm
