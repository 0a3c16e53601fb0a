"""AnthropicProvider against the fake upstream (Anthropic Messages wire), plus its pure translators."""

from __future__ import annotations

import json

import pytest

from conftest import fake_providers
from panelfuse.providers.anthropic import (
    ANTHROPIC_VERSION,
    DEFAULT_MAX_TOKENS,
    AnthropicProvider,
    to_anthropic_messages,
    to_anthropic_tool_choice,
    to_anthropic_tools,
)
from panelfuse.providers.base import ChatRequest, StreamEvent, fold_stream
from panelfuse.providers.errors import (
    AuthError,
    BadRequestError,
    BadResponseError,
    NotFoundError,
    RateLimitedError,
    RefusedError,
    UpstreamError,
)
from panelfuse.providers.retry import RetryPolicy
from panelfuse.testing import Failure, FakeUpstream, Script, tokenize
from serve_helpers import serving

MSGS = [{"role": "user", "content": "What is the capital of France?"}]  # 30 chars -> 7 prompt tokens
TEXT = "Paris is the capital of France.\nIt has  two spaces."
TOOL = {"name": "web_search", "arguments": {"query": "capital of France", "top_k": 3}}
FAST_RETRY = RetryPolicy(attempts=3, base_delay=0.01, max_delay=0.05)


def provider(fake: FakeUpstream, **kw) -> AnthropicProvider:
    p = AnthropicProvider("anthropic", fake.anthropic_base_url, kw.pop("api_key", "ant-key"), **kw)
    p.retry_policy = FAST_RETRY
    return p


def req(model: str = "claude", messages: list | None = None, **kw) -> ChatRequest:
    kw.setdefault("timeout", 10)
    return ChatRequest(model=model, messages=messages or MSGS, **kw)


async def collect(p: AnthropicProvider, r: ChatRequest) -> list[StreamEvent]:
    return [ev async for ev in p.stream(r)]


# ---- over HTTP -----------------------------------------------------------------------------------


async def test_streaming_text(fake: FakeUpstream) -> None:
    fake.script("claude", Script(text=TEXT, token_rate=100))  # paced: one token per read
    events = await collect(provider(fake), req())
    deltas = [ev.text for ev in events if ev.text]
    assert len(deltas) > len(tokenize(TEXT)) // 2 > 1 and "".join(deltas) == TEXT
    c = await fold_stream("claude", provider(fake).stream(req()))
    assert c.text == TEXT and c.finish_reason == "stop"
    assert c.usage.prompt_tokens == 7 and c.usage.completion_tokens == len(tokenize(TEXT))
    rec = fake.requests[0]
    assert (rec.path, rec.wire, rec.stream) == ("/v1/messages", "anthropic", True)


async def test_non_streaming_text_and_usage(fake: FakeUpstream) -> None:
    fake.script("claude", Script(text=TEXT, prompt_tokens=12, completion_tokens=34))
    c = await provider(fake).complete(req())
    assert c.text == TEXT and c.finish_reason == "stop" and c.tool_calls == []
    assert (c.usage.prompt_tokens, c.usage.completion_tokens) == (12, 34)
    assert c.usage.cost is None
    assert fake.requests[0].stream is False


async def test_streaming_usage_input_output_tokens(fake: FakeUpstream) -> None:
    fake.script("claude", Script(text="hi there", prompt_tokens=12, completion_tokens=34))
    c = await fold_stream("claude", provider(fake).stream(req()))
    # message_start says input 12 / output 1 (placeholder); message_delta carries the real output count.
    assert (c.usage.prompt_tokens, c.usage.completion_tokens) == (12, 34)


@pytest.mark.parametrize("streaming", [True, False])
async def test_tool_use_becomes_tool_call(fake: FakeUpstream, streaming: bool) -> None:
    calls = [TOOL, {"name": "fetch", "arguments": {}}]
    fake.script("claude", Script(text="Let me search.", tool_calls=calls))
    p = provider(fake)
    tools = [
        {
            "type": "function",
            "function": {"name": "web_search", "description": "search", "parameters": {"type": "object"}},
        }
    ]
    r = req(tools=tools, tool_choice="required")
    c = await (fold_stream("claude", p.stream(r)) if streaming else p.complete(r))
    assert c.text == "Let me search."
    assert c.finish_reason == "tool_calls"
    assert [t.name for t in c.tool_calls] == ["web_search", "fetch"]
    assert json.loads(c.tool_calls[0].arguments) == TOOL["arguments"]
    assert json.loads(c.tool_calls[1].arguments) == {}
    assert all(t.id.startswith("toolu_") for t in c.tool_calls)
    body = fake.requests[0].body
    expected_tool = {"name": "web_search", "description": "search", "input_schema": {"type": "object"}}
    assert body["tools"] == [expected_tool]
    assert body["tool_choice"] == {"type": "any"}


