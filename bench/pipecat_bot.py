"""The reference bot of `parley bench pipecat`: pipecat 1.14 with Parley's three models.

This file runs under the benchmark's own virtual environment (pipecat-ai and its
dependencies, kept apart from Parley's), never under Parley's. It is pipecat as its
documentation sets it up: SmallWebRTC transport (aiortc), Silero VAD with pipecat's
default turn strategy (Smart Turn v3, the end-of-turn model Parley uses too),
faster-whisper, an OpenAI-compatible LLM, piper. Only the models and the reply's
sampling are Parley's, so the comparison is of the two stacks, not of their models.

Usage (the benchmark starts it): python pipecat_bot.py CONFIG.json
CONFIG: {"port", "llm_url", "llm_model", "system_prompt", "max_tokens", "temperature",
"seed", "asr_model_dir", "voice", "voice_dir"}. It serves POST /api/offer (pipecat's
SmallWebRTC signaling: {"sdp", "type"} in, the answer out) and GET /ready.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import uvicorn
from fastapi import BackgroundTasks, FastAPI
from pipecat.audio.vad.silero import SileroVADAnalyzer
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.runner import PipelineRunner
from pipecat.pipeline.task import PipelineParams, PipelineTask
from pipecat.processors.aggregators.llm_context import LLMContext
from pipecat.processors.aggregators.llm_response_universal import (
    LLMContextAggregatorPair,
    LLMUserAggregatorParams,
)
from pipecat.services.openai.llm import OpenAILLMService
from pipecat.services.piper.tts import PiperTTSService
from pipecat.services.whisper.stt import WhisperSTTService
from pipecat.transports.base_transport import TransportParams
from pipecat.transports.smallwebrtc.request_handler import SmallWebRTCRequest, SmallWebRTCRequestHandler
from pipecat.transports.smallwebrtc.transport import SmallWebRTCTransport

CONFIG = json.loads(Path(sys.argv[1]).read_text())
app = FastAPI()
handler = SmallWebRTCRequestHandler()


async def run_bot(connection) -> None:
    """One call, until the peer connection closes."""
    transport = SmallWebRTCTransport(
        webrtc_connection=connection,
        params=TransportParams(audio_in_enabled=True, audio_out_enabled=True),
    )
    stt = WhisperSTTService(
        settings=WhisperSTTService.Settings(model=CONFIG["asr_model_dir"]), device="cpu", compute_type="int8"
    )
    llm = OpenAILLMService(
        base_url=CONFIG["llm_url"],
        api_key="none",
        settings=OpenAILLMService.Settings(
            model=CONFIG["llm_model"],
            system_instruction=CONFIG["system_prompt"],
            max_tokens=CONFIG["max_tokens"],
            temperature=CONFIG["temperature"],
            seed=CONFIG["seed"],
        ),
    )
    tts = PiperTTSService(
        settings=PiperTTSService.Settings(voice=CONFIG["voice"]), download_dir=Path(CONFIG["voice_dir"])
    )
    context = LLMContext()
    user, assistant = LLMContextAggregatorPair(
        context, user_params=LLMUserAggregatorParams(vad_analyzer=SileroVADAnalyzer())
    )
    pipeline = Pipeline([transport.input(), stt, user, llm, tts, transport.output(), assistant])
    task = PipelineTask(pipeline, params=PipelineParams(enable_metrics=True))

    @transport.event_handler("on_client_disconnected")
    async def on_client_disconnected(transport, client) -> None:
        await task.cancel()

    await PipelineRunner(handle_sigint=False).run(task)


@app.post("/api/offer")
async def offer(request: dict, background_tasks: BackgroundTasks):
    async def connected(connection) -> None:
        background_tasks.add_task(run_bot, connection)

    return await handler.handle_web_request(SmallWebRTCRequest.from_dict(request), connected)


@app.get("/ready")
async def ready() -> dict[str, bool]:
    return {"ready": True}


if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(CONFIG["port"]), log_level="warning")
