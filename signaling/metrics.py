"""Prometheus metrics of a replica, served at `/metrics` (docs/metrics.md says what each means).

Counters and histograms are updated where things happen (admission, a turn's metrics
event, a keepalive close, a Redis error); gauges of live state (calls, sessions,
capacity, the LLM pool, the inference lanes, the breaker) are read when Prometheus
scrapes, from the services of the running app. prometheus-client's default collectors
add the process's CPU, memory, file descriptors and the Python GC.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from prometheus_client import REGISTRY, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from pipeline.inference import REASONS, InferenceLane, Priority

# Latency buckets for a voice assistant's stages: 10 ms to 10 s.
_STAGE_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0)
# The stages of a turn's metrics event that are timed (stages_ms keys), as histogram labels.
STAGES = (
    "asr", "llm_first_token", "first_sentence", "tts_first_audio", "end_of_turn_to_first_audio",
    "end_of_turn_silence", "end_of_turn_model",
)

SESSIONS_ACTIVE = Gauge("parley_sessions_active", "WebSocket sessions open on this replica (text or voice)")
CALLS_ACTIVE = Gauge("parley_calls_active", "Voice calls (admitted WebRTC audio) on this replica")
CALLS_WAITING = Gauge(
    "parley_calls_waiting", "Callers in the service's waiting line for a voice call, as this replica last saw it"
)
CAPACITY = Gauge("parley_capacity", "What this replica takes on ([admission]); 0 while draining", ["kind"])
DRAINING = Gauge("parley_draining", "1 while this replica drains (SIGTERM), else 0")
ADMISSIONS = Counter(
    "parley_admissions_total", "Newcomers by outcome: admitted, or refused (replica, cluster, line, draining)",
    ["kind", "outcome"],
)
STAGE_SECONDS = Histogram(
    "parley_stage_seconds", "Per-turn stage latency, as in the metrics event", ["stage"], buckets=_STAGE_BUCKETS
)
PROMPT_TOKENS_READ = Histogram(
    "parley_llm_prompt_tokens_read", "Prompt tokens the LLM server read for a reply (not from its cache)",
    buckets=(8, 16, 32, 64, 128, 256, 512, 1024, 2048),
)
LOOP_LAG = Histogram(
    "parley_event_loop_lag_seconds",
    "How late a timer on the event loop ran (sampled every 50 ms): time the loop was held by other work",
    buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0),
)
LLM_QUEUE = Gauge("parley_llm_queue_depth", "LLM requests waiting for a slot in the pool")
LLM_INFLIGHT = Gauge("parley_llm_inflight", "LLM requests at the server")
LLM_BREAKER_OPEN = Gauge("parley_llm_breaker_open", "1 while the LLM circuit breaker is open (or half open), else 0")
REDIS_ERRORS = Counter("parley_redis_errors_total", "Redis commands that failed, by where", ["where"])
TURNS_SHED = Counter(
    "parley_turns_shed_total", "Turns begun without a rung of work to shed load ([shedding]), by rung", ["rung"]
)
QUICK_ANSWERS = Counter(
    "parley_quick_answers_total", "Replies Parley gave without the LLM ([quick_answers]), by kind", ["kind"]
)
LLM_COPIES = Counter(
    "parley_llm_copies_total",
    "LLM replies that began by copying an earlier reply of the call, unasked, and were asked again ([llm] copy_words)",
)
EVENTS_REPLAYED = Counter(
    "parley_events_replayed_total", "Events sent again to clients that resumed a session (missed while away)"
)
SESSIONS_RESUMED = Counter("parley_sessions_resumed_total", "Sessions resumed on this replica, by outcome", ["outcome"])
KEEPALIVE_CLOSES = Counter(
    "parley_keepalive_closes_total", "Sockets closed because the client stopped answering pings (1011)"
)
ORIGIN_REFUSALS = Counter(
    "parley_origin_refusals_total", "WebSockets refused because their page's origin may not open calls (403)"
)
CLIENT_CAP_REFUSALS = Counter(
    "parley_client_cap_refusals_total",
    "Newcomers refused because their address holds [admission] max_calls_per_ip or max_sessions_per_ip",
    ["kind"],
)
CALLS_AT_MAX_LENGTH = Counter(
    "parley_calls_at_max_length_total", "Sessions the server ended at [signaling] max_call_s (bye max_call_length)"
)
CALLER_SILENCE_FILLED = Counter(
    "parley_caller_silence_filled_seconds_total",
    "Caller silence the server filled in for the packets a caller in DTX did not send ([media] caller_dtx)",
)


class _InferenceLanes(Collector):
    """Each model's inference lane, read at every scrape: jobs waiting, jobs refused by reason, and
    jobs run and the thread time they took by priority.

    The lanes count their own refusals (pipeline/ knows nothing of Prometheus); this exports
    those counts as a counter.
    """

    def __init__(self) -> None:
        self._lanes: tuple[InferenceLane, ...] = ()

    def watch(self, lanes: Iterable[InferenceLane]) -> None:
        self._lanes = tuple(lanes)

    def collect(self) -> Iterator[Metric]:
        waiting = GaugeMetricFamily(
            "parley_inference_queue_depth", "Jobs waiting for a thread of their model's inference lane", labels=["model"]
        )
        refused = CounterMetricFamily(
            "parley_inference_refusals",
            "Jobs an inference lane refused without running them: queue full, or waited past the deadline",
            labels=["model", "reason"],
        )
        ran = CounterMetricFamily(
            "parley_inference_jobs",
            "Jobs an inference lane ran, by how urgent they were when they started",
            labels=["model", "priority"],
        )
        busy = CounterMetricFamily(
            "parley_inference_busy_seconds",
            "Thread time an inference lane's jobs took, by how urgent they were when they started",
            labels=["model", "priority"],
        )
        for lane in self._lanes:
            waiting.add_metric([lane.name], lane.waiting)
            for reason in REASONS:
                refused.add_metric([lane.name, reason], lane.refusals(reason))
            for priority in Priority:
                ran.add_metric([lane.name, priority.name.lower()], lane.ran(priority))
                busy.add_metric([lane.name, priority.name.lower()], lane.busy_seconds(priority))
        yield waiting
        yield refused
        yield ran
        yield busy


INFERENCE_LANES = _InferenceLanes()
REGISTRY.register(INFERENCE_LANES)


def bind(services: Any) -> None:
    """Read the live gauges from `services` (the running app's) at every scrape."""
    admission = services.admission
    SESSIONS_ACTIVE.set_function(lambda: admission.active["sessions"])
    CALLS_ACTIVE.set_function(lambda: admission.active["calls"])
    for kind in ("sessions", "calls"):
        CAPACITY.labels(kind).set_function(lambda kind=kind: 0 if admission.draining else admission.capacity(kind))
    DRAINING.set_function(lambda: int(admission.draining))
    LLM_QUEUE.set_function(lambda: services.llm.queue_depth)
    LLM_INFLIGHT.set_function(lambda: services.llm.inflight)
    LLM_BREAKER_OPEN.set_function(lambda: int(services.llm.breaker.state != "closed"))
    models = (services.transcriber, services.synthesizer, services.turn_model)
    INFERENCE_LANES.watch(model.lane for model in models if model is not None)


def turn_measured(stages_ms: dict[str, float], prompt_read: int | None) -> None:
    """A turn's metrics event, once per turn."""
    for stage in STAGES:
        if (value := stages_ms.get(stage)) is not None:
            STAGE_SECONDS.labels(stage).observe(value / 1000)
    if prompt_read is not None:
        PROMPT_TOKENS_READ.observe(prompt_read)