async def test_request_body_system_and_headers(fake: FakeUpstream) -> None:
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "developer", "content": "Answer in French."},
        *MSGS,
    ]
    p = provider(fake, headers={"anthropic-beta": "x"})
    await collect(p, req(messages=messages, temperature=0.2, stop=["END"], seed=3))
    rec = fake.requests[0]
    b = rec.body
    assert b["system"] == "Be brief.\n\nAnswer in French."
    assert b["messages"] == [{"role": "user", "content": [{"type": "text", "text": MSGS[0]["content"]}]}]
    assert all(m["role"] != "system" for m in b["messages"])
    assert b["max_tokens"] == DEFAULT_MAX_TOKENS  # required by the Messages API
    assert b["temperature"] == 0.2 and b["stop_sequences"] == ["END"] and b["stream"] is True
    assert "seed" not in b and "stop" not in b and "response_format" not in b
    assert rec.headers["x-api-key"] == "ant-key"
    assert rec.headers["anthropic-version"] == ANTHROPIC_VERSION
    assert rec.headers["anthropic-beta"] == "x"
    assert "authorization" not in rec.headers


async def test_no_system_field_without_system_messages(fake: FakeUpstream) -> None:
    await provider(fake).complete(req(max_tokens=50))
    b = fake.requests[0].body
    assert "system" not in b and b["max_tokens"] == 50 and b["stream"] is False


async def test_tool_result_messages_become_tool_result_blocks(fake: FakeUpstream) -> None:
    messages = [
        *MSGS,
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "web_search", "arguments": '{"q": "x"}'}},
                {"id": "call_2", "type": "function", "function": {"name": "fetch", "arguments": "{}"}},
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "result one"},
        {"role": "tool", "tool_call_id": "call_2", "content": "result two"},
    ]
    await provider(fake).complete(req(messages=messages))
    sent = fake.requests[0].body["messages"]
    assert [m["role"] for m in sent] == ["user", "assistant", "user"]
    assert sent[1]["content"] == [
        {"type": "tool_use", "id": "call_1", "name": "web_search", "input": {"q": "x"}},
        {"type": "tool_use", "id": "call_2", "name": "fetch", "input": {}},
    ]
    assert sent[2]["content"] == [
        {"type": "tool_result", "tool_use_id": "call_1", "content": "result one"},
        {"type": "tool_result", "tool_use_id": "call_2", "content": "result two"},
    ]


async def test_base_url_with_v1_suffix(fake: FakeUpstream) -> None:
    p = AnthropicProvider("a", fake.anthropic_base_url + "/v1/", "k")
    assert (await p.complete(req())).text
    assert fake.requests[0].path == "/v1/messages"


async def test_fake_providers_anthropic_entry(fake: FakeUpstream) -> None:
    fake.script("claude-x", Script(text="bonjour"))
    p, route = fake_providers(fake).for_model("fakeanthropic/claude-x")
    assert isinstance(p, AnthropicProvider) and route.model == "claude-x"
    assert (await p.complete(ChatRequest(model=route.model, messages=MSGS))).text == "bonjour"


async def test_missing_api_key_is_auth_error(fake: FakeUpstream) -> None:
    p = AnthropicProvider("anthropic", fake.anthropic_base_url, None, api_key_env="MY_ANT_KEY")
    with pytest.raises(AuthError, match="MY_ANT_KEY"):
        await p.complete(req())
    with pytest.raises(AuthError, match="ANTHROPIC_API_KEY"):
        await AnthropicProvider("anthropic", fake.anthropic_base_url).complete(req())
    assert fake.requests == []


@pytest.mark.parametrize("streaming", [True, False])
async def test_rate_limit_with_retry_after(fake: FakeUpstream, streaming: bool) -> None:
    fake.script("claude", Script(failure=Failure.RATE_LIMIT, retry_after=9))
    p = provider(fake)
    with pytest.raises(RateLimitedError) as e:
        await (collect(p, req(timeout=5)) if streaming else p.complete(req(timeout=5)))
    assert e.value.retry_after == 9.0 and e.value.status_code == 429
    assert "Rate limit" in e.value.message  # read from Anthropic's error body shape
    assert len(fake.requests) == 1  # Retry-After beyond the deadline: no wait, no retry


async def test_rate_limit_then_success(fake: FakeUpstream) -> None:
    fake.script("claude", Script(text="ok", failure=Failure.RATE_LIMIT, fail_times=1, retry_after=0.05))
    assert (await provider(fake).complete(req())).text == "ok"
    assert len(fake.requests) == 2


