import json

import httpx
import pytest

from pipeline.config import LLMConfig
from pipeline.errors import LLMTimeout, LLMUnavailable
from pipeline.llm_client import LLMClient, PromptUsage, prompt_usage


def sse(*deltas: str, done: bool = True) -> bytes:
    events = [
        "data: " + json.dumps({"choices": [{"index": 0, "delta": {"content": d}}]}) + "\n\n" for d in deltas
    ]
    return ("".join(events) + ("data: [DONE]\n\n" if done else "")).encode()


def client_for(handler, **config) -> LLMClient:
    return LLMClient(LLMConfig(base_url="http://llm.test/v1", **config), transport=httpx.MockTransport(handler))


async def test_deltas_stream_in_order_and_the_request_is_openai_shaped():
    seen = {}

    def handler(request: httpx.Request) -> httpx.Response:
        seen["path"] = request.url.path
        seen["auth"] = request.headers.get("authorization")
        seen["body"] = json.loads(request.content)
        return httpx.Response(200, content=sse("Hel", "lo", " there."), headers={"content-type": "text/event-stream"})

    async with client_for(handler, api_key="k", seed=7, max_tokens=50) as client:
        messages = client.with_system_prompt([{"role": "user", "content": "hi"}])
        deltas = [d async for d in client.stream_chat(messages)]
    assert deltas == ["Hel", "lo", " there."]
    assert seen["path"] == "/v1/chat/completions" and seen["auth"] == "Bearer k"
    body = seen["body"]
    assert body["stream"] is True and body["max_tokens"] == 50 and body["seed"] == 7
    assert body["messages"][0]["role"] == "system" and body["messages"][1] == {"role": "user", "content": "hi"}


async def test_http_errors_become_llm_unavailable():
    async with client_for(lambda r: httpx.Response(503, text="loading model")) as client:
        with pytest.raises(LLMUnavailable, match="HTTP 503: loading model"):
            [d async for d in client.stream_chat([{"role": "user", "content": "hi"}])]


async def test_connection_refused_becomes_llm_unavailable():
    def refuse(request):
        raise httpx.ConnectError("connection refused", request=request)

    async with client_for(refuse) as client:
        with pytest.raises(LLMUnavailable, match="unreachable"):
            [d async for d in client.stream_chat([{"role": "user", "content": "hi"}])]


async def test_a_malformed_event_is_an_error_not_a_crash():
    body = b'data: {"choices": [\n\n'
    async with client_for(lambda r: httpx.Response(200, content=body)) as client:
        with pytest.raises(LLMUnavailable, match="malformed"):
            [d async for d in client.stream_chat([{"role": "user", "content": "hi"}])]


async def test_read_timeout_becomes_llm_timeout():
    def slow(request):
        raise httpx.ReadTimeout("no data", request=request)

    async with client_for(slow) as client:
        with pytest.raises(LLMTimeout):
            [d async for d in client.stream_chat([{"role": "user", "content": "hi"}])]


@pytest.mark.slow
async def test_the_bundled_llm_streams_an_answer(llm_config):
    async with LLMClient(llm_config) as client:
        messages = client.with_system_prompt([{"role": "user", "content": "What is the capital of France?"}])
        deltas = [d async for d in client.stream_chat(messages)]
    answer = "".join(deltas)
    assert len(deltas) > 1 and answer.strip()
    assert "paris" in answer.lower(), answer


async def test_a_null_event_is_skipped_and_an_unexpected_one_is_an_error():
    body = b'data: null\n\ndata: {"choices": [{"index": 0, "delta": {"content": "ok"}}]}\n\ndata: [DONE]\n\n'
    async with client_for(lambda r: httpx.Response(200, content=body)) as client:
        assert [d async for d in client.stream_chat([{"role": "user", "content": "hi"}])] == ["ok"]
    async with client_for(lambda r: httpx.Response(200, content=b"data: [1, 2]\n\n")) as client:
        with pytest.raises(LLMUnavailable, match="unexpected event"):
            [d async for d in client.stream_chat([{"role": "user", "content": "hi"}])]


@pytest.mark.slow
async def test_one_completions_request_streams_several_prompts_from_the_bundled_llm(llm_config):
    async with LLMClient(llm_config) as client:
        prompts = [
            await client.apply_template(client.with_system_prompt([{"role": "user", "content": q}]))
            for q in ("What is the capital of France?", "What colour is grass?")
        ]
        texts = {0: "", 1: ""}
        async for index, delta in client.stream_completions(prompts):
            texts[index] += delta
    assert "paris" in texts[0].lower() and "grass" in texts[1].lower(), texts


async def test_problem_says_why_the_server_cannot_serve():
    async with client_for(lambda r: httpx.Response(200, json={"data": []})) as client:
        assert await client.problem() is None
    async with client_for(lambda r: httpx.Response(503)) as client:
        assert await client.problem() == "HTTP 503 from http://llm.test/v1/models"


def test_prompt_figures_come_from_llama_servers_timings_or_openai_usage():
    assert prompt_usage({"timings": {"prompt_n": 12, "cache_n": 500, "predicted_n": 3}}) == PromptUsage(512, 500)
    assert prompt_usage({"timings": {"prompt_n": 12}}) == PromptUsage(12, 0)
    usage = {"prompt_tokens": 512, "completion_tokens": 9, "prompt_tokens_details": {"cached_tokens": 480}}
    assert prompt_usage({"usage": usage}).read == 32
    assert prompt_usage({"usage": {"prompt_tokens": 40}}) == PromptUsage(40, 0)
    # Anything else says nothing: no figure is better than a wrong one.
    for chunk in [{}, {"timings": {"prompt_n": True}}, {"timings": "x"}, {"usage": {"prompt_tokens": -1}},
                  {"usage": {"prompt_tokens": "40"}}, {"usage": None}]:
        assert prompt_usage(chunk) is None, chunk


async def test_a_request_for_a_slot_asks_for_its_cache_and_its_timings():
    client = client_for(lambda request: httpx.Response(200))
    body = client.request_body([{"role": "user", "content": "hi"}], slot=2)
    assert (body["id_slot"], body["cache_prompt"], body["timings_per_token"]) == (2, True, True)
    assert "id_slot" not in client.request_body([{"role": "user", "content": "hi"}])
    await client.aclose()
