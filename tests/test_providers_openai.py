"""OpenAICompatProvider against the fake upstream over real loopback HTTP."""

from __future__ import annotations

import asyncio
import json

import pytest

from conftest import fake_providers
from panelfuse.providers.base import ChatRequest, StreamEvent, fold_stream
from panelfuse.providers.errors import (
    AuthError,
    BadRequestError,
    BadResponseError,
    DeadlineExceeded,
    NotFoundError,
    ProviderError,
    RateLimitedError,
    RefusedError,
    UpstreamError,
)
from panelfuse.providers.openai_compat import OpenAICompatProvider
from panelfuse.providers.retry import RetryPolicy
from panelfuse.testing import Failure, FakeUpstream, Script, tokenize
from serve_helpers import serving

MSGS = [{"role": "user", "content": "What is the capital of France?"}]
TEXT = "Paris is the capital of France.\nIt has  two spaces."
TOOL = {"name": "web_search", "arguments": {"query": "capital of France", "top_k": 3}}
FAST_RETRY = RetryPolicy(attempts=3, base_delay=0.01, max_delay=0.05, jitter=0.5)


def provider(fake: FakeUpstream, **kw) -> OpenAICompatProvider:
    p = OpenAICompatProvider("fake", fake.openai_base_url, kw.pop("api_key", "sk-test"), **kw)
    p.retry_policy = FAST_RETRY
    return p


def req(model: str = "m", **kw) -> ChatRequest:
    kw.setdefault("timeout", 10)
    return ChatRequest(model=model, messages=MSGS, **kw)


async def collect(p: OpenAICompatProvider, r: ChatRequest) -> list[StreamEvent]:
    return [ev async for ev in p.stream(r)]


# ---- text, tools, usage --------------------------------------------------------------------------


async def test_tokens_that_arrive_together_are_passed_on_together(fake: FakeUpstream) -> None:
    # The fake writes unpaced frames back to back, so reads carry many at once.
    text = " ".join(f"w{i}" for i in range(300))
    fake.script("m", Script(text=text))
    events = await collect(provider(fake), req())
    deltas = [ev.text for ev in events if ev.text]
    assert "".join(deltas) == text
    assert len(deltas) < len(tokenize(text))  # joined per network read, not one event per token


async def test_each_event_of_a_read_but_its_last_says_that_more_follow_at_once(fake: FakeUpstream) -> None:
    fake.script("m", Script(text=TEXT, burst=True))  # one read: text, finish, usage
    events = await collect(provider(fake), req())
    assert len(events) > 1
    assert [ev.more for ev in events] == [True] * (len(events) - 1) + [False]
    fake.script("m", Script(text=TEXT, token_rate=100))  # a read per token
    texts = [ev for ev in await collect(provider(fake), req()) if ev.text]
    assert len(texts) > 3 and not any(ev.more for ev in texts[:-1])


async def test_streaming_text_deltas_join_to_script_text(fake: FakeUpstream) -> None:
    # Paced tokens arrive one per read and are passed on one by one, with no wait added.
    fake.script("m", Script(text=TEXT, token_rate=100))
    events = await collect(provider(fake), req())
    deltas = [ev.text for ev in events if ev.text]
    assert len(deltas) > len(tokenize(TEXT)) // 2 > 1  # really streamed in pieces
    assert "".join(deltas) == TEXT
    assert [ev.finish_reason for ev in events if ev.finish_reason] == ["stop"]
    assert fake.requests[0].stream is True


async def test_non_streaming_text(fake: FakeUpstream) -> None:
    fake.script("m", Script(text=TEXT))
    c = await provider(fake).complete(req())
    assert c.text == TEXT and c.finish_reason == "stop" and c.model == "m"
    assert c.tool_calls == [] and c.refusal is None
    assert fake.requests[0].stream is False


async def test_streaming_usage_and_cost(fake: FakeUpstream) -> None:
    fake.script("m", Script(text=TEXT, prompt_tokens=11, completion_tokens=22, cost=0.0042))
    c = await fold_stream("m", provider(fake).stream(req()))
    assert c.text == TEXT
    assert (c.usage.prompt_tokens, c.usage.completion_tokens, c.usage.total_tokens) == (11, 22, 33)
    assert c.usage.cost == pytest.approx(0.0042)
    assert c.usage.to_dict()["cost"] == pytest.approx(0.0042)


