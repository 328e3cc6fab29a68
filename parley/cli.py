"""The `parley` command: transcribe, say, ask, call, bench, serve, cluster.

Bad input (a missing, empty or non-audio file) is one line on stderr and exit
code 2; a failing service is one line and exit code 1; never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import sys
from collections.abc import Sequence

from media.errors import MediaError
from parley.errors import CallFailed, ParleyError
from parley.blas_threads import limit_blas_threads
from parley.settings import Settings, load_settings
from pipeline.errors import PipelineError

EXIT_FAILURE = 1
EXIT_BAD_INPUT = 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="parley", description="A real-time, fully local voice assistant.")
    commands = parser.add_subparsers(dest="command", required=True)

    transcribe = commands.add_parser("transcribe", help="print the transcript of an audio file")
    transcribe.add_argument("file", help="wav, flac, mp3 or anything PyAV decodes, at any sample rate")

    say = commands.add_parser("say", help="speak TEXT into a WAV file")
    say.add_argument("text")
    say.add_argument("--out", required=True, help="the WAV file to write")
    say.add_argument(
        "--pause", type=float, default=0.8,
        help="seconds of silence at each | in TEXT, as a caller stops mid-sentence (default 0.8)",
    )

    ask = commands.add_parser("ask", help="print the LLM's streamed answer to TEXT")
    ask.add_argument("text")

    call = commands.add_parser("call", help="call the server and talk with audio files, like a browser")
    call.add_argument("files", nargs="+", metavar="FILE", help="said one after another in one session")
    call.add_argument("--server", default="http://127.0.0.1:8000")
    call.add_argument("--out", default="call-out", help="directory for reply-N.wav (default: call-out)")
    call.add_argument("--json", dest="report", help="write the report here (default: print it)")
    call.add_argument("--reply-timeout", type=float, default=15.0, help="seconds to wait for a reply to start")
    call.add_argument(
        "--barge-in-after", type=float, help="start each next file this many seconds into the bot's reply"
    )
    call.add_argument(
        "--jitter-buffer", type=_jitter_packets, default=1, metavar="PACKETS",
        help="received packets held while an earlier one is missing (0-15; default 1; 0: aiortc's own buffer)",
    )
    call.add_argument("--loss", type=float, default=0.0, help="drop each RTP packet sent with this probability (0-1)")
    call.add_argument("--jitter-ms", type=float, default=0.0, help="delay each RTP packet sent by a random 0..J ms")
    call.add_argument("--seed", type=int, help="the loss and jitter's random seed (default: random)")
    call.add_argument("--codec", choices=["opus", "PCMU", "PCMA"], help="offer only this audio codec")
    call.add_argument(
        "--wait-in-line", type=float, default=0.0, metavar="SECONDS",
        help="every line busy: wait in the service's line up to this long, as the page does (default 0: refused at once)",
    )

    bench = commands.add_parser("bench", help="benchmarks; results go to bench/results/")
    bench_kinds = bench.add_subparsers(dest="bench", required=True)
    bench_call = bench_kinds.add_parser("call", help="voice-to-voice latency over calls one after another")
    bench_call.add_argument("--calls", type=int, default=10)
    bench_call.add_argument("--server", help="an already running server (default: start one)")
    bench_call.add_argument(
        "--compare", action="append", metavar="KEY=VALUE",
        help="also run the calls against a server with this environment setting, e.g. PARLEY_LLM_SERVER_THREADS=2"
        " (several: separated by spaces, in one argument)",
    )
    bench_call.add_argument(
        "--server-logs", metavar="DIR", help="write each variant's server log here (variant-N.log, N as given)"
    )
    bench_call.add_argument(
        "--speech", choices=("speakers", "requests"), default="speakers",
        help="what each call says: the two real speakers of ../shared/audio, one sentence each (default), or four"
        " telephone requests in a row, the bot's own voice (a small LLM refuses them alike: its copies re-asked)",
    )
    bench_failover = bench_kinds.add_parser(
        "failover", help="calls through a 3-replica cluster, each call's replica killed at a random moment"
    )
    bench_failover.add_argument("--calls", type=int, default=10)
    bench_failover.add_argument("--seed", type=int, default=1, help="the kill moments' random seed")
    bench_failover.add_argument("--json", help="also write the figures here")
    bench_fuzz = bench_kinds.add_parser(
        "fuzz", help="fuzzed protocol messages against a real server: dead sockets, tracebacks, internal errors"
    )
    bench_fuzz.add_argument("--examples", type=int, default=10_000, help="examples of one to four frames (default 10000)")
    bench_fuzz.add_argument("--seed", type=int, default=1, help="hypothesis's seed: the same examples every run")
    bench_fuzz.add_argument("--sockets", type=int, default=3, help="long-lived sockets the examples share (default 3)")
    bench_fuzz.add_argument("--json", help="also write the figures here")
    bench_network = bench_kinds.add_parser(
        "network", help="calls over a lossy, jittery path (WER, voice-to-voice); a silent call behind a NAT"
    )
    bench_network.add_argument("mode", choices=["loss", "nat", "all"])
    bench_network.add_argument("--calls", type=int, default=8, help="loss: calls per variant (default 8)")
    bench_network.add_argument("--loss", type=float, default=0.05, help="loss: RTP packets dropped (default 0.05)")
    bench_network.add_argument("--jitter-ms", type=float, default=40.0, help="loss: random delay up to (default 40)")
    bench_network.add_argument("--seed", type=int, default=1, help="loss: the first call's random seed")
    bench_network.add_argument(
        "--jitter-buffer", type=_jitter_packets, metavar="PACKETS",
        help="loss: the server's [media] jitter_buffer_packets (default: models.toml's; 0: aiortc's own buffer)",
    )
    bench_network.add_argument("--idle-s", type=float, default=60.0, help="nat: idle flows dropped after (default 60)")
    bench_network.add_argument("--minutes", type=float, default=3.0, help="nat: how long the call is silent")
    bench_media = bench_kinds.add_parser("media", help="what a connected, silent call costs the server")
    bench_media.add_argument("--calls", type=int, default=4, help="silent calls connected at once (default 4)")
    bench_media.add_argument("--window-s", type=float, default=30.0, help="seconds of CPU time read (default 30)")
    bench_media.add_argument("--settle-s", type=float, default=5.0, help="seconds let pass before each reading")
    bench_media.add_argument("--variants", help="comma-separated (default all): aiortc_encodes, parley_encodes, loop_decodes, caller_dtx, bot_dtx")
    bench_media.add_argument("--json", help="also write the figures here")
    bench_barge = bench_kinds.add_parser("barge-in", help="how soon the bot falls silent when talked over")
    bench_barge.add_argument("--calls", type=int, default=10)
    bench_asr = bench_kinds.add_parser("asr", help="ASR window sized per utterance against the fixed 30 s")
    bench_asr.add_argument("--repeats", type=int, default=5)
    bench_llm = bench_kinds.add_parser("llm", help="LLM pool throughput: sequential, concurrent, prompts")
    bench_llm.add_argument("--json", help="also write the figures here")
    bench_quality = bench_kinds.add_parser(
        "quality", help="answers right (bench/quality/questions.toml) and speed, per LLM and system prompt"
    )
    bench_quality.add_argument("--models", help="comma-separated (default all): smollm2-135m, gemma3-270m")
    bench_quality.add_argument("--prompts", help="comma-separated (default all): default, bench/quality/prompts.toml's")
    bench_quality.add_argument("--json", help="also write the figures here")
    bench_long = bench_kinds.add_parser(
        "long-call", help="one call of many turns: voice-to-voice, first token and prompt tokens per turn index"
    )
    bench_long.add_argument("--turns", type=int, default=30)
    bench_long.add_argument("--variants", help="comma-separated (default all): sliding, sliding_reuse, stable, stable_reuse")
    bench_turns = bench_kinds.add_parser(
        "turns", help="turn-taking: silence alone against the end-of-turn model, with mid-sentence pauses"
    )
    bench_turns.add_argument(
        "--sentences", type=int, default=12, choices=range(1, 13), metavar="1-12",
        help="telephone sentences to say, whole and with each pause (default all 12)",
    )
    bench_turns.add_argument(
        "--variants", help="comma-separated (default all): silence_500ms, model, ... (parley/bench/turns.py VARIANTS)"
    )
    bench_turns.add_argument(
        "--repeat", type=int, default=1, choices=range(1, 11), metavar="1-10",
        help="say every file this many times, for more samples (default 1)",
    )
    bench_pipecat = bench_kinds.add_parser(
        "pipecat", help="Parley against pipecat 1.14 on the same models, clips and machine (pipecat in a venv of its own)"
    )
    bench_pipecat.add_argument(
        "--sentences", type=int, default=6, choices=range(1, 13), metavar="1-12",
        help="telephone sentences to say (with the two real speakers), default 6",
    )
    bench_pipecat.add_argument("--rounds", type=int, default=2, help="times each file is said (default 2)")
    bench_pipecat.add_argument("--server-logs", help="keep the logs here: Parley's server, the pipecat bot and its llama-server")

    bench_load = bench_kinds.add_parser(
        "load", help="many calls at once over real WebRTC: ramp (capacity), spike (27x arrivals), soak (leaks)"
    )
    bench_load.add_argument("mode", choices=["ramp", "spike", "soak", "line", "all"])
    bench_load.add_argument("--json", help="also write the load document here")
    bench_load.add_argument("--steps", default="1,2,3,4,6,8", help="ramp: calls at once, per step")
    bench_load.add_argument("--sentences", type=int, default=3, help="ramp: sentences each call says")
    bench_load.add_argument(
        "--variants", default="full,no_partials,ladder",
        help="ramp: rungs of the shedding ladder applied (comma-separated from full, no_partials, ladder,"
        " no_drafts, or another of parley/bench/load.py's RAMP_VARIANTS); the servers run side by side and"
        " take each step in turn; the capacity reported is ladder's",
    )
    bench_load.add_argument(
        "--server-logs", metavar="DIR", help="ramp: write each variant's server log here (ramp-VARIANT.log)"
    )
    bench_load.add_argument("--max-calls", type=int, help="spike, line: the server's max_calls (default: models.toml; line: 2)")
    bench_load.add_argument("--base-rate", type=float, default=0.05, help="spike: calls arriving a second before and after")
    bench_load.add_argument("--before-s", type=float, default=40.0, help="spike: seconds at the base rate before it")
    bench_load.add_argument("--spike-s", type=float, default=10.0, help="spike: seconds at 27x the rate")
    bench_load.add_argument("--after-s", type=float, default=50.0, help="spike: seconds at the base rate after it")
    bench_load.add_argument(
        "--settle-s", type=float, default=15.0, help="spike: turns this long after it still count as during it"
    )
    bench_load.add_argument("--text-base", type=int, default=100, help="spike: text sessions arriving in the first 10 s")
    bench_load.add_argument("--text-hold-s", type=float, default=20.0, help="spike: how long each text session stays")
    bench_load.add_argument("--calls", type=int, default=2, help="soak: calls talking throughout")
    bench_load.add_argument("--callers", type=int, default=10, help="line: callers arriving at the full server")
    bench_load.add_argument("--gap-s", type=float, default=0.5, help="line: seconds between callers arriving")
    bench_load.add_argument(
        "--line-variants", default="line,backoff",
        help="line: line (wait in the service's line) and/or backoff (the page's retries without a place)",
    )
    bench_load.add_argument("--minutes", type=float, default=30.0, help="soak: how long")

    serve = commands.add_parser("serve", help="run the server")
    serve.add_argument("--host", help="default: [server] host in models.toml")
    serve.add_argument("--port", type=int, help="default: [server] port in models.toml")
    serve.add_argument(
        "--log-transcripts", action="store_true", help="put what callers say in the log (debugging; [turns] log_transcripts)"
    )
    serve.add_argument("--ssl-certfile", help="serve https:// and wss:// with this certificate (PEM; with --ssl-keyfile)")
    serve.add_argument("--ssl-keyfile", help="the certificate's private key (PEM)")

    cluster = commands.add_parser("cluster", help="Redis, one LLM, N replicas and haproxy in front; Ctrl-C stops all")
    cluster.add_argument("--replicas", type=int, default=3, help="`parley serve` processes (default 3)")
    cluster.add_argument("--port", type=int, default=8000, help="haproxy's frontend port (default 8000)")
    return parser


async def _transcribe(settings: Settings, file: str) -> None:
    from media.audio_file import read_audio
    from pipeline.asr import Transcriber

    samples = read_audio(file, 16000)
    transcript = await Transcriber(settings.asr).transcribe(samples)
    print(transcript.text)


async def _say(settings: Settings, text: str, out: str, pause_s: float) -> None:
    from media.audio_file import write_wav
    from parley.paused_speech import PAUSE_MARK, PausedSpeech
    from pipeline.tts import Synthesizer

    if not text.strip():
        raise ValueError("nothing to say: TEXT is empty")
    if PAUSE_MARK in text.split():
        if not 0 < pause_s <= 30:
            raise ValueError(f"--pause must be more than 0 and at most 30 seconds, not {pause_s}")
        speech = PausedSpeech(settings.tts)
        write_wav(out, speech.say(text, pause_s), speech.sample_rate)
        return
    # Without piper's sampling noise: the same text makes the same caller every time.
    synthesizer = Synthesizer(settings.tts.without_noise())
    write_wav(out, await synthesizer.synthesize(text), synthesizer.sample_rate)


async def _ask(settings: Settings, text: str) -> None:
    from dataclasses import replace

    from parley.runtime import services
    from pipeline.llm_pool import LLMPool, PoolConfig

    if not text.strip():
        raise ValueError("nothing to ask: TEXT is empty")
    # One question needs one llama-server, and the pool reads an [llm] base_url listing several.
    settings = replace(settings, llm_server=replace(settings.llm_server, instances=1))
    async with services(settings, redis=False) as running:
        # No retry: an unreachable server is said in one line at once.
        async with LLMPool(running.settings.llm, PoolConfig(retries=0)) as pool:
            async for delta in pool.stream_chat(pool.with_system_prompt([{"role": "user", "content": text}])):
                print(delta, end="", flush=True)
    print()


def _jitter_packets(value: str) -> int:
    if not value.isdigit() or not 0 <= int(value) <= 15:
        raise argparse.ArgumentTypeError(f"must be a whole number from 0 to 15, not {value!r}")
    return int(value)


async def _call(args: argparse.Namespace) -> None:
    import json
    from pathlib import Path

    from parley.call_client import run_call
    from parley.impairment import Impairment

    impairment = Impairment(loss=args.loss, jitter_ms=args.jitter_ms, seed=args.seed)
    report = await run_call(
        args.server,
        args.files,
        out_dir=Path(args.out),
        reply_timeout_s=args.reply_timeout,
        barge_in_after_s=args.barge_in_after,
        jitter_buffer_packets=args.jitter_buffer,
        impairment=impairment,
        codecs=(args.codec,) if args.codec else (),
        line_patience_s=args.wait_in_line,
    )
    text = json.dumps(report, indent=2)
    if args.report:
        Path(args.report).write_text(text + "\n")
    else:
        print(text)


def _serve(settings: Settings, host: str | None, port: int | None, tls: tuple[str, str] | None = None) -> None:
    """tls: (certificate, key) PEM files, to serve https:// and wss:// without a proxy in front."""
    import uvicorn

    from signaling.access_log import drop_query_strings
    from signaling.app import create_app
    from signaling.drain import DrainingServer

    if settings.turns.end_of_turn == "model":
        from pipeline.turn_model import locate

        locate(settings.turn_model)  # a missing or damaged model: one line now, not a traceback from the app
    signaling = settings.signaling
    app = create_app(settings)
    config = uvicorn.Config(
        app,
        host=host or settings.server.host,
        port=port or settings.server.port,
        log_level="info",
        # Protocol-level keepalive and the message size limit are the WebSocket server's job.
        # The sans-I/O implementation closes the TCP connection as soon as a pong is overdue; the
        # legacy one waits out a 10 s closing handshake with a peer that is already gone.
        ws="websockets-sansio",
        ws_ping_interval=signaling.ping_interval_s,
        ws_ping_timeout=signaling.pong_timeout_s,
        ws_max_size=signaling.max_message_bytes,
        timeout_graceful_shutdown=10,
        # The client address (rate limits, per-address caps) is X-Forwarded-For's only from these.
        forwarded_allow_ips=settings.server.forwarded_allow_ips,
        ssl_certfile=tls[0] if tls else None,
        ssl_keyfile=tls[1] if tls else None,
    )
    drop_query_strings()  # after uvicorn.Config, which sets up uvicorn's logging
    # SIGTERM drains (signaling.drain): calls finish, clients are told to come back elsewhere.
    DrainingServer(config, app=app, drain_timeout_s=settings.server.drain_timeout_s).run()


