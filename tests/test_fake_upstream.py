"""FakeUpstream checked against the official openai / anthropic SDKs (their parsers, not our reading)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator

import anthropic
import httpx
import openai
import pytest
from openai import AsyncOpenAI, OpenAI

try:  # newer SDKs ride on httpx2; older ones on httpx
    import httpx2

    TRANSPORT_ERRORS: tuple[type[Exception], ...] = (httpx.TransportError, httpx2.TransportError)
except ImportError:  # pragma: no cover
    TRANSPORT_ERRORS = (httpx.TransportError,)

from panelfuse.testing import DEFAULT_TEXT, Failure, FakeUpstream, Script, tokenize

MSGS = [{"role": "user", "content": "What is the capital of France?"}]  # 30 chars -> 7 prompt tokens
TEXT = "Paris is the capital of France.\nIt has  two spaces."
TOOL = {"name": "web_search", "arguments": {"query": "capital of France", "top_k": 3}}


_SYNC_CLIENTS: list[OpenAI | anthropic.Anthropic] = []


@pytest.fixture
def fake() -> Iterator[FakeUpstream]:
    with FakeUpstream() as f:
        yield f
    while _SYNC_CLIENTS:  # close pooled sockets so the suite runs clean under -W error::ResourceWarning
        _SYNC_CLIENTS.pop().close()


def oai(fake: FakeUpstream, **kw) -> OpenAI:
    retries = kw.pop("max_retries", 0)
    _SYNC_CLIENTS.append(OpenAI(base_url=fake.openai_base_url, api_key="sk-test", max_retries=retries, **kw))
    return _SYNC_CLIENTS[-1]


def aoai(fake: FakeUpstream, **kw) -> AsyncOpenAI:
    return AsyncOpenAI(base_url=fake.openai_base_url, api_key="sk-test", max_retries=0, **kw)


def say(client: OpenAI, model: str, content: str = MSGS[0]["content"]) -> str | None:
    """One non-streaming call; the reply's text."""
    msgs = [{"role": "user", "content": content}]
    return client.chat.completions.create(model=model, messages=msgs).choices[0].message.content


def ant(fake: FakeUpstream) -> anthropic.Anthropic:
    _SYNC_CLIENTS.append(anthropic.Anthropic(base_url=fake.anthropic_base_url, api_key="ant-key", max_retries=0))
    return _SYNC_CLIENTS[-1]


def ant_create(fake: FakeUpstream, model: str = "claude", **kw):
    return ant(fake).messages.create(model=model, max_tokens=100, messages=MSGS, **kw)


# ---- OpenAI wire ---------------------------------------------------------------------------------


def test_openai_non_streaming_text_usage_and_recording(fake: FakeUpstream) -> None:
    fake.script("gpt-x", Script(text=TEXT, cost=0.5))
    r = oai(fake).chat.completions.create(model="gpt-x", messages=MSGS, seed=7, response_format={"type": "json_object"})
    assert r.usage.model_extra["cost"] == 0.5  # OpenRouter-style extra field
    assert r.object == "chat.completion" and r.model == "gpt-x"
    assert r.choices[0].message.content == TEXT and r.choices[0].message.role == "assistant"
    assert r.choices[0].finish_reason == "stop"
    assert r.usage.prompt_tokens == 7  # 30 chars // 4
    assert r.usage.completion_tokens == len(tokenize(TEXT))
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    (rec,) = fake.requests_for("gpt-x")
    assert (rec.path, rec.wire, rec.stream, rec.failure) == ("/v1/chat/completions", "openai", False, None)
    assert rec.body["seed"] == 7 and rec.body["response_format"] == {"type": "json_object"}
    assert rec.headers["authorization"] == "Bearer sk-test"
    assert fake.in_flight == 0 and fake.max_in_flight == 1


async def test_openai_streaming_text_usage_and_cost(fake: FakeUpstream) -> None:
    fake.script("gpt-x", Script(text=TEXT, cost=0.0042, prompt_tokens=11, completion_tokens=22))
    async with aoai(fake) as client:
        stream = await client.chat.completions.create(model="gpt-x", messages=MSGS, stream=True)
        chunks = [c async for c in stream]
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == TEXT
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["stop"]
    last = chunks[-1]
    assert last.choices == [] and last.usage.prompt_tokens == 11 and last.usage.completion_tokens == 22
    assert last.usage.model_extra["cost"] == pytest.approx(0.0042)
    assert fake.requests[0].stream is True
    assert fake.in_flight == 0  # decremented before the last byte left the server


