"""/metrics through a real server: Prometheus's names, with values from real turns."""

import asyncio
import json

import httpx
import pytest
import websockets
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import own_server

pytestmark = pytest.mark.slow


def samples(text: str) -> dict[tuple[str, tuple], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


async def test_metrics_show_sessions_admissions_stage_latency_and_the_process(shared_redis, proxy, tmp_path):
    async with own_server(shared_redis.url, proxy.base_url, tmp_path, PARLEY_ADMISSION_MAX_SESSIONS="1") as url:
        async with websockets.connect(url.replace("http", "ws") + "/ws") as ws:
            assert json.loads(await ws.recv())["type"] == "session"
            await ws.send(json.dumps({"type": "text", "text": "What is the capital of France?"}))
            async with asyncio.timeout(60):
                while not (m := json.loads(await ws.recv()))["type"] == "reply" or not m.get("done"):
                    pass
            async with websockets.connect(url.replace("http", "ws") + "/ws") as refused:
                assert json.loads(await refused.recv())["code"] == "over_capacity"
            async with httpx.AsyncClient() as http:
                response = await http.get(f"{url}/metrics")
                # Scraping is never rate limited, like the probes.
                assert [(await http.get(f"{url}/metrics")).status_code for _ in range(60)] == [200] * 60
    assert response.headers["content-type"].startswith("text/plain")
    got = samples(response.text)
    assert got[("parley_sessions_active", ())] == 1
    assert got[("parley_calls_active", ())] == 0
    assert got[("parley_capacity", (("kind", "sessions"),))] == 1
    assert got[("parley_admissions_total", (("kind", "sessions"), ("outcome", "admitted")))] == 1
    assert got[("parley_admissions_total", (("kind", "sessions"), ("outcome", "replica")))] == 1
    assert got[("parley_stage_seconds_count", (("stage", "llm_first_token"),))] == 1
    assert 0 < got[("parley_stage_seconds_sum", (("stage", "llm_first_token"),))] < 30
    assert got[("parley_llm_prompt_tokens_read_count", ())] == 1
    for name in ("parley_llm_queue_depth", "parley_llm_inflight", "parley_llm_breaker_open",
                 "parley_draining", "process_resident_memory_bytes", "process_open_fds"):
        assert (name, ()) in got, name
    for model in ("asr", "tts", "turn_model"):
        assert got[("parley_inference_queue_depth", (("model", model),))] == 0
        assert got[("parley_inference_refusals_total", (("model", model), ("reason", "full")))] == 0
    assert got[("parley_llm_breaker_open", ())] == 0 and got[("parley_draining", ())] == 0


def test_the_dashboard_and_the_docs_name_only_metrics_that_exist():
    import re
    from pathlib import Path

    from prometheus_client import REGISTRY

    import signaling.metrics  # noqa: F401  registers Parley's metrics

    docs = Path(__file__).resolve().parents[1] / "docs"
    exported = {s.name for family in REGISTRY.collect() for s in family.samples} | {
        family.name for family in REGISTRY.collect()
    }
    dashboard = json.loads((docs / "grafana" / "parley.json").read_text())
    exprs = " ".join(t["expr"] for panel in dashboard["panels"] for t in panel["targets"])
    named = set(re.findall(r"\bparley_[a-z_]+", exprs + (docs / "metrics.md").read_text()))
    missing = {n for n in named if not {n, n.removesuffix("_bucket"), n.removesuffix("_total")} & exported}
    assert not missing, missing
    documented = set(re.findall(r"`(parley_[a-z_]+)`", (docs / "metrics.md").read_text()))
    ours = {f.name for f in REGISTRY.collect() if f.name.startswith("parley_")}
    assert ours <= {n.removesuffix("_total") for n in documented}, ours - documented