@pytest.mark.parametrize("streaming", [True, False])
@pytest.mark.parametrize(
    ("script", "error"),
    [
        (Script(failure=Failure.HTTP_500), UpstreamError),
        (Script(failure=Failure.HTTP, status_code=529), UpstreamError),
        (Script(failure=Failure.HTTP, status_code=401), AuthError),
        (Script(failure=Failure.HTTP, status_code=404), NotFoundError),
        (Script(failure=Failure.HTTP, status_code=400), BadRequestError),
    ],
    ids=["500", "529", "401", "404", "400"],
)
async def test_http_errors(fake: FakeUpstream, streaming: bool, script: Script, error: type) -> None:
    fake.script("claude", script)
    p = provider(fake)
    with pytest.raises(error) as e:
        await (collect(p, req()) if streaming else p.complete(req()))
    assert type(e.value) is error and e.value.status_code == (script.status_code or 500)
    assert e.value.provider == "anthropic" and e.value.model == "claude"
    expected_requests = 3 if error is UpstreamError else 1  # 5xx retried, 4xx not
    assert len(fake.requests) == expected_requests


async def test_cut_stream_is_upstream_error(fake: FakeUpstream) -> None:
    fake.script("claude", Script(text="a b c d e f", failure=Failure.CUT, cut_after_tokens=2))
    got: list[str] = []
    with pytest.raises(UpstreamError):
        async for ev in provider(fake).stream(req()):
            got.append(ev.text)
    assert "".join(got) == "a b "
    assert len(fake.requests) == 1


async def test_reset_is_upstream_error(fake: FakeUpstream) -> None:
    fake.script("claude", Script(failure=Failure.RESET))
    with pytest.raises(UpstreamError):
        await provider(fake).complete(req())


@pytest.mark.parametrize("streaming", [True, False])
async def test_invalid_json_is_bad_response(fake: FakeUpstream, streaming: bool) -> None:
    fake.script("claude", Script(text="one two three four", failure=Failure.INVALID_JSON))
    p = provider(fake)
    with pytest.raises(BadResponseError):
        await (collect(p, req()) if streaming else p.complete(req()))


@pytest.mark.parametrize("streaming", [True, False])
async def test_refusal_raises_refused_error(fake: FakeUpstream, streaming: bool) -> None:
    fake.script("claude", Script(failure=Failure.REFUSAL))
    p = provider(fake)
    with pytest.raises(RefusedError) as e:
        await (fold_stream("claude", p.stream(req())) if streaming else p.complete(req()))
    assert e.value.kind == "refused" and "refusal" in e.value.message


async def test_refusal_stream_final_event(fake: FakeUpstream) -> None:
    fake.script("claude", Script(failure=Failure.REFUSAL))
    events = await collect(provider(fake), req())
    assert events[-1].finish_reason == "content_filter" and events[-1].refusal


@pytest.mark.parametrize("streaming", [True, False])
async def test_empty_answer(fake: FakeUpstream, streaming: bool) -> None:
    fake.script("claude", Script(failure=Failure.EMPTY))
    p = provider(fake)
    c = await (fold_stream("claude", p.stream(req())) if streaming else p.complete(req()))
    assert c.text == "" and c.finish_reason == "stop"


async def test_max_tokens_finish_reason(fake: FakeUpstream) -> None:
    fake.script("claude", Script(text="cut short", finish_reason="max_tokens"))
    c = await fold_stream("claude", provider(fake).stream(req()))
    assert c.finish_reason == "length"


async def test_list_models(fake: FakeUpstream) -> None:
    fake.models = ["claude-a", "claude-b"]
    assert await provider(fake).list_models() == ["claude-a", "claude-b"]
    rec = fake.requests[-1]
    assert rec.path == "/v1/models" and rec.headers["x-api-key"] == "ant-key"


# ---- pure translators ----------------------------------------------------------------------------


def test_to_anthropic_messages_system_and_merging() -> None:
    system, out = to_anthropic_messages(
        [
            {"role": "system", "content": "A"},
            {"role": "user", "content": "q1"},
            {"role": "user", "content": [{"type": "text", "text": "q2"}]},
            {"role": "system", "content": [{"type": "text", "text": "B"}]},
            {"role": "assistant", "content": "a1"},
        ]
    )
    assert system == "A\n\nB"
    assert out == [
        {"role": "user", "content": [{"type": "text", "text": "q1"}, {"type": "text", "text": "q2"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "a1"}]},
    ]


def test_to_anthropic_messages_no_system() -> None:
    system, out = to_anthropic_messages(MSGS)
    assert system is None and out[0]["role"] == "user"


