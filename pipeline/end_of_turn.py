"""When the caller's turn is over: the silence that ends it, decided at each pause.

At a pause (`vad.pause_ms` of silence) two signals are read:
- how the turn sounds: the end-of-turn model's probability that it is complete;
- what was said: the transcript made at the pause, which the reply needs anyway,
  read for a last word that leaves the sentence hanging (pipeline.unfinished_text).

The policy is one pure function of the two (`silence_to_end`): a turn that sounds
complete and does not stop on such a word ends after `vad.end_silence_ms`; any
other turn waits `turns.incomplete_silence_ms`, and the caller can always go on
sooner. Waiting for the transcript costs the reply nothing: it cannot begin
without it. The model hears the pause once the words are in, with the silence
grown meanwhile (`after_words`), and may hear it at once too, beside the
transcription (`at_pause`). Under load (pipeline.shedding) the words may decide
alone: a pause whose transcript ends a sentence ends the turn without the model,
which then hears only the pauses the words leave in doubt. A judgement that fails (the model or the ASR raised)
leaves the turn to silence alone (`turns.unjudged_silence_ms`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from pipeline.asr import Transcript
from pipeline.config import TurnConfig, VADConfig
from pipeline.errors import TurnModelError
from pipeline.turn_model import TurnCompletionModel
from pipeline.unfinished_text import ends_finished, ends_unfinished

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Judgement:
    """What a pause showed, and the silence that ends the turn because of it.

    probability: the model's probability that the turn is complete (None: it failed, or the words
        decided alone).
    unfinished_text: the transcript stops where a sentence cannot end (None: not read, or no
        words to judge).
    end_silence_ms: the silence after the last voiced frame that ends the turn.
    model_ms: how long the model took.
    words: the transcript that was read (None: the words were not read, because the turn did not
        sound finished).
    """

    probability: float | None
    unfinished_text: bool | None
    end_silence_ms: int
    model_ms: float | None = None
    words: str | None = None

    @property
    def by_audio_alone(self) -> bool:
        """The model called the turn unfinished, so its words were not read: worth asking again later."""
        return self.probability is not None and self.words is None

    @property
    def by_words_alone(self) -> bool:
        """The words ended a sentence, and the model did not hear the pause (shed under load)."""
        return self.probability is None and self.words is not None


def silence_to_end(
    probability: float | None, unfinished_text: bool | None, *, threshold: float, vad: VADConfig, turns: TurnConfig
) -> int:
    """The silence that ends a turn, from what its pause showed (the whole policy, pure)."""
    if probability is None:
        return turns.unjudged_silence_ms
    if unfinished_text or probability < threshold:
        return turns.incomplete_silence_ms
    return vad.end_silence_ms


class EndOfTurn:
    """The end-of-turn policy of a process, with its model (None when `end_of_turn` is "silence")."""

    def __init__(self, model: TurnCompletionModel | None, *, vad: VADConfig, turns: TurnConfig) -> None:
        if turns.end_of_turn == "model" and model is None:
            raise ValueError('turns.end_of_turn = "model" needs the end-of-turn model')
        self.model = model if turns.end_of_turn == "model" else None
        self.vad = vad
        self.turns = turns

    @property
    def judges(self) -> bool:
        """Whether pauses are judged at all (False: silence alone ends turns)."""
        return self.model is not None

    @property
    def silence_heard_ms(self) -> int:
        """The most silence after the words the model hears (0 with no model)."""
        return self.model.config.silence_heard_ms if self.model is not None else 0

    def silence_before_judgement(self) -> int:
        """The silence that ends a turn whose pause has not been judged (yet)."""
        return self.turns.incomplete_silence_ms if self.judges else self.turns.unjudged_silence_ms

    async def judge(
        self,
        audio: bytes | Callable[[], bytes],
        transcript: Callable[[], Awaitable[Transcript | None]],
        *,
        at_once: bool = True,
        by_words: bool = False,
    ) -> Judgement:
        """Judge a pause: `audio` is the turn so far (or gives it, as of when the model runs: the
        silence after the words grows while they are transcribed); `transcript()` gives the
        words made at the pause. `at_once`: the model may hear the pause at once, beside the
        transcription (with `at_pause`); False for a pause judged again, whose words are in,
        and for a turn that sheds it under load. `by_words`: the words come first, and if they end
        a sentence the turn ends on them alone, unheard by the model (shed under load)."""
        assert self.model is not None, "a pause is judged only with the model"
        model, config = self.model, self.model.config
        heard = asyncio.ensure_future(transcript())

        def hear() -> Awaitable[float]:
            return model.complete_probability(audio() if callable(audio) else audio)

        try:
            if by_words:
                said = await heard
                if said is not None and ends_finished(said.text, said.language):
                    return Judgement(None, False, self.vad.end_silence_ms, words=said.text)
            started = time.monotonic()
            try:
                # at_pause: heard at once, beside the transcription; a turn that sounds finished
                # then waits only for its words.
                early = await hear() if config.at_pause and at_once and not by_words else None
                if early is not None and (model.is_complete(early) or not config.after_words):
                    probability = early
                else:
                    # The words first (after_words): the draft needs them at once, and the model,
                    # run beside the transcription, slows it down; and the longer silence heard
                    # then makes a finished turn sound finished.
                    if config.after_words:
                        await asyncio.wait([heard])
                        started = time.monotonic()
                    probability = await hear()
            except TurnModelError as exc:
                log.warning("%s; the turn ends on silence alone", exc)
                return Judgement(None, None, self.turns.unjudged_silence_ms)
            model_ms = 1000 * (time.monotonic() - started)
            unfinished, words = None, None
            if model.is_complete(probability):
                # Only a turn that sounds complete needs its words read: the others wait anyway.
                # (Heard after them, it costs the decision nothing.)
                said = await heard
                words = "" if said is None else said.text
                if said is not None:
                    unfinished = ends_unfinished(said.text, said.language)
        finally:
            _forget(heard)  # whatever ended the judgement (cancelled too), nothing waits on for the words
        silence = silence_to_end(
            probability, unfinished, threshold=config.threshold, vad=self.vad, turns=self.turns
        )
        return Judgement(probability, unfinished, silence, model_ms, words)


def _forget(heard: asyncio.Future) -> None:
    """Stop waiting for the words if they are still to come, and let a failure nobody read go
    unsaid (a turn whose words were not needed waits for more silence anyway)."""
    if heard.done() and not heard.cancelled():
        heard.exception()
    heard.cancel()
