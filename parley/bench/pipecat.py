"""`parley bench pipecat`: Parley against pipecat on the same models, clips and machine, in one run.

pipecat 1.14 runs as its documentation sets it up (bench/pipecat_bot.py: SmallWebRTC,
Silero VAD with its default turn strategy, Smart Turn v3, faster-whisper, an
OpenAI-compatible LLM, piper) with Parley's models: Whisper tiny.en, the bundled LLM
on a llama-server of the same settings, the joe voice. It lives in a virtual
environment of its own in the cache, made on the first run (`pip install`
pipecat-ai with the extras the bot needs), so none of its dependencies reach Parley's.

The two stacks take turns on the machine, never at once, and hear the same files: the
telephone sentences of `parley bench turns` (whole, no mid-sentence pause) and the two
real speakers of ../shared/audio, several to a call. Both are heard by the same
measure: from the last 20 ms frame of the file above -40 dBFS to the first received
frame above -40 dBFS (parley.call_client). pipecat sends no events, so its reply is
taken as finished after QUIET_S of silence from it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
from aiortc import RTCPeerConnection, RTCSessionDescription

from media.audio_file import read_audio
from parley.bench.results import BENCH_ENV, ms, percentile, server_log, write_results
from parley.bench.turns import FILES_PER_CALL, make_files, talk_all
from parley.call_client import RATE, Recorder, last_voiced_offset_s, wait_voiced_after
from parley.errors import CallFailed
from parley.microphone import Microphone
from parley.server_process import free_port, server_process
from parley.services.child import ChildProcess

PIPECAT = "pipecat-ai[webrtc,whisper,openai,piper]==1.14.0"
# What the bot serves its signaling with (pipecat's examples use the same).
BOT_SERVER = ("fastapi", "uvicorn")
BOT = Path(__file__).resolve().parents[2] / "bench" / "pipecat_bot.py"
MAX_TOKENS = 40
# pipecat says nothing when its reply ends: this much silence from it after its voice is the end.
QUIET_S = 1.5
REPLY_TIMEOUT_S = 20.0


def pipecat_python() -> Path:
    """The benchmark's pipecat environment's python, made (once) in the cache."""
    from pipeline.model_files import cache_dir

    venv = cache_dir() / "pipecat-1.14.0"
    python = venv / "bin" / "python"
    stamp = venv / ".installed"
    wanted = " ".join((PIPECAT, *BOT_SERVER))
    if stamp.is_file() and stamp.read_text() == wanted:
        return python
    print(f"making {venv} ({PIPECAT}); once", flush=True)
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "-q", PIPECAT, *BOT_SERVER], check=True)
    stamp.write_text(wanted)
    return python


class PipecatCall:
    """One call to the pipecat bot: its SmallWebRTC offer/answer over HTTP, then file after file."""

    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")
        self._pc = RTCPeerConnection()
        self._mic = Microphone()
        self._recorder = Recorder()
        self._tasks: list[asyncio.Task] = []

    async def __aenter__(self) -> PipecatCall:
        pc = self._pc
        pc.addTrack(self._mic)

        @pc.on("track")
        def on_track(track) -> None:
            self._tasks.append(asyncio.create_task(self._recorder.record(track), name="pipecat-recorder"))

        await pc.setLocalDescription(await pc.createOffer())
        async with httpx.AsyncClient(timeout=30) as http:
            response = await http.post(
                f"{self.url}/api/offer", json={"sdp": pc.localDescription.sdp, "type": "offer"}
            )
        if response.status_code != 200:
            raise CallFailed(f"pipecat did not answer the offer: {response.status_code} {response.text[:200]}")
        answer = response.json()
        await pc.setRemoteDescription(RTCSessionDescription(sdp=answer["sdp"], type=answer["type"]))
        deadline = time.monotonic() + 15
        while pc.connectionState != "connected":
            if pc.connectionState == "failed" or time.monotonic() > deadline:
                raise CallFailed(f"WebRTC to pipecat did not connect (state {pc.connectionState})")
            await asyncio.sleep(0.05)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._pc.close()
        for task in self._tasks:
            task.cancel()

    async def talk(self, path: str) -> float | None:
        """Say the file; the voice-to-voice time of the reply in ms (None: no reply)."""
        samples = read_audio(path, RATE)
        await self._mic.play(samples)
        await self._mic.drained()
        speech_end = time.monotonic() - (samples.size / RATE - last_voiced_offset_s(samples, RATE))
        deadline = time.monotonic() + REPLY_TIMEOUT_S
        voiced = await wait_voiced_after(self._recorder, speech_end, REPLY_TIMEOUT_S)
        if voiced is None:
            return None
        while time.monotonic() < deadline:
            last = self._recorder.last_voiced_between(voiced, time.monotonic())
            if last is not None and time.monotonic() - last >= QUIET_S:
                break
            await asyncio.sleep(0.1)
        return round(1000 * (voiced - speech_end), 1)


@contextlib.asynccontextmanager
async def pipecat_bot(python: Path, log_dir: Path) -> AsyncIterator[str]:
    """The pipecat bot with Parley's models, its own llama-server beside it; yields its URL."""
    from parley.services.llm_server import EmbeddedLLMServer
    from parley.settings import load_settings
    from pipeline.model_files import model_dir, package_dir

    settings = load_settings(environ={**os.environ, **BENCH_ENV})
    llm = EmbeddedLLMServer(settings.llm_server, log_dir=log_dir)
    await llm.start()
    try:
        port = free_port()
        config = log_dir / "pipecat-bot.json"
        config.write_text(json.dumps({
            "port": port,
            "llm_url": llm.base_url,
            "llm_model": settings.llm.model,
            "system_prompt": settings.llm.system_prompt,
            "max_tokens": MAX_TOKENS,
            "temperature": settings.llm.temperature,
            "seed": settings.llm.seed,
            "asr_model_dir": str(model_dir(settings.asr.model, settings.asr.source())),
            "voice": settings.tts.voice,
            "voice_dir": str(package_dir(settings.tts.package) / settings.tts.directory),
        }))
        url = f"http://127.0.0.1:{port}"

        async def answers() -> bool:
            with contextlib.suppress(httpx.HTTPError):
                async with httpx.AsyncClient(timeout=2) as http:
                    return (await http.get(f"{url}/ready")).status_code == 200
            return False

        bot = ChildProcess(
            "pipecat-bot", [str(python), str(BOT), str(config)], probe=answers, log_path=log_dir / "pipecat-bot.log",
            ready_timeout_s=120, max_restarts=0, stop_timeout_s=15,
        )
        try:
            await bot.start()
            yield url
        finally:
            await bot.stop()
    finally:
        await llm.stop()


