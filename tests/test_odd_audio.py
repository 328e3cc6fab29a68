"""Odd audio from the caller: stereo, 8 to 48 kHz, G.711 offers, clipping, DC offset, a long monologue.

Each is a real call to a server of this module's own: the speech must be understood
(a final transcript close to the reference), answered, and leave no traceback in the
server's log.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import numpy as np
import pytest

from media.audio_file import read_audio, read_audio_channels, write_wav
from parley.call_client import CallClient, TurnReport
from parley.microphone import MicrophoneFormat
from tests.conftest import own_server
from tests.speech import JFK, JFK_TEXT, STEREO_TEXT, monologue, stereo_sentence, wer

pytestmark = pytest.mark.slow


class LoggedServer:
    """A server's URL and its log, read one call at a time."""

    def __init__(self, url: str, log: Path) -> None:
        self.url = url
        self.log = log
        self._read_to = 0

    def new_log(self) -> str:
        """The log written since the last call of this method."""
        text = self.log.read_text(errors="replace")
        new, self._read_to = text[self._read_to :], len(text)
        return new


@pytest.fixture(scope="module")
async def odd_server(shared_redis, proxy, tmp_path_factory):
    folder = tmp_path_factory.mktemp("odd-audio-server")
    async with own_server(shared_redis.url, proxy.base_url, folder) as url:
        yield LoggedServer(url, folder / "server.log")


async def say(server: LoggedServer, path: Path, out: Path, **client: object) -> TurnReport:
    """One call, one file said; the turn's report. The server logged no traceback meanwhile."""
    server.new_log()
    async with CallClient(server.url, **client) as call:
        report, _ = await call.talk(str(path), out_dir=out, index=1)
    assert "Traceback" not in server.new_log()
    print(f"{path.name}: {report.transcript!r}")
    return report


def finals_by_turn(messages: list[dict]) -> dict[str, str | None]:
    """Each turn's last final transcript (None while it has none), in the order the turns began."""
    transcripts = [m for m in messages if m["type"] == "transcript"]
    finals = {m["turn_id"]: m["text"] for m in transcripts if m["final"]}
    return {turn_id: finals.get(turn_id) for turn_id in dict.fromkeys(m["turn_id"] for m in transcripts)}


async def words_of_the_call(call: CallClient, timeout_s: float = 30.0) -> str:
    """Every turn's final transcript, in the order the turns began, once each turn begun has one.

    Over G.711 the end-of-turn judgement may end JFK's turn at his 1.3 s pause after "my fellow
    Americans" (Whisper leaves out the comma that marks it unfinished on narrowband audio), and
    the rest is a turn of its own: the words are all there, in two turns.
    """
    deadline = time.monotonic() + timeout_s
    while None in (finals := finals_by_turn([m for _, m in call.messages])).values():
        assert time.monotonic() < deadline, ("a turn begun was never transcribed whole", finals)
        await asyncio.sleep(0.1)
    return " ".join(finals.values())


def jfk_at(rate: int) -> np.ndarray:
    return read_audio(JFK, rate)


@pytest.mark.parametrize("rate", [8000, 16000, 44100, 48000])
async def test_speech_at_any_common_rate_is_understood(odd_server, tmp_path, rate):
    path = tmp_path / f"jfk-{rate}.wav"
    write_wav(path, jfk_at(rate), rate)
    report = await say(odd_server, path, tmp_path, microphone=MicrophoneFormat(rate=rate, channels=1))
    # Speech at 8 kHz has lost everything above 4 kHz (a telephone's band): it is heard a little worse.
    assert wer(JFK_TEXT, report.transcript) <= (0.2 if rate == 8000 else 0.1), report.transcript
    assert report.reply_text


async def test_a_stereo_recording_is_understood(odd_server, tmp_path):
    # JFK as recorded: 44.1 kHz stereo, sent in stereo.
    report = await say(odd_server, JFK, tmp_path, microphone=MicrophoneFormat(rate=44100, channels=2))
    assert wer(JFK_TEXT, report.transcript) <= 0.1, report.transcript
    assert report.reply_text


async def test_stereo_with_the_speaker_on_one_channel_only_is_understood(odd_server, tmp_path):
    speech = stereo_sentence(0)
    lead = np.zeros(4800, np.int16)
    left = np.concatenate([lead, speech, np.zeros(16000, np.int16)])
    path = tmp_path / "left-only.wav"
    write_wav(path, np.stack([left, np.zeros_like(left)], axis=1), 16000, channels=2)
    assert not read_audio_channels(path, 16000, 2)[:, 1].any()  # the right channel is silent
    report = await say(odd_server, path, tmp_path, microphone=MicrophoneFormat(rate=48000, channels=2))
    assert wer(STEREO_TEXT[0], report.transcript) <= 0.2, report.transcript
    assert report.reply_text