async def test_non_streaming_usage_and_cost(fake: FakeUpstream) -> None:
    fake.script("m", Script(text="hi", prompt_tokens=5, completion_tokens=1, cost=0.25))
    c = await provider(fake).complete(req())
    assert (c.usage.prompt_tokens, c.usage.completion_tokens) == (5, 1)
    assert c.usage.cost == pytest.approx(0.25)


async def test_usage_without_cost_is_none(fake: FakeUpstream) -> None:
    fake.script("m", Script(text="hi"))
    c = await provider(fake).complete(req())
    assert c.usage.cost is None and "cost" not in c.usage.to_dict()
    assert c.usage.completion_tokens == len(tokenize("hi"))


@pytest.mark.parametrize("streaming", [True, False])
async def test_tool_calls(fake: FakeUpstream, streaming: bool) -> None:
    fake.script("m", Script(tool_calls=[TOOL, {"name": "fetch", "arguments": {"url": "https://a.b"}}]))
    p = provider(fake)
    tools = [{"type": "function", "function": {"name": "web_search", "parameters": {"type": "object"}}}]
    r = req(tools=tools, tool_choice="auto")
    c = await (fold_stream("m", p.stream(r)) if streaming else p.complete(r))
    assert c.finish_reason == "tool_calls"
    assert [t.name for t in c.tool_calls] == ["web_search", "fetch"]
    # Streamed arguments arrive in several fragments: they must have been accumulated whole.
    assert json.loads(c.tool_calls[0].arguments) == TOOL["arguments"]
    assert json.loads(c.tool_calls[1].arguments) == {"url": "https://a.b"}
    assert all(t.id.startswith("call_") for t in c.tool_calls)
    assert c.tool_calls[0].id != c.tool_calls[1].id
    body = fake.requests[0].body
    assert body["tools"] == tools and body["tool_choice"] == "auto"
    assert c.tool_calls[0].to_openai()["function"]["name"] == "web_search"