async def _pipecat_turns(url: str, files: list[str]) -> list[dict[str, Any]]:
    reports = []
    for start in range(0, len(files), FILES_PER_CALL):
        async with PipecatCall(url) as call:
            for path in files[start : start + FILES_PER_CALL]:
                v2v = await call.talk(path)
                reports.append({"file": Path(path).name, "voice_to_voice_ms": v2v})
                print(f"  pipecat {Path(path).name}: v2v {v2v} ms", flush=True)
    return reports


async def _parley_turns(url: str, files: list[str], out_dir: Path) -> list[dict[str, Any]]:
    return [{"file": r["file"], "voice_to_voice_ms": r["voice_to_voice_ms"]} for r in await talk_all(url, files, out_dir)]


def _figures(reports: list[dict[str, Any]]) -> dict[str, Any]:
    v2v = [r["voice_to_voice_ms"] for r in reports if r["voice_to_voice_ms"] is not None]
    return {
        "turns": len(reports),
        "answered": len(v2v),
        "voice_to_voice_ms": {"p50": percentile(v2v, 50), "p95": percentile(v2v, 95), "max": max(v2v, default=None)},
    }


async def bench_pipecat(args: argparse.Namespace) -> None:
    """Parley, then pipecat, on the same files; the ratio of their voice-to-voice p50s."""
    python = pipecat_python()
    env = {**BENCH_ENV, "PARLEY_LLM_MAX_TOKENS": str(MAX_TOKENS)}
    results: dict[str, dict[str, Any]] = {}
    details: dict[str, list[dict[str, Any]]] = {}
    with tempfile.TemporaryDirectory(prefix="parley-bench-pipecat-") as tmp:
        files = make_files(Path(tmp), args.sentences)["whole"] * args.rounds
        print(f"parley: {len(files)} turns", flush=True)
        async with server_process(env, log_path=server_log(args.server_logs, "parley")) as url:
            details["parley"] = await _parley_turns(url, files, Path(tmp) / "parley")
        print(f"pipecat: {len(files)} turns", flush=True)
        async with pipecat_bot(python, Path(tmp)) as url:
            details["pipecat"] = await _pipecat_turns(url, files)
        if args.server_logs:
            Path(args.server_logs).mkdir(parents=True, exist_ok=True)
            for name in ("pipecat-bot.log", "llama-server.log"):
                if (Path(tmp) / name).exists():
                    (Path(args.server_logs) / name).write_bytes((Path(tmp) / name).read_bytes())
    for name, reports in details.items():
        results[name] = _figures(reports)
    parley, pipecat = (results[n]["voice_to_voice_ms"] for n in ("parley", "pipecat"))
    speedup = {
        q: round(pipecat[q] / parley[q], 2) if parley[q] and pipecat[q] else None for q in ("p50", "p95")
    }
    when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    document = {
        "benchmark": "pipecat",
        "when": when,
        "settings": {**env, "pipecat": PIPECAT, "files_per_call": FILES_PER_CALL, "machine_cores": os.cpu_count()},
        "variants": results,
        "parley_faster_by": speedup,
        "files": details,
    }
    row = (
        f"| {when} | {results['parley']['answered']}/{results['parley']['turns']} |"
        f" {ms(parley['p50'])} | {ms(parley['p95'])} | {results['pipecat']['answered']}/{results['pipecat']['turns']} |"
        f" {ms(pipecat['p50'])} | {ms(pipecat['p95'])} | {speedup['p50']} | {speedup['p95']} |"
    )
    header = (
        "# Parley against pipecat: same models, clips and machine, one run\n\n"
        "`parley bench pipecat`: pipecat-ai 1.14.0 as its documentation sets it up (SmallWebRTC, Silero VAD,"
        " Smart Turn v3, faster-whisper, OpenAI-compatible LLM, piper; bench/pipecat_bot.py) with Parley's models"
        " (Whisper tiny.en, the bundled LLM on llama-server of the same settings, the joe voice); temperature 0,"
        " seed 42, replies capped at 40 tokens. Files: the telephone sentences of `parley bench turns` and the two"
        " real speakers, four to a call. Voice-to-voice: the last voiced 20 ms the client sent to the first voiced"
        " 20 ms it received, the same measure for both.\n\n"
        "| when | parley answered | parley v2v p50 | p95 | pipecat answered | pipecat v2v p50 | p95 |"
        " parley faster, p50 | p95 |\n"
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |\n"
    )
    write_results("pipecat", document, row, header)