@pytest.mark.parametrize("codec", ["PCMU", "PCMA"])
async def test_an_offer_of_g711_only_is_answered_with_it_and_understood(odd_server, tmp_path, codec):
    server = odd_server
    server.new_log()
    async with CallClient(server.url, codecs=(codec,)) as call:
        report, _ = await call.talk(str(JFK), out_dir=tmp_path, index=1)
        answer = next(m for _, m in call.messages if m["type"] == "answer")
        words = await words_of_the_call(call)
    assert "Traceback" not in server.new_log()
    rtpmaps = [line for line in answer["sdp"].splitlines() if line.startswith("a=rtpmap:")]
    assert rtpmaps and all(f" {codec}/8000" in line for line in rtpmaps), rtpmaps
    # 0.25, not 0.2: when the turn is cut at the pause, Whisper hears the 2 s preface on its own,
    # narrowband, as "and so am i fell in america" (5 errors of JFK's 22 words).
    assert wer(JFK_TEXT, words) <= 0.25, words
    assert report.reply_text
    # The bot's voice came back over G.711 too, and can be heard.
    reply = read_audio(report.reply_audio, 16000)
    assert np.abs(reply).max() > 3000


async def test_clipped_speech_is_understood(odd_server, tmp_path):
    loud = np.clip(jfk_at(48000).astype(np.int32) * 10, -32768, 32767).astype(np.int16)  # +20 dB, clipped
    assert np.mean((loud == 32767) | (loud == -32768)) > 0.05  # a twentieth of the samples or more
    path = tmp_path / "clipped.wav"
    write_wav(path, loud, 48000)
    report = await say(odd_server, path, tmp_path)
    assert wer(JFK_TEXT, report.transcript) <= 0.15, report.transcript
    assert report.reply_text


@pytest.mark.parametrize("codec", ["opus", "PCMU"])
async def test_speech_on_a_dc_offset_is_understood_and_its_silence_ends_the_turn(odd_server, tmp_path, codec):
    # A quarter of full scale of DC under the speech and the silence around it (a cheap microphone's
    # bias). Opus filters DC out at the encoder; G.711 carries it to the server.
    speech = jfk_at(48000).astype(np.int32) + 8000
    path = tmp_path / "dc.wav"
    write_wav(path, np.clip(speech, -32768, 32767).astype(np.int16), 48000)
    report = await say(odd_server, path, tmp_path, codecs=(codec,))
    assert wer(JFK_TEXT, report.transcript) <= 0.2, report.transcript
    assert report.reply_text
    assert report.server_turns == 1


async def test_a_60_second_monologue_is_cut_into_turns_and_answered(odd_server, tmp_path):
    speech, text = monologue(60)
    path = tmp_path / "monologue.wav"
    write_wav(path, np.concatenate([np.zeros(4800, np.int16), speech, np.zeros(16000, np.int16)]), 16000)
    short = tmp_path / "short.wav"
    write_wav(short, np.concatenate([np.zeros(4800, np.int16), stereo_sentence(1), np.zeros(16000, np.int16)]), 16000)
    odd_server.new_log()
    async with CallClient(odd_server.url, reply_timeout_s=30) as call:
        await call.talk(str(path), out_dir=tmp_path, index=1)
        # The last turn is the last to begin: a turn cut for its length is transcribed on its own
        # while the next one runs, and its final transcript may come after that one's.
        last = list(finals_by_turn([m for _, m in call.messages]))[-1]
        deadline = time.monotonic() + 120
        while not any(m["type"] == "reply" and m.get("done") and m["turn_id"] == last for _, m in call.messages):
            assert time.monotonic() < deadline, (
                "the monologue's last turn was never answered",
                [(m["type"], m.get("turn_id"), m.get("final"), m.get("done"), m.get("code")) for _, m in call.messages
                 if m["type"] in ("transcript", "reply", "error") and (m["type"] != "transcript" or m["final"])
                 and (m["type"] != "reply" or m.get("done"))],
            )
            await asyncio.sleep(0.2)
        monologue_messages = [m for _, m in call.messages]
        # The call goes on: a short sentence after it is heard and answered.
        after, _ = await call.talk(str(short), out_dir=tmp_path, index=2)
    assert "Traceback" not in odd_server.new_log()
    # Several turns (each at most [vad] max_turn_ms, 25 s, of speech), each with the words of its
    # stretch of the monologue: together they hold it all. A turn lost would cost a third of the
    # words (WER >= 0.33); Whisper tiny's own slips ("asked not" for "ask not") and a few words
    # at each cut came to 0.26 once in a full run (other tests' servers busy), under 0.25 alone.
    turns = {turn_id: text for turn_id, text in finals_by_turn(monologue_messages).items() if text is not None}
    assert len(turns) >= 3, turns
    assert wer(text, " ".join(turns.values())) <= 0.3, turns
    assert wer(STEREO_TEXT[1], after.transcript) <= 0.2 and after.reply_text, after