async def test_request_body_and_headers(fake: FakeUpstream) -> None:
    schema = {"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]}
    rf = {"type": "json_schema", "json_schema": {"name": "out", "schema": schema, "strict": True}}
    p = provider(fake, headers={"X-Title": "panelfuse"})
    r = req(
        "gpt-x",
        max_tokens=77,
        seed=42,
        temperature=0.3,
        stop=["END"],
        response_format=rf,
        extra_body={"provider": {"order": ["a"]}},
    )
    await collect(p, r)
    (rec,) = fake.requests_for("gpt-x")
    b = rec.body
    assert b["model"] == "gpt-x" and b["messages"] == MSGS
    assert b["max_tokens"] == 77 and b["seed"] == 42 and b["temperature"] == 0.3 and b["stop"] == ["END"]
    assert b["response_format"] == rf
    assert b["stream"] is True and b["stream_options"] == {"include_usage": True}
    assert b["provider"] == {"order": ["a"]}
    assert "top_p" not in b and "tools" not in b  # unset fields are not sent
    assert rec.headers["authorization"] == "Bearer sk-test"
    assert rec.headers["x-title"] == "panelfuse"
    assert rec.path == "/v1/chat/completions"

    await p.complete(r)
    b2 = fake.requests_for("gpt-x")[1].body
    assert b2["stream"] is False and "stream_options" not in b2 and b2["seed"] == 42


async def test_no_key_sends_no_authorization(fake: FakeUpstream) -> None:
    p = OpenAICompatProvider("ollama", fake.openai_base_url)  # keyless local server
    c = await p.complete(req())
    assert c.text and "authorization" not in fake.requests[0].headers


async def test_missing_api_key_raises_auth_error_naming_variable(fake: FakeUpstream) -> None:
    p = OpenAICompatProvider("openrouter", fake.openai_base_url, None, api_key_env="MY_SECRET_KEY_VAR")
    with pytest.raises(AuthError, match="MY_SECRET_KEY_VAR"):
        await p.complete(req())
    with pytest.raises(AuthError, match="MY_SECRET_KEY_VAR"):
        await collect(p, req())
    assert fake.requests == []  # failed before the network


async def test_missing_key_through_registry(fake: FakeUpstream) -> None:
    from panelfuse.config import Config, ProviderConfig
    from panelfuse.providers.registry import Providers

    cfg = Config(
        providers={"x": ProviderConfig(kind="openai_compat", base_url=fake.openai_base_url, api_key_env="X_KEY")}
    )
    with pytest.raises(AuthError, match="X_KEY"):
        await Providers(cfg, env={}).get("x").complete(req())
    c = await Providers(cfg, env={"X_KEY": "sk-from-env"}).get("x").complete(req())
    assert c.text and fake.requests[-1].headers["authorization"] == "Bearer sk-from-env"


async def test_fake_providers_helper(fake: FakeUpstream) -> None:
    fake.script("m1", Script(text="from m1"))
    p, route = fake_providers(fake).for_model("fake/m1")
    assert route.model == "m1"
    assert (await p.complete(ChatRequest(model=route.model, messages=MSGS))).text == "from m1"


# ---- typed errors --------------------------------------------------------------------------------


@pytest.mark.parametrize("streaming", [True, False])
@pytest.mark.parametrize(
    ("script", "error", "status"),
    [
        (Script(failure=Failure.RATE_LIMIT), RateLimitedError, 429),
        (Script(failure=Failure.HTTP_500), UpstreamError, 500),
        (Script(failure=Failure.HTTP, status_code=401), AuthError, 401),
        (Script(failure=Failure.HTTP, status_code=403), AuthError, 403),
        (Script(failure=Failure.HTTP, status_code=404), NotFoundError, 404),
        (Script(failure=Failure.HTTP, status_code=400), BadRequestError, 400),
        (Script(failure=Failure.HTTP, status_code=422), BadRequestError, 422),
        (Script(failure=Failure.HTTP, status_code=503), UpstreamError, 503),
    ],
    ids=["429", "500", "401", "403", "404", "400", "422", "503"],
)
async def test_http_failures_map_to_typed_errors(
    fake: FakeUpstream, streaming: bool, script: Script, error: type[ProviderError], status: int
) -> None:
    fake.script("m", script)
    p = provider(fake)
    p.retry_policy = RetryPolicy(attempts=1)
    with pytest.raises(error) as exc_info:
        if streaming:
            await collect(p, req())
        else:
            await p.complete(req())
    e = exc_info.value
    assert type(e) is error
    assert e.status_code == status and e.provider == "fake" and e.model == "m"
    assert "fake upstream" in e.message  # the upstream's own message, read from its error body
    assert f"HTTP {status}" in str(e)


async def test_rate_limit_carries_retry_after(fake: FakeUpstream) -> None:
    fake.script("m", Script(failure=Failure.RATE_LIMIT, retry_after=7))
    p = provider(fake)
    p.retry_policy = RetryPolicy(attempts=1)
    with pytest.raises(RateLimitedError) as e:
        await collect(p, req())
    assert e.value.retry_after == 7.0 and e.value.retryable
    assert len(fake.requests) == 1


@pytest.mark.parametrize("streaming", [True, False])
async def test_reset_is_upstream_error(fake: FakeUpstream, streaming: bool) -> None:
    fake.script("m", Script(failure=Failure.RESET))
    p = provider(fake)
    with pytest.raises(UpstreamError):
        await (collect(p, req()) if streaming else p.complete(req()))
    assert len(fake.requests) == 3  # retryable: every attempt was used


async def test_cut_stream_is_upstream_error_after_partial_text(fake: FakeUpstream) -> None:
    fake.script("m", Script(text="a b c d e f g", failure=Failure.CUT, cut_after_tokens=3))
    got: list[str] = []
    with pytest.raises(UpstreamError):
        async for ev in provider(fake).stream(req()):
            got.append(ev.text)
    assert "".join(got) == "a b c "
    assert len(fake.requests) == 1  # text had reached the caller: never retried


async def test_cut_non_streaming_is_upstream_error(fake: FakeUpstream) -> None:
    fake.script("m", Script(text="a b c d e f g", failure=Failure.CUT))
    with pytest.raises(UpstreamError):
        await provider(fake).complete(req())


async def test_malformed_sse_is_bad_response(fake: FakeUpstream) -> None:
    fake.script("m", Script(text="one two three four five", failure=Failure.MALFORMED_SSE))
    with pytest.raises(BadResponseError, match="malformed SSE"):
        await collect(provider(fake), req())
    assert len(fake.requests) == 1


@pytest.mark.parametrize("streaming", [True, False])
async def test_invalid_json_is_bad_response(fake: FakeUpstream, streaming: bool) -> None:
    fake.script("m", Script(text="one two three four five", failure=Failure.INVALID_JSON))
    p = provider(fake)
    with pytest.raises(BadResponseError):
        await (collect(p, req()) if streaming else p.complete(req()))
    assert len(fake.requests) == 1  # not retryable


@pytest.mark.parametrize("streaming", [True, False])
async def test_refusal_raises_refused_error(fake: FakeUpstream, streaming: bool) -> None:
    fake.script("m", Script(failure=Failure.REFUSAL))
    p = provider(fake)
    with pytest.raises(RefusedError) as e:
        await (fold_stream("m", p.stream(req())) if streaming else p.complete(req()))
    assert "can't help" in e.value.message


async def test_refusal_events_in_stream(fake: FakeUpstream) -> None:
    fake.script("m", Script(failure=Failure.REFUSAL))
    events = await collect(provider(fake), req())
    assert "".join(ev.refusal or "" for ev in events).startswith("I'm sorry")
    assert "".join(ev.text for ev in events) == ""
    assert [ev.finish_reason for ev in events if ev.finish_reason] == ["content_filter"]


@pytest.mark.parametrize("streaming", [True, False])
async def test_empty_answer_is_a_completion_with_empty_text(fake: FakeUpstream, streaming: bool) -> None:
    fake.script("m", Script(text="ignored", failure=Failure.EMPTY))
    p = provider(fake)
    c = await (fold_stream("m", p.stream(req())) if streaming else p.complete(req()))
    assert c.text == "" and c.finish_reason == "stop" and c.usage.completion_tokens == 0


async def test_mid_stream_error_object_is_upstream_error() -> None:
    """OpenRouter reports mid-stream failures as a data line holding {"error": ...}."""
    from aiohttp import web

    async def handler(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        chunk = {"choices": [{"index": 0, "delta": {"content": "Hel"}, "finish_reason": None}]}
        await resp.write(f"data: {json.dumps(chunk)}\n\n".encode())
        await resp.write(b'data: {"error": {"message": "provider overloaded", "code": 502}}\n\n')
        return resp

    app = web.Application()
    app.router.add_post("/v1/chat/completions", handler)
    async with serving(app) as url:
        p = OpenAICompatProvider("or", f"{url}/v1", "k")
        got = []
        with pytest.raises(UpstreamError, match="provider overloaded"):
            async for ev in p.stream(req()):
                got.append(ev.text)
        assert got == ["Hel"]


# ---- retries -------------------------------------------------------------------------------------


@pytest.mark.parametrize("streaming", [True, False])
async def test_429_with_small_retry_after_succeeds_on_second_request(fake: FakeUpstream, streaming: bool) -> None:
    fake.script("m", Script(text="recovered", failure=Failure.RATE_LIMIT, fail_times=1, retry_after=0.05))
    p = provider(fake)
    c = await (fold_stream("m", p.stream(req())) if streaming else p.complete(req()))
    assert c.text == "recovered"
    recs = fake.requests_for("m")
    assert len(recs) == 2 and [r.failure for r in recs] == [Failure.RATE_LIMIT, None]


async def test_retry_after_beyond_deadline_raises_without_waiting(fake: FakeUpstream) -> None:
    fake.script("m", Script(text="never", failure=Failure.RATE_LIMIT, fail_times=1, retry_after=30))
    p = provider(fake)
    with pytest.raises(RateLimitedError) as e:
        await p.complete(req(timeout=5))
    assert e.value.retry_after == 30.0
    assert len(fake.requests) == 1


async def test_500_twice_then_success_with_three_attempts(fake: FakeUpstream) -> None:
    fake.script("m", Script(text="third time", failure=Failure.HTTP_500, fail_times=2))
    p = provider(fake)
    assert p.retry_policy.attempts == 3
    c = await p.complete(req())
    assert c.text == "third time"
    assert [r.failure for r in fake.requests] == [Failure.HTTP_500, Failure.HTTP_500, None]


async def test_500_more_times_than_attempts_gives_up(fake: FakeUpstream) -> None:
    fake.script("m", Script(text="too late", failure=Failure.HTTP_500, fail_times=3))
    with pytest.raises(UpstreamError):
        await provider(fake).complete(req())
    assert len(fake.requests) == 3


@pytest.mark.parametrize("streaming", [True, False])
async def test_non_retryable_400_is_not_retried(fake: FakeUpstream, streaming: bool) -> None:
    fake.script("m", Script(text="x", failure=Failure.HTTP, status_code=400, fail_times=1))
    p = provider(fake)
    with pytest.raises(BadRequestError):
        await (collect(p, req()) if streaming else p.complete(req()))
    assert len(fake.requests) == 1


# ---- deadline and cancellation -------------------------------------------------------------------


@pytest.mark.parametrize("streaming", [True, False])
async def test_deadline_exceeded_on_slow_upstream(fake: FakeUpstream, streaming: bool) -> None:
    fake.script("m", Script(text="late", latency=5))
    p = provider(fake)
    with pytest.raises(DeadlineExceeded):
        await (collect(p, req(timeout=0.3)) if streaming else p.complete(req(timeout=0.3)))
    assert len(fake.requests) == 1  # a deadline is not retried
    assert await fake.wait_idle_async(5)  # the abandoned request was closed, not left hanging


async def test_default_timeout_applies_when_request_has_none(fake: FakeUpstream) -> None:
    fake.script("m", Script(text="late", latency=5))
    p = provider(fake, default_timeout=0.3)
    with pytest.raises(DeadlineExceeded):
        await p.complete(ChatRequest(model="m", messages=MSGS))


async def test_deadline_mid_stream(fake: FakeUpstream) -> None:
    fake.script("m", Script(text="word " * 100, token_rate=5))
    got: list[str] = []
    with pytest.raises(DeadlineExceeded):
        async for ev in provider(fake).stream(req(timeout=0.5)):
            got.append(ev.text)
    assert 0 < len([g for g in got if g]) < 100


async def test_cancelling_a_stream_disconnects_from_upstream(fake: FakeUpstream) -> None:
    fake.script("m", Script(text="word " * 200, token_rate=20))
    p = provider(fake)
    first = asyncio.Event()
    got: list[str] = []

    async def consume() -> None:
        async for ev in p.stream(req()):
            if ev.text:
                got.append(ev.text)
                first.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(first.wait(), 5)
    assert fake.in_flight == 1
    before = fake.disconnects
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    for _ in range(500):  # bounded wait: the server notices the disconnect asynchronously
        if fake.disconnects > before and fake.in_flight == 0:
            break
        await asyncio.sleep(0.01)
    assert fake.disconnects == before + 1
    assert fake.in_flight == 0
    assert 0 < len(got) < 200


async def test_cancel_during_latency_disconnects(fake: FakeUpstream) -> None:
    fake.script("m", Script(latency=30))
    p = provider(fake)
    task = asyncio.create_task(p.complete(req(timeout=60)))
    for _ in range(500):
        if fake.in_flight:
            break
        await asyncio.sleep(0.01)
    assert fake.in_flight == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await fake.wait_idle_async(5)
    assert fake.disconnects == 1


# ---- models --------------------------------------------------------------------------------------


async def test_list_models(fake: FakeUpstream) -> None:
    fake.script("gpt-x", Script())
    fake.models = ["extra-model"]
    assert await provider(fake).list_models() == ["gpt-x", "extra-model"]
    rec = fake.requests[-1]
    assert rec.method == "GET" and rec.path == "/v1/models"
    assert rec.headers["authorization"] == "Bearer sk-test"


async def test_list_models_without_key_raises_auth_error(fake: FakeUpstream) -> None:
    p = OpenAICompatProvider("x", fake.openai_base_url, None, api_key_env="X_API_KEY")
    with pytest.raises(AuthError, match="X_API_KEY"):
        await p.list_models()


async def test_list_models_connection_refused_is_upstream_error() -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    p = OpenAICompatProvider("dead", f"http://127.0.0.1:{port}/v1")
    with pytest.raises(UpstreamError):
        await p.list_models()


async def test_streamed_tool_calls_past_the_cap_are_a_bad_response(fake: FakeUpstream, monkeypatch) -> None:
    # An upstream that streams a call's arguments without end must not fill the memory.
    from panelfuse.providers import openai_compat

    monkeypatch.setattr(openai_compat, "MAX_TOOL_CALL_CHARS", 100)
    fake.script("m", Script(tool_calls=[{"name": "web_search", "arguments": {"query": "sky " * 200}}]))
    tools = [{"type": "function", "function": {"name": "web_search", "parameters": {"type": "object"}}}]
    with pytest.raises(BadResponseError, match="tool calls longer than 100"):
        await fold_stream("m", provider(fake).stream(req(tools=tools)))