def test_to_anthropic_messages_tool_calls_and_results() -> None:
    _, out = to_anthropic_messages(
        [
            {"role": "user", "content": "go"},
            {
                "role": "assistant",
                "content": "Searching.",
                "tool_calls": [
                    {"id": "c1", "type": "function", "function": {"name": "s", "arguments": '{"q": 1}'}},
                    {"id": "c2", "type": "function", "function": {"name": "t", "arguments": "not json"}},
                ],
            },
            {"role": "tool", "tool_call_id": "c1", "content": [{"type": "text", "text": "r1"}]},
            {"role": "tool", "tool_call_id": "c2", "content": "r2"},
            {"role": "user", "content": "thanks"},
        ]
    )
    assert [m["role"] for m in out] == ["user", "assistant", "user"]
    assert out[1]["content"] == [
        {"type": "text", "text": "Searching."},
        {"type": "tool_use", "id": "c1", "name": "s", "input": {"q": 1}},
        {"type": "tool_use", "id": "c2", "name": "t", "input": {"_raw": "not json"}},
    ]
    assert out[2]["content"] == [
        {"type": "tool_result", "tool_use_id": "c1", "content": "r1"},
        {"type": "tool_result", "tool_use_id": "c2", "content": "r2"},
        {"type": "text", "text": "thanks"},
    ]


def test_to_anthropic_messages_images() -> None:
    _, out = to_anthropic_messages(
        [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "what is this?"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
                    {"type": "image_url", "image_url": {"url": "https://x.test/cat.jpg"}},
                ],
            }
        ]
    )
    assert out[0]["content"][1:] == [
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AAAA"}},
        {"type": "image", "source": {"type": "url", "url": "https://x.test/cat.jpg"}},
    ]


def test_to_anthropic_tools() -> None:
    assert to_anthropic_tools(None) is None and to_anthropic_tools([]) is None
    tools = [
        {
            "type": "function",
            "function": {"name": "a", "description": "d", "parameters": {"type": "object", "properties": {}}},
        },
        {"type": "function", "function": {"name": "b"}},
        {"name": "c", "parameters": {"type": "object", "required": ["x"]}},  # bare function definition
    ]
    assert to_anthropic_tools(tools) == [
        {"name": "a", "description": "d", "input_schema": {"type": "object", "properties": {}}},
        {"name": "b", "description": "", "input_schema": {"type": "object", "properties": {}}},
        {"name": "c", "description": "", "input_schema": {"type": "object", "required": ["x"]}},
    ]


@pytest.mark.parametrize(
    ("choice", "expected"),
    [
        (None, None),
        ("auto", {"type": "auto"}),
        ("required", {"type": "any"}),
        ("none", {"type": "none"}),
        ({"type": "function", "function": {"name": "web_search"}}, {"type": "tool", "name": "web_search"}),
        ("bogus", None),
    ],
)
def test_to_anthropic_tool_choice(choice: object, expected: dict | None) -> None:
    assert to_anthropic_tool_choice(choice) == expected


# ---- a hand-written upstream for shapes the fake does not produce --------------------------------


@pytest.fixture
async def raw_sse_server():
    """Serve /v1/messages as SSE made of exactly the `frames` list the test sets."""
    from aiohttp import web

    frames: list[bytes] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for f in frames:
            await resp.write(f)
        return resp

    app = web.Application()
    app.router.add_post("/v1/messages", handler)
    async with serving(app) as url:
        yield url, frames


def _sse(event: str, data: object) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data)}\n\n".encode()


async def test_sse_data_that_is_not_an_object_is_bad_response(raw_sse_server) -> None:
    url, frames = raw_sse_server
    frames += [_sse("message_start", [1, 2, 3])]
    with pytest.raises(BadResponseError):
        await collect(AnthropicProvider("a", url, "k"), req())


async def test_mid_stream_error_event_is_upstream_error(raw_sse_server) -> None:
    url, frames = raw_sse_server
    frames += [
        _sse("message_start", {"type": "message_start", "message": {"usage": {"input_tokens": 3}}}),
        _sse(
            "content_block_start",
            {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        ),
        _sse(
            "content_block_delta",
            {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hel"}},
        ),
        _sse("error", {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}),
    ]
    got: list[str] = []
    with pytest.raises(UpstreamError, match="Overloaded"):
        async for ev in AnthropicProvider("a", url, "k").stream(req()):
            got.append(ev.text)
    assert got == ["Hel"]


async def test_stream_without_message_stop_is_upstream_error(raw_sse_server) -> None:
    url, frames = raw_sse_server
    frames += [
        _sse("message_start", {"type": "message_start", "message": {"usage": {"input_tokens": 3}}}),
        _sse(
            "content_block_delta",
            {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hel"}},
        ),
    ]
    with pytest.raises(UpstreamError, match="ended before"):
        await collect(AnthropicProvider("a", url, "k"), req())
