"""The end-of-turn model on real speech, and what a missing or damaged model file gives."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from media.audio_file import read_audio, write_wav
from pipeline.config import TurnModelConfig
from pipeline.errors import ModelNotFound
from pipeline.turn_model import FOLDER, TurnCompletionModel, locate
from tests.speech import STEREO, stereo_sentence

RATE = 16000


def with_pause(samples: np.ndarray, silence_ms: int = 100) -> np.ndarray:
    """The turn as the model hears it at a pause: a little lead, the speech, the silence so far."""
    lead, tail = np.zeros(RATE * 3 // 10, np.int16), np.zeros(RATE * silence_ms // 1000, np.int16)
    return np.concatenate([lead, samples, tail])


def cut_after(samples: np.ndarray, transcriber, word: str) -> np.ndarray:
    """The speech up to the gap after the first `word`, found by faster-whisper's word timings."""
    segments, _ = transcriber._model.transcribe(samples.astype(np.float32) / 32768, word_timestamps=True, language="en")
    words = [w for s in segments for w in s.words]
    k = next(i for i, w in enumerate(words[:-1]) if w.word.strip(" ,.").lower() == word)
    return samples[: int(RATE * (words[k].end + words[k + 1].start) / 2)]


def to_16k(samples: np.ndarray, rate: int, tmp_path) -> np.ndarray:
    path = tmp_path / "speech.wav"
    write_wav(path, samples, rate)
    return read_audio(path, RATE)


@pytest.mark.slow
def test_a_real_speaker_sounds_finished_at_the_end_and_not_after_the(turn_model, transcriber):
    sentence = stereo_sentence(0)  # "He began a confused complaint against the wizard, who had vanished ..."
    whole = turn_model.probability_blocking(with_pause(sentence))
    cut = turn_model.probability_blocking(with_pause(cut_after(sentence, transcriber, "the")))
    assert turn_model.is_complete(whole), whole
    assert not turn_model.is_complete(cut), cut


@pytest.mark.slow
@pytest.mark.parametrize(
    "text",
    [
        "Please enter your conference number followed by the | pound key.",
        "Can you tell me the opening hours of the | library on Saturday?",
    ],
)
def test_a_sentence_sounds_finished_and_the_same_sentence_cut_after_the_does_not(
    turn_model, paused_speech, tmp_path, text
):
    head, tail = paused_speech.pieces(text)
    whole = to_16k(np.concatenate([head, tail]), paused_speech.sample_rate, tmp_path)
    cut = to_16k(head, paused_speech.sample_rate, tmp_path)
    assert turn_model.is_complete(p := turn_model.probability_blocking(with_pause(whole))), p
    assert not turn_model.is_complete(p := turn_model.probability_blocking(with_pause(cut))), p


@pytest.mark.slow
def test_only_the_last_8_seconds_count_and_any_length_is_taken(turn_model):
    sentence = stereo_sentence(1)
    long_turn = np.concatenate([read_audio(STEREO, RATE, channel=0)] * 3 + [sentence])
    assert turn_model.probability_blocking(with_pause(long_turn)) == pytest.approx(
        turn_model.probability_blocking(with_pause(long_turn)[-8 * RATE :]), abs=1e-6
    )
    assert 0.0 <= turn_model.probability_blocking(np.zeros(10, np.int16)) <= 1.0


def test_a_missing_model_file_says_to_run_make_setup(tmp_path, monkeypatch):
    monkeypatch.setenv("PARLEY_CACHE", str(tmp_path))
    with pytest.raises(ModelNotFound, match=r"smart-turn-v3.2-cpu.onnx is missing \(run `make setup`\)"):
        locate(TurnModelConfig())


def test_a_damaged_model_file_is_refused_before_loading(tmp_path, monkeypatch):
    monkeypatch.setenv("PARLEY_CACHE", str(tmp_path))
    folder = tmp_path / "models" / FOLDER
    folder.mkdir(parents=True)
    (folder / TurnModelConfig().file_name).write_bytes(b"not an onnx model")
    with pytest.raises(ModelNotFound, match="is damaged: sha256 .* expected 2bb02631"):
        TurnCompletionModel(TurnModelConfig())


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["missing", "damaged"])
def test_parley_serve_says_in_one_line_what_is_wrong_with_the_model(tmp_path, damage):
    if damage == "damaged":
        folder = tmp_path / "models" / FOLDER
        folder.mkdir(parents=True)
        (folder / TurnModelConfig().file_name).write_bytes(b"\0" * 1000)
    result = subprocess.run(
        [sys.executable, "-m", "parley.cli", "serve", "--port", "1"],
        env={"PATH": "/usr/bin:/bin", "PARLEY_CACHE": str(tmp_path), "REDIS_URL": "redis://127.0.0.1:1"},
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("parley serve: model file"), result.stderr
    assert ("is missing" if damage == "missing" else "is damaged") in lines[0]
