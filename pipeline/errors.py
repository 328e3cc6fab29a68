"""The pipeline's errors. Vendor exceptions (ctranslate2, onnxruntime, httpx) are converted to these."""


class PipelineError(Exception):
    """Base of pipeline errors."""


class ModelNotFound(PipelineError):
    """A model's package or files are missing, or a checksum does not match."""


class TranscriptionError(PipelineError):
    """The ASR could not transcribe the audio."""


class SynthesisError(PipelineError):
    """The TTS could not speak the text."""


class ASRBusy(TranscriptionError):
    """The ASR's inference lane refused a transcription: its queue was full, or no thread took it in time."""


class TranscriptionGivenUp(ASRBusy):
    """A transcription under way stopped because its owner gave it up (a periodic partial giving way
    to the transcript a pause asked for)."""


class TTSBusy(SynthesisError):
    """The TTS's inference lane refused a synthesis: its queue was full, or no thread took it in time."""


class LLMError(PipelineError):
    """Base of LLM errors."""


class LLMUnavailable(LLMError):
    """The LLM server cannot be reached or answered with an error."""


class LLMTimeout(LLMError):
    """The LLM did not answer in time (connect, first token, or total)."""


class DialogStoreUnavailable(PipelineError):
    """Redis could not be reached to read or write a dialog."""


class LLMConnectError(LLMUnavailable):
    """The LLM server refused or dropped the connection before answering: safe to retry."""


class LLMBusy(LLMError):
    """No slot at the LLM server freed up within the queue deadline (backpressure)."""


class LLMCircuitOpen(LLMError):
    """The circuit breaker is open: the LLM has been failing, calls fail at once for a while."""


class TurnModelError(PipelineError):
    """The end-of-turn model could not judge a turn."""


class TurnModelBusy(TurnModelError):
    """The end-of-turn model's inference lane refused a decision: its queue was full, or no thread took it in time."""


class DialogFenced(PipelineError):
    """A write to a dialog was refused: another replica took the session since this one did."""
