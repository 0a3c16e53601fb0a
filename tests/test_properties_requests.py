"""Property tests over the request edge (issue 15): arbitrary JSON-ish bodies around the chat
completions and Responses schemas, sent as raw JSON text to a real gateway on loopback (fake upstream
behind it). Whatever the body, the answer is never a 5xx; a 4xx carries OpenAI's `error.message` and
`error.type`; a 200 is a well-formed completion (or response, or SSE stream).

Bodies carry what a careless or hostile client sends: random types in each field, random nesting,
integers past 64 bits, NaN/Infinity literals, NUL and lone surrogates (escaped in the JSON text)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from gateway_helpers import Gateway
from panelfuse.testing import FakeUpstream, Script
from pipeline_helpers import script_panel

ODD_STRINGS = ["", "\x00", "a\x00b", "\ud800", "\udfff", "NaN", "Infinity", "1e400", "-1", "null", "é✓🙂"]
HUGE_INTS = [10**400, -(10**30), 2**63, 2**64, 2**31, -1, 0]
MODELS = [
    "fake/m1",
    "fake/m2",
    "panelfuse/fusion",
    "panelfuse/fusion-test",
    "openrouter/fusion",
    "panelfuse/fusion-nope",
    "fake/m1:free",
]

text = st.one_of(st.text(max_size=12), st.text("abc xyz", max_size=12), st.sampled_from(ODD_STRINGS))
number = st.one_of(
    st.integers(-5, 300),
    st.sampled_from(HUGE_INTS),
    st.floats(allow_nan=True, allow_infinity=True),
)
leaf = st.one_of(st.none(), st.booleans(), number, text)
junk = st.recursive(
    leaf,
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(text, inner, max_size=3)),
    max_leaves=12,
)
# Occasionally much deeper than the gateway's limit (64 levels).
deep = st.integers(1, 200).map(lambda n: json.loads("[" * n + "]" * n))


def maybe(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Usually a plausible value, sometimes anything at all (often enough that most bodies are refused,
    rarely enough that some reach the upstream and come back as completions)."""
    return st.one_of(*[strategy] * 6, junk)


part = st.fixed_dictionaries(
    {"type": maybe(st.sampled_from(["text", "image_url", "input_text", "hologram"]))},
    optional={"text": maybe(text), "image_url": maybe(st.fixed_dictionaries({"url": text}))},
)
message = st.fixed_dictionaries(
    {
        "role": maybe(st.sampled_from(["user", "system", "assistant", "developer", "tool", "wizard"])),
        "content": maybe(st.one_of(text, st.lists(part, max_size=3))),
    },
    optional={"name": maybe(text), "tool_call_id": maybe(text)},
)
member = st.one_of(
    st.sampled_from(MODELS),
    st.fixed_dictionaries(
        {"model": maybe(st.sampled_from(MODELS))},
        optional={
            "weight": maybe(number),
            "temperature": maybe(number),
            "fallbacks": maybe(st.lists(text, max_size=2)),
        },
    ),
)
plugin = st.fixed_dictionaries(
    {"id": maybe(st.sampled_from(["fusion", "web", "other"]))},
    optional={
        "analysis_models": maybe(st.lists(member, max_size=4)),
        # The judge must answer with an analysis: the fake's judge, or something the gateway refuses.
        "model": st.one_of(st.just("fake/judge"), st.sampled_from(["panelfuse/fusion", ""]), junk),
        "mode": maybe(st.sampled_from(["synthesize", "judge-writes", "best-of", "single", "full", "fast", "x"])),
        "weights": maybe(st.dictionaries(st.sampled_from(["A", "B", "fake/m1"]), number, max_size=2)),
        "quorum": maybe(number),
        "deadline_ms": maybe(st.sampled_from([100, 5000, 10**12, -1])),
        "grace_ms": maybe(number),
        "hedge_ms": maybe(number),
        "max_cost": maybe(number),
        "max_completion_tokens": maybe(number),
        "temperature": maybe(number),
        "tools": maybe(st.lists(st.sampled_from(["web_search", {"type": "openrouter:web_search"}]), max_size=2)),
        "reasoning": junk,
        "enabled": maybe(st.booleans()),
    },
)
fusion_tool = st.fixed_dictionaries(
    {"type": st.sampled_from(["openrouter:fusion", "panelfuse:fusion"])},
    optional={"parameters": st.one_of(junk, plugin.map(lambda p: {k: v for k, v in p.items() if k != "id"}))},
)
chat_body = st.fixed_dictionaries(
    {"model": maybe(st.sampled_from(MODELS)), "messages": maybe(st.lists(message, min_size=1, max_size=3))},
    optional={
        "stream": maybe(st.booleans()),
        "max_tokens": maybe(number),
        "max_completion_tokens": maybe(number),
        "temperature": maybe(number),
        "top_p": maybe(number),
        "n": maybe(st.integers(-1, 3)),
        "seed": maybe(number),
        "stop": maybe(st.one_of(text, st.lists(text, max_size=5))),
        "plugins": maybe(st.lists(plugin, max_size=2)),
        "tools": maybe(st.lists(fusion_tool, max_size=2)),
        "response_format": maybe(st.sampled_from([{"type": "text"}, {"type": "json_object"}])),
        "metadata": st.one_of(junk, junk, deep),
        "user": maybe(text),
        "frequency_penalty": number,
    },
)
responses_body = st.fixed_dictionaries(
    {"model": maybe(st.sampled_from(MODELS)), "input": maybe(st.one_of(text, st.lists(message, max_size=2)))},
    optional={
        "instructions": maybe(text),
        "max_output_tokens": maybe(number),
        "temperature": maybe(number),
        "plugins": maybe(st.lists(plugin, max_size=1)),
        "metadata": maybe(st.dictionaries(text, text, max_size=3)),
        "previous_response_id": maybe(text),
        "text": st.one_of(junk, deep),
        "store": maybe(st.booleans()),
    },
)