def test_openai_tool_calls(fake: FakeUpstream) -> None:
    fake.script("gpt-x", Script(tool_calls=[TOOL, {"name": "fetch", "arguments": {"url": "https://a.b"}}]))
    client = oai(fake)
    r = client.chat.completions.create(
        model="gpt-x",
        messages=MSGS,
        tools=[{"type": "function", "function": {"name": "web_search", "parameters": {"type": "object"}}}],
    )
    msg = r.choices[0].message
    assert r.choices[0].finish_reason == "tool_calls" and msg.content is None
    assert [tc.function.name for tc in msg.tool_calls] == ["web_search", "fetch"]
    assert json.loads(msg.tool_calls[0].function.arguments) == TOOL["arguments"]
    assert msg.tool_calls[0].id.startswith("call_")
    assert fake.requests[0].body["tools"][0]["function"]["name"] == "web_search"

    # Streaming: accumulate argument pieces per index, as every client must.
    calls: dict[int, dict] = {}
    pieces = 0
    for c in client.chat.completions.create(model="gpt-x", messages=MSGS, stream=True):
        for d in (c.choices[0].delta.tool_calls or []) if c.choices else []:
            slot = calls.setdefault(d.index, {"id": None, "name": None, "args": ""})
            slot["id"] = d.id or slot["id"]
            slot["name"] = d.function.name or slot["name"]
            if d.function.arguments:
                slot["args"] += d.function.arguments
                pieces += 1
    assert [calls[i]["name"] for i in sorted(calls)] == ["web_search", "fetch"]
    assert json.loads(calls[0]["args"]) == TOOL["arguments"] and calls[1]["id"].startswith("call_")
    assert pieces >= 4  # 2+ pieces per call


def test_openai_http_errors(fake: FakeUpstream) -> None:
    fake.script("limited", Script(failure=Failure.RATE_LIMIT, retry_after=7))
    fake.script("broken", Script(failure=Failure.HTTP_500))
    fake.script("unauth", Script(failure=Failure.HTTP, status_code=401))
    fake.script("missing", Script(failure="http", status_code=404))
    client = oai(fake)
    with pytest.raises(openai.RateLimitError) as e:
        client.chat.completions.create(model="limited", messages=MSGS, stream=True)
    assert e.value.response.headers["retry-after"] == "7"
    assert e.value.body["code"] == "rate_limit_exceeded" and e.value.body["param"] is None
    with pytest.raises(openai.InternalServerError) as e500:
        client.chat.completions.create(model="broken", messages=MSGS)
    assert e500.value.body["type"] == "server_error"
    with pytest.raises(openai.AuthenticationError):
        client.chat.completions.create(model="unauth", messages=MSGS)
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="missing", messages=MSGS)
    applied = [r.failure for r in fake.requests]
    assert applied == [Failure.RATE_LIMIT, Failure.HTTP_500, Failure.HTTP, Failure.HTTP]


