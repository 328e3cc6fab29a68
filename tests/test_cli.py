"""The `parley` command as a user runs it: a real process, real models, real exit codes."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from media.audio_file import read_audio
from tests.speech import JFK, JFK_TEXT, wer

PARLEY = [sys.executable, "-m", "parley.cli"]


def parley(*args: str, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*PARLEY, *args], capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})}
    )


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: None, "no such file"),
        (lambda p: p.write_bytes(b""), "the file is empty"),
        (lambda p: p.write_bytes(os.urandom(4096)), "not a readable audio file"),
        (lambda p: p.write_text("just some words\n"), "not a readable audio file"),
    ],
    ids=["missing", "empty", "random-bytes", "text"],
)
def test_bad_input_files_give_one_line_and_exit_2(tmp_path: Path, make, message):
    path = tmp_path / "clip.wav"
    make(path)
    result = parley("transcribe", str(path))
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1 and message in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_transcribe_prints_the_transcript():
    result = parley("transcribe", str(JFK))
    assert result.returncode == 0, result.stderr
    assert wer(JFK_TEXT, result.stdout) <= 0.10


@pytest.mark.slow
def test_say_writes_speech_that_transcribes_back(tmp_path: Path):
    out = tmp_path / "hello.wav"
    result = parley("say", "Good morning. How can I help you today?", "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert read_audio(out).size > 16000
    heard = parley("transcribe", str(out))
    assert wer("Good morning. How can I help you today?", heard.stdout) <= 0.10, heard.stdout


@pytest.mark.slow
def test_say_pauses_at_each_mark_between_the_words_around_it(tmp_path: Path):
    out = tmp_path / "paused.wav"
    text = "Please enter your conference number followed by the | pound key."
    result = parley("say", text, "--pause", "0.8", "--out", str(out))
    assert result.returncode == 0, result.stderr
    samples = read_audio(out)
    quiet = [max(abs(int(x)) for x in samples[i : i + 320]) < 100 for i in range(0, samples.size - 320, 320)]
    longest, run = 0, 0
    for q in quiet:
        run = run + 1 if q else 0
        longest = max(longest, run)
    assert 0.78 <= longest * 0.02 <= 0.9  # the pause, and no word lost into it
    heard = parley("transcribe", str(out)).stdout
    assert wer(text.replace("| ", ""), heard) <= 0.10, heard


@pytest.mark.parametrize("text", ["| starts with a pause", "ends with a pause |"])
def test_a_pause_mark_must_stand_between_words(tmp_path: Path, text):
    result = parley("say", text, "--out", str(tmp_path / "x.wav"))
    assert result.returncode == 2 and "must stand between two words" in result.stderr, result.stderr


def test_say_with_empty_text_is_bad_input(tmp_path: Path):
    result = parley("say", "  ", "--out", str(tmp_path / "x.wav"))
    assert result.returncode == 2 and "nothing to say" in result.stderr


@pytest.mark.slow
def test_ask_streams_an_answer_from_the_embedded_llm(tmp_path: Path):
    result = parley(
        "ask", "Name a colour of the sky.",
        env={"PARLEY_LLM_TEMPERATURE": "0", "PARLEY_LLM_SEED": "1", "PARLEY_SERVER_LOG_DIR": str(tmp_path)},
    )
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.split()) >= 2
    assert (tmp_path / "llama-server.log").exists()


def test_ask_with_an_unreachable_llm_fails_in_one_line():
    result = parley("ask", "hello", env={"PARLEY_LLM_BASE_URL": "http://127.0.0.1:9/v1"})
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and "unreachable" in result.stderr


def test_call_with_an_unreadable_file_or_an_unreachable_server_fails_in_one_line(tmp_path: Path):
    missing = parley("call", str(tmp_path / "nope.wav"))
    assert missing.returncode == 2 and "no such file" in missing.stderr and missing.stderr.count("\n") == 1
    unreachable = parley("call", str(JFK), "--server", "http://127.0.0.1:9")
    assert unreachable.returncode == 1 and "cannot reach" in unreachable.stderr
    assert unreachable.stderr.count("\n") == 1 and "Traceback" not in unreachable.stderr


def test_call_refuses_a_jitter_buffer_aiortc_cannot_have():
    result = parley("call", str(JFK), "--jitter-buffer", "16")
    assert result.returncode == 2
    assert "--jitter-buffer: must be a whole number from 0 to 15, not '16'" in result.stderr
    assert "Traceback" not in result.stderr


async def test_a_server_that_cannot_start_says_why_in_the_error(tmp_path: Path):
    # Benchmarks and tests run `parley serve` as a child: when it exits while starting, the error
    # carries the end of its log, so a failure seen only in CI can be read there.
    from parley.errors import ParleyError
    from parley.server_process import server_process

    log = tmp_path / "server.log"
    with pytest.raises(ParleyError, match=r"(?s)exited with code \d+ while starting.*end_of_turn must be"):
        async with server_process({"PARLEY_TURNS_END_OF_TURN": "bogus"}, log_path=str(log)):
            pass