@pytest.fixture(scope="module")
def gateway_url(tmp_path_factory) -> Iterator[str]:
    with FakeUpstream() as fake:
        fake.default = Script(text="fine")
        script_panel(fake)
        db = tmp_path_factory.mktemp("properties") / "runs.db"
        gw = Gateway(fake, f"sqlite+aiosqlite:///{db}").start()
        try:
            yield gw.url
        finally:
            gw.stop()


def raw_json(body: dict[str, Any]) -> bytes:
    # ensure_ascii: lone surrogates and NUL travel as \\u escapes; allow_nan: NaN/Infinity as literals.
    return json.dumps(body, ensure_ascii=True, allow_nan=True).encode()


def check_error(r: httpx.Response) -> None:
    err = r.json()["error"]
    event(f"refused: {str(err.get('param')).split('.')[0].split('[')[0]}")
    assert isinstance(err["message"], str) and err["message"], r.text
    assert isinstance(err["type"], str) and err["type"], r.text


def sse_payloads(r: httpx.Response) -> list[Any]:
    frames = [ln[6:] for ln in r.text.splitlines() if ln.startswith("data: ")]
    return [f if f == "[DONE]" else json.loads(f) for f in frames]


def check_chat(r: httpx.Response) -> None:
    event(f"status {r.status_code}")
    assert r.status_code < 500, f"{r.status_code} {r.text[:500]}"
    if r.status_code >= 400:
        check_error(r)
        return
    assert r.status_code == 200, r.text[:300]
    if r.headers["content-type"].startswith("text/event-stream"):
        frames = sse_payloads(r)
        assert frames, r.text[:300]
        for f in frames:
            assert f == "[DONE]" or f["object"] == "chat.completion.chunk" or "error" in f, f
        return
    out = r.json()
    assert out["object"] == "chat.completion" and out["choices"], out
    for choice in out["choices"]:
        assert choice["message"]["role"] == "assistant"
        assert choice["message"]["content"] is None or isinstance(choice["message"]["content"], str)


def check_response(r: httpx.Response) -> None:
    event(f"status {r.status_code}")
    assert r.status_code < 500, f"{r.status_code} {r.text[:500]}"
    if r.status_code >= 400:
        check_error(r)
        return
    assert r.status_code == 200
    if r.headers["content-type"].startswith("text/event-stream"):
        assert all(isinstance(f, dict) and "type" in f for f in sse_payloads(r) if f != "[DONE]")
        return
    out = r.json()
    assert out["object"] == "response" and isinstance(out["output"], list), out


PROPERTY = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)


@given(body=chat_body)
@PROPERTY
def test_chat_completions_never_5xx(gateway_url, body):
    r = httpx.post(
        f"{gateway_url}/v1/chat/completions",
        content=raw_json(body),
        headers={"content-type": "application/json"},
        timeout=60,
    )
    check_chat(r)


@given(body=responses_body)
@settings(PROPERTY, max_examples=60)
def test_responses_never_5xx(gateway_url, body):
    r = httpx.post(
        f"{gateway_url}/v1/responses", content=raw_json(body), headers={"content-type": "application/json"}, timeout=60
    )
    check_response(r)


@given(body=st.one_of(junk, deep, st.lists(junk, max_size=2)))
@settings(PROPERTY, max_examples=60)
def test_any_json_at_all_is_never_5xx(gateway_url, body):
    for path in ("/v1/chat/completions", "/v1/responses", "/v1/fusion/estimate"):
        r = httpx.post(
            f"{gateway_url}{path}", content=raw_json(body), headers={"content-type": "application/json"}, timeout=60
        )
        assert r.status_code < 500, f"{path}: {r.status_code} {r.text[:500]}"
        if r.status_code >= 400:
            check_error(r)


valid_text = st.one_of(st.text(max_size=20), st.sampled_from(["a\x00b", "é✓🙂", " "]))
valid_body = st.fixed_dictionaries(
    {
        "model": st.sampled_from(["fake/m1", "fake/m2", "panelfuse/fusion", "panelfuse/fusion-test"]),
        "messages": st.lists(
            st.fixed_dictionaries({"role": st.just("user"), "content": valid_text}), min_size=1, max_size=3
        ),
    },
    optional={
        "stream": st.booleans(),
        "max_tokens": st.integers(1, 100_000),
        "temperature": st.floats(0, 2),
        "top_p": st.floats(0, 1),
        "seed": st.integers(-(2**63), 2**63 - 1),
        "stop": st.lists(st.text("xyz", min_size=1, max_size=3), max_size=4),
        "metadata": st.dictionaries(st.text(max_size=5), st.text(max_size=5), max_size=3),
        "user": st.text("abc", max_size=8),
    },
)


@given(body=valid_body)
@settings(PROPERTY, max_examples=40)
def test_valid_chat_bodies_are_answered(gateway_url, body):
    """The other side of the edge: what is within every limit is answered, not refused."""
    r = httpx.post(
        f"{gateway_url}/v1/chat/completions",
        content=raw_json(body),
        headers={"content-type": "application/json"},
        timeout=60,
    )
    assert r.status_code == 200, r.text[:500]
    check_chat(r)