def _tls_files(certfile: str | None, keyfile: str | None) -> tuple[str, str] | None:
    if certfile is None and keyfile is None:
        return None
    if certfile is None or keyfile is None:
        raise ValueError("--ssl-certfile and --ssl-keyfile go together")
    from pathlib import Path

    for path in (certfile, keyfile):
        if not Path(path).is_file():
            raise ValueError(f"no such file: {path}")
    return certfile, keyfile


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.command == "serve" else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        settings = load_settings()
        limit_blas_threads(settings.server.blas_threads)
        if args.command == "transcribe":
            asyncio.run(_transcribe(settings, args.file))
        elif args.command == "say":
            asyncio.run(_say(settings, args.text, args.out, args.pause))
        elif args.command == "ask":
            asyncio.run(_ask(settings, args.text))
        elif args.command == "call":
            asyncio.run(_call(args))
        elif args.command == "bench":
            from parley.bench import run_bench

            asyncio.run(run_bench(args))
        elif args.command == "serve":
            if args.log_transcripts:
                settings = dataclasses.replace(settings, turns=dataclasses.replace(settings.turns, log_transcripts=True))
            _serve(settings, args.host, args.port, _tls_files(args.ssl_certfile, args.ssl_keyfile))
        elif args.command == "cluster":
            from parley.services.cluster import ClusterConfig, run_cluster
            from parley.services.haproxy import BalancerConfig

            config = ClusterConfig(replicas=args.replicas, balancer=BalancerConfig(port=args.port))
            asyncio.run(run_cluster(config, settings=settings))
    except (MediaError, ValueError, OSError) as exc:
        print(f"parley {args.command}: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except (ParleyError, PipelineError, CallFailed) as exc:
        print(f"parley {args.command}: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