def test_openai_refusal_and_empty(fake: FakeUpstream) -> None:
    fake.script("nope", Script(failure=Failure.REFUSAL))
    fake.script("empty", Script(text="ignored", failure=Failure.EMPTY))
    client = oai(fake)
    r = client.chat.completions.create(model="nope", messages=MSGS)
    assert r.choices[0].finish_reason == "content_filter"
    assert r.choices[0].message.refusal and r.choices[0].message.content is None
    chunks = list(client.chat.completions.create(model="nope", messages=MSGS, stream=True))
    refusal = "".join(c.choices[0].delta.refusal or "" for c in chunks if c.choices)
    assert refusal == r.choices[0].message.refusal
    assert chunks[-2].choices[0].finish_reason == "content_filter"

    r = client.chat.completions.create(model="empty", messages=MSGS)
    assert r.choices[0].message.content == "" and r.choices[0].finish_reason == "stop"
    assert r.usage.completion_tokens == 0
    chunks = list(client.chat.completions.create(model="empty", messages=MSGS, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == ""


@pytest.mark.parametrize("stream", [False, True])
def test_openai_broken_transports(fake: FakeUpstream, stream: bool) -> None:
    text = "one two three four five six seven"
    fake.script("bad-json", Script(text=text, failure=Failure.INVALID_JSON))
    fake.script("reset", Script(failure=Failure.RESET))
    fake.script("cut", Script(text=text, failure=Failure.CUT, cut_after_tokens=2))
    fake.script("malformed", Script(text=text, failure=Failure.MALFORMED_SSE))
    client = oai(fake)

    def run(model: str) -> list[str]:
        got: list[str] = []
        r = client.chat.completions.create(model=model, messages=MSGS, stream=stream)
        if not stream:
            return [r.choices[0].message.content]
        for c in r:
            got.append(c.choices[0].delta.content or "")
        return got

    with pytest.raises(ValueError):  # json.JSONDecodeError: the body / data line is not JSON
        run("bad-json")
    assert fake.wait_idle(2)  # the bad-json client hung up mid-stream; let the server notice first
    before = fake.disconnects
    with pytest.raises(openai.APIConnectionError):
        run("reset")
    with pytest.raises(openai.APIConnectionError):
        run("cut")
    assert fake.disconnects == before  # our own aborts are not client disconnects
    with pytest.raises(ValueError):
        run("malformed")
    assert fake.wait_idle(2) and fake.in_flight == 0


def test_openai_cut_stream_delivers_exact_prefix(fake: FakeUpstream) -> None:
    fake.default = Script(text="a b c d e f g", failure=Failure.CUT, cut_after_tokens=3)
    got: list[str] = []
    with pytest.raises(openai.APIConnectionError):
        for c in oai(fake).chat.completions.create(model="m", messages=MSGS, stream=True):
            got.append(c.choices[0].delta.content or "")
    assert "".join(got) == "a b c "


def test_fail_times_then_success_and_sdk_retry(fake: FakeUpstream) -> None:
    fake.script("flaky", Script(text="recovered", failure=Failure.HTTP_500, fail_times=1))
    client = oai(fake)
    with pytest.raises(openai.InternalServerError):
        say(client, "flaky")
    assert say(client, "flaky") == "recovered"

    # The SDK's own retry honours our Retry-After and succeeds on the second attempt.
    fake.script("limited", Script(text="ok", failure=Failure.RATE_LIMIT, fail_times=1, retry_after=0.01))
    assert say(oai(fake, max_retries=2), "limited") == "ok"
    recs = fake.requests_for("limited")
    assert [x.failure for x in recs] == [Failure.RATE_LIMIT, None]
    assert recs[1].headers.get("x-stainless-retry-count") == "1"


def test_script_sequence_and_callable(fake: FakeUpstream) -> None:
    seen: list[dict] = []

    def echo(body: dict) -> Script:
        seen.append(body)
        return Script(text=f"echo:{body['messages'][-1]['content']}")

    fake.script("seq", Script(text="first"), Script(text="second"), echo)
    client = oai(fake)
    texts = [say(client, "seq", f"q{i}") for i in range(5)]
    assert texts == ["first", "second", "echo:q2", "echo:q3", "echo:q4"]
    assert [b["messages"][0]["content"] for b in seen] == ["q2", "q3", "q4"]
    # Unscripted models get the default; reset forgets scripts and requests.
    assert say(client, "other") == DEFAULT_TEXT
    fake.reset()
    assert fake.requests == [] and fake.max_in_flight == 0
    assert say(client, "seq") == DEFAULT_TEXT


def test_callable_returning_garbage_is_a_500(fake: FakeUpstream) -> None:
    fake.script("bad", lambda body: "not a script")  # type: ignore[arg-type, return-value]
    with pytest.raises(openai.InternalServerError) as e:
        say(oai(fake), "bad")
    assert "not Script" in e.value.message


async def test_in_flight_high_water_mark(fake: FakeUpstream) -> None:
    fake.script("slow", Script(text="done", latency=0.5))
    async with aoai(fake) as client:
        results = await asyncio.gather(*(client.chat.completions.create(model="slow", messages=MSGS) for _ in range(5)))
    assert [r.choices[0].message.content for r in results] == ["done"] * 5
    assert fake.max_in_flight == 5 and fake.in_flight == 0 and fake.disconnects == 0


async def test_abandoned_stream_counts_a_disconnect(fake: FakeUpstream) -> None:
    fake.script("slow", Script(text="word " * 200, token_rate=50))
    async with aoai(fake) as client:
        stream = await client.chat.completions.create(model="slow", messages=MSGS, stream=True)
        got = 0
        async for _ in stream:
            got += 1
            if got == 3:
                break
        assert fake.in_flight == 1  # 200 tokens at 50/s: the server is still streaming
        await stream.close()
    assert await fake.wait_idle_async(5)
    assert fake.disconnects == 1 and fake.in_flight == 0


async def test_cancelled_request_during_latency_counts_a_disconnect(fake: FakeUpstream) -> None:
    fake.script("stuck", Script(latency=30))
    async with aoai(fake) as client:
        task = asyncio.create_task(client.chat.completions.create(model="stuck", messages=MSGS))
        for _ in range(400):
            if fake.in_flight:
                break
            await asyncio.sleep(0.005)
        assert fake.in_flight == 1
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert await fake.wait_idle_async(5)  # handler_cancellation woke the sleeping handler
    assert fake.disconnects == 1


def test_models_endpoint(fake: FakeUpstream) -> None:
    fake.script("gpt-x", Script())
    fake.models = ["extra-model", "gpt-x"]
    listed = oai(fake).models.list()
    assert [m.id for m in listed.data] == ["gpt-x", "extra-model"]
    assert all(m.object == "model" and m.owned_by for m in listed.data)
    assert [m.id for m in ant(fake).models.list().data] == ["gpt-x", "extra-model"]


def test_lognormal_latency_is_drawn_and_seeded() -> None:
    def draws(seed: int) -> list[float]:
        with FakeUpstream(seed=seed) as f, httpx.Client(base_url=f.openai_base_url) as http:
            f.default = Script(latency=(0.002, 0.7))
            for _ in range(8):
                http.post("/chat/completions", json={"model": "m", "messages": MSGS})
            return [r.latency for r in f.requests]

    a, b = draws(3), draws(3)
    assert a == b and len(set(a)) == 8 and all(x > 0 for x in a)
    with pytest.raises(ValueError):
        Script(latency=(0, 1))


def test_tokenize_round_trips() -> None:
    for text in [TEXT, "", "  lead", "trail  ", "a\n\nb\tc"]:
        assert "".join(tokenize(text)) == text
    assert tokenize("a b") == ["a ", "b"]


def test_url_requires_start_and_bad_body() -> None:
    fake = FakeUpstream()
    with pytest.raises(RuntimeError):
        _ = fake.url
    with fake:
        r = httpx.post(fake.openai_base_url + "/chat/completions", content=b"not json")
        assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"
        assert fake.requests[0].body is None


async def test_async_context_manager() -> None:
    async with FakeUpstream() as fake, aoai(fake) as client:
        r = await client.chat.completions.create(model="m", messages=MSGS)
        assert r.choices[0].message.content == DEFAULT_TEXT
    with pytest.raises(RuntimeError):
        _ = fake.url


# ---- Anthropic wire ------------------------------------------------------------------------------


def test_anthropic_text_non_streaming_and_streaming(fake: FakeUpstream) -> None:
    fake.script("claude", Script(text=TEXT))
    m = ant_create(fake)
    assert m.type == "message" and m.role == "assistant" and m.model == "claude"
    assert [b.type for b in m.content] == ["text"] and m.content[0].text == TEXT
    assert m.stop_reason == "end_turn" and m.stop_sequence is None
    assert m.usage.input_tokens == 7 and m.usage.output_tokens == len(tokenize(TEXT))
    with ant(fake).messages.stream(model="claude", max_tokens=100, messages=MSGS, system="Be brief.") as s:
        assert "".join(s.text_stream) == TEXT
        final = s.get_final_message()
    assert final.stop_reason == "end_turn" and final.usage.output_tokens == len(tokenize(TEXT))
    assert final.usage.input_tokens == (30 + len("Be brief.")) // 4
    rec = fake.requests[-1]
    assert (rec.path, rec.wire, rec.stream) == ("/v1/messages", "anthropic", True)
    # Older SDKs send x-api-key, newer ones Authorization: Bearer; either way the key must arrive.
    assert "ant-key" in (rec.headers.get("x-api-key"), rec.headers.get("authorization", "")[len("Bearer ") :])
    assert "anthropic-version" in rec.headers


def test_anthropic_tool_use(fake: FakeUpstream) -> None:
    fake.script("claude", Script(text="Let me search.", tool_calls=[TOOL]))
    m = ant_create(fake)
    assert m.stop_reason == "tool_use" and [b.type for b in m.content] == ["text", "tool_use"]
    assert m.content[1].name == "web_search" and m.content[1].input == TOOL["arguments"]
    assert m.content[1].id.startswith("toolu_")
    with ant(fake).messages.stream(model="claude", max_tokens=100, messages=MSGS) as s:
        partials = [e.partial_json for e in s if e.type == "input_json"]
        final = s.get_final_message()
    assert len(partials) >= 2 and json.loads("".join(partials)) == TOOL["arguments"]
    assert final.content[1].input == TOOL["arguments"] and final.stop_reason == "tool_use"


def test_anthropic_errors_refusal_empty(fake: FakeUpstream) -> None:
    fake.script("limited", Script(failure=Failure.RATE_LIMIT, retry_after=2))
    fake.script("broken", Script(failure=Failure.HTTP_500))
    fake.script("unauth", Script(failure=Failure.HTTP, status_code=401))
    fake.script("nope", Script(failure=Failure.REFUSAL))
    fake.script("empty", Script(failure=Failure.EMPTY))
    fake.script("reset", Script(failure=Failure.RESET))
    with pytest.raises(anthropic.RateLimitError) as e:
        ant_create(fake, "limited")
    assert e.value.body == {
        "type": "error",
        "error": {"type": "rate_limit_error", "message": e.value.body["error"]["message"]},
    }
    assert e.value.response.headers["retry-after"] == "2"
    with pytest.raises(anthropic.InternalServerError) as e500:
        ant_create(fake, "broken", stream=True)
    assert e500.value.body["error"]["type"] == "api_error"
    with pytest.raises(anthropic.AuthenticationError) as e401:
        ant_create(fake, "unauth")
    assert e401.value.body["error"]["type"] == "authentication_error"
    assert ant_create(fake, "nope").stop_reason == "refusal"
    with ant(fake).messages.stream(model="nope", max_tokens=100, messages=MSGS) as s:
        assert s.get_final_message().stop_reason == "refusal"
    empty = ant_create(fake, "empty")
    assert empty.content == [] and empty.stop_reason == "end_turn"
    with pytest.raises(anthropic.APIConnectionError):
        ant_create(fake, "reset")


def test_anthropic_cut_stream_raises(fake: FakeUpstream) -> None:
    fake.script("claude", Script(text="a b c d e f", failure=Failure.CUT, cut_after_tokens=2))
    got: list[str] = []
    # The anthropic SDK lets the transport's own error escape from a broken stream.
    with pytest.raises((anthropic.APIConnectionError, *TRANSPORT_ERRORS)):
        with ant(fake).messages.stream(model="claude", max_tokens=100, messages=MSGS) as s:
            got.extend(s.text_stream)
    assert "".join(got) == "a b "


def test_raw_sse_frames(fake: FakeUpstream) -> None:
    """Byte-level checks the SDKs are lenient about: event/data pairing, ping, [DONE]."""
    fake.default = Script(text="hi there", tool_calls=[TOOL])
    body = {"model": "m", "max_tokens": 5, "messages": MSGS, "stream": True}
    raw = httpx.post(fake.url + "/v1/messages", json=body)
    assert raw.headers["content-type"].startswith("text/event-stream")
    frames = [f for f in raw.text.split("\n\n") if f]
    events = []
    for f in frames:
        ev, data = f.split("\n")
        assert ev.startswith("event: ") and data.startswith("data: ")
        assert json.loads(data[6:])["type"] == ev[7:]
        events.append(ev[7:])
    assert events[:3] == ["message_start", "content_block_start", "ping"]
    assert events[-2:] == ["message_delta", "message_stop"]
    assert events.count("content_block_start") == events.count("content_block_stop") == 2

    raw = httpx.post(fake.openai_base_url + "/chat/completions", json=body).text
    lines = [x for x in raw.split("\n\n") if x]
    assert all(x.startswith("data: ") for x in lines) and lines[-1] == "data: [DONE]"
    assert json.loads(lines[-2][6:])["choices"] == []
