"""The proxy path behaves as OpenAI does: real HTTP through the gateway to the fake upstream, read with
the `openai` SDK wherever it exposes the field."""

from __future__ import annotations

import asyncio
import sqlite3

import httpx
import openai
import pytest

import gateway_helpers
from conftest import fake_providers
from gateway_helpers import Gateway
from panelfuse.config import ProviderConfig
from panelfuse.providers.base import ChatRequest
from panelfuse.server.sse import LastFrame
from panelfuse.service import generations
from panelfuse.store import RunStore
from panelfuse.testing import Failure, Script, tokenize

USER = [{"role": "user", "content": "What is the capital of France?"}]
TEXT = "Paris is the capital of France."
CITATION = {
    "type": "url_citation",
    "url_citation": {"url": "https://example.org/paris", "title": "Paris", "start_index": 0, "end_index": 5},
}


@pytest.fixture
def db(tmp_path):
    return f"sqlite+aiosqlite:///{tmp_path}/runs.db"


@pytest.fixture
def gw(fake, db, monkeypatch):
    """The test gateway (`fake/…` over the OpenAI wire, `fake/m1` priced) plus `fakeanthropic/…` over
    the Anthropic wire."""
    base = gateway_helpers.gateway_config

    def config(upstream):
        cfg = base(upstream)
        anthropic = ProviderConfig(kind="anthropic", base_url=upstream.anthropic_base_url, api_key="upstream-key")
        return cfg.model_copy(update={"providers": {**cfg.providers, "fakeanthropic": anthropic}})

    monkeypatch.setattr(gateway_helpers, "gateway_config", config)
    g = Gateway(fake, db).start()
    yield g
    g.stop()


@pytest.fixture
def sdk(gw):
    with openai.OpenAI(base_url=f"{gw.url}/v1", api_key="unused", max_retries=0) as c:
        yield c


def stored_generation(db: str, gen_id: str) -> generations.Generation | None:
    async def read() -> generations.Generation | None:
        store = await RunStore.open(db)
        try:
            return await generations.get(store, gen_id, key_id=None)
        finally:
            await store.close()

    return asyncio.run(read())


def generation_count(tmp_path) -> int:
    with sqlite3.connect(tmp_path / "runs.db") as conn:
        return int(conn.execute("SELECT count(*) FROM generations").fetchone()[0])


# --- 1. usage.cost ---------------------------------------------------------------------------------


def test_cost_is_computed_from_the_price_table_when_the_upstream_reports_none(fake, sdk):
    fake.script("m1", Script(text=TEXT, prompt_tokens=1000, completion_tokens=500))
    expected = (1000 * 1.0 + 500 * 2.0) / 1_000_000  # fake/m1: $1 in, $2 out per million
    r = sdk.chat.completions.create(model="fake/m1", messages=USER)
    assert r.usage.model_extra["cost"] == pytest.approx(expected)
    chunks = list(
        sdk.chat.completions.create(model="fake/m1", messages=USER, stream=True, stream_options={"include_usage": True})
    )
    usage = [c.usage for c in chunks if c.usage is not None]
    assert len(usage) == 1 and usage[0].model_extra["cost"] == pytest.approx(expected)
    assert chunks[-1].choices == []  # the usage chunk, as OpenAI sends it


def test_the_upstream_cost_wins_and_an_unpriced_model_has_none(fake, sdk):
    fake.script("m1", Script(text=TEXT, prompt_tokens=1000, completion_tokens=500, cost=0.5))
    assert sdk.chat.completions.create(model="fake/m1", messages=USER).usage.model_extra["cost"] == 0.5
    stream = sdk.chat.completions.create(model="fake/m1", messages=USER, stream=True)
    assert [c.usage.model_extra["cost"] for c in stream if c.usage] == [0.5]
    fake.script("plain", Script(text=TEXT))
    r = sdk.chat.completions.create(model="fake/plain", messages=USER)
    assert "cost" not in r.usage.model_extra  # no price, no reported cost: nothing to say


# --- 2. logprobs, annotations, token details -------------------------------------------------------


def test_logprobs_annotations_and_token_details_pass_through(fake, sdk):
    fake.script("plain", Script(text=TEXT, annotations=[CITATION], cached_tokens=3, reasoning_tokens=5))
    r = sdk.chat.completions.create(model="fake/plain", messages=USER, logprobs=True, top_logprobs=2)
    sent = fake.requests_for("plain")[-1]
    assert sent.stream is False and sent.body["logprobs"] is True and sent.body["top_logprobs"] == 2
    choice = r.choices[0]
    assert [t.token for t in choice.logprobs.content] == tokenize(TEXT)
    assert all(len(t.top_logprobs) == 2 and t.logprob < 0 for t in choice.logprobs.content)
    (annotation,) = choice.message.annotations
    assert annotation.type == "url_citation" and annotation.url_citation.url == "https://example.org/paris"
    assert r.usage.prompt_tokens_details.cached_tokens == 3
    assert r.usage.completion_tokens_details.reasoning_tokens == 5


def test_logprobs_annotations_and_token_details_pass_through_a_stream(fake, sdk):
    fake.script("plain", Script(text=TEXT, annotations=[CITATION], cached_tokens=3, reasoning_tokens=5))
    chunks = list(
        sdk.chat.completions.create(model="fake/plain", messages=USER, stream=True, logprobs=True, top_logprobs=1)
    )
    choices = [c.choices[0] for c in chunks if c.choices]
    assert "".join(ch.delta.content or "" for ch in choices) == TEXT
    tokens = [t for ch in choices if ch.logprobs and ch.logprobs.content for t in ch.logprobs.content]
    assert [t.token for t in tokens] == tokenize(TEXT) and all(len(t.top_logprobs) == 1 for t in tokens)
    annotations = [a for ch in choices for a in (ch.delta.model_extra or {}).get("annotations") or []]
    assert annotations == [CITATION]
    (usage,) = [c.usage for c in chunks if c.usage]
    assert usage.prompt_tokens_details.cached_tokens == 3
    assert usage.completion_tokens_details.reasoning_tokens == 5


def test_nothing_extra_appears_when_the_upstream_sends_none(fake, sdk):
    fake.script("plain", Script(text=TEXT))
    r = sdk.chat.completions.create(model="fake/plain", messages=USER)
    assert r.choices[0].logprobs is None and r.choices[0].message.annotations is None
    assert r.usage.prompt_tokens_details is None and r.usage.completion_tokens_details is None


# --- 3. n > 1 --------------------------------------------------------------------------------------


def test_n_choices_come_back_each_with_its_index(fake, sdk):
    texts = ["First answer.", "Second answer here.", "Third."]
    fake.script("plain", Script(choice_texts=texts))
    r = sdk.chat.completions.create(model="fake/plain", messages=USER, n=3)
    assert fake.requests_for("plain")[-1].body["n"] == 3
    assert [c.index for c in r.choices] == [0, 1, 2]
    assert [c.message.content for c in r.choices] == texts
    assert all(c.finish_reason == "stop" for c in r.choices)
    assert r.usage.completion_tokens == sum(len(tokenize(t)) for t in texts)


def test_n_choices_stream_as_chunks_per_index(fake, sdk):
    texts = ["First answer.", "Second answer here.", "Third."]
    fake.script("plain", Script(choice_texts=texts))
    chunks = list(sdk.chat.completions.create(model="fake/plain", messages=USER, n=3, stream=True))
    got: dict[int, str] = {}
    finishes: dict[int, str] = {}
    for c in chunks:
        assert len(c.choices) <= 1
        for ch in c.choices:
            got[ch.index] = got.get(ch.index, "") + (ch.delta.content or "")
            if ch.finish_reason:
                finishes[ch.index] = ch.finish_reason
    assert got == dict(enumerate(texts)) and finishes == {0: "stop", 1: "stop", 2: "stop"}
    roles = [ch.index for c in chunks for ch in c.choices if ch.delta.role == "assistant"]
    assert roles == [0, 1, 2]


def test_an_n_beyond_openais_limit_is_a_400(fake, sdk):
    with pytest.raises(openai.BadRequestError) as info:  # the gateway's check or the upstream's, passed on
        sdk.chat.completions.create(model="fake/plain", messages=USER, n=500)
    assert info.value.body["param"] == "n" or info.value.body["metadata"]["error_code"] == "upstream_bad_request"
    # the fake refuses it as OpenAI does, so a test never asks it for 500 answers
    with openai.OpenAI(base_url=fake.openai_base_url, api_key="k", max_retries=0) as direct:
        with pytest.raises(openai.BadRequestError) as info:
            direct.chat.completions.create(model="plain", messages=USER, n=500)
    assert "Invalid 'n'" in info.value.message


def test_n_on_a_provider_that_cannot_is_a_400(fake, sdk):
    with pytest.raises(openai.BadRequestError) as info:
        sdk.chat.completions.create(model="fakeanthropic/claude", messages=USER, n=2)
    assert info.value.body["param"] == "n"
    assert info.value.body["metadata"]["error_code"] == "unsupported_parameter"
    assert fake.requests == []  # refused before any upstream call
    fake.script("claude", Script(text=TEXT))
    r = sdk.chat.completions.create(model="fakeanthropic/claude", messages=USER, n=1)
    assert r.choices[0].message.content == TEXT
    assert "n" not in fake.requests_for("claude")[-1].body  # Anthropic has no `n`: never sent


# --- 4. a conversation without a user turn ---------------------------------------------------------


@pytest.mark.parametrize(
    "messages",
    [
        [{"role": "system", "content": "Say hello."}],
        [{"role": "system", "content": "Be brief."}, {"role": "assistant", "content": "Paris is"}],
    ],
)
def test_a_conversation_without_a_user_turn_is_proxied_as_is(fake, sdk, messages):
    fake.script("plain", Script(text=TEXT))
    r = sdk.chat.completions.create(model="fake/plain", messages=messages)
    assert r.choices[0].message.content == TEXT
    assert fake.requests_for("plain")[-1].body["messages"] == messages


# --- 5. generation records -------------------------------------------------------------------------


def test_each_proxied_completion_is_recorded_under_its_id(fake, sdk, db):
    fake.script("m1", Script(text=TEXT, prompt_tokens=1000, completion_tokens=500))
    raw = sdk.chat.completions.with_raw_response.create(model="fake/m1", messages=USER)
    r = raw.parse()
    assert raw.headers["x-generation-id"] == r.id
    gen = stored_generation(db, r.id)
    assert gen is not None
    assert (gen.kind, gen.model, gen.streamed, gen.finish_reason) == ("chat", "fake/m1", False, "stop")
    assert (gen.prompt_tokens, gen.completion_tokens) == (1000, 500)
    assert gen.cost == pytest.approx(r.usage.model_extra["cost"]) and gen.latency_ms >= 0
    assert gen.key_id is None and gen.run_id is None

    raw_stream = sdk.chat.completions.with_raw_response.create(model="fake/m1", messages=USER, stream=True)
    chunks = list(raw_stream.parse())
    assert {c.id for c in chunks} == {raw_stream.headers["x-generation-id"]}
    gen = stored_generation(db, chunks[0].id)
    assert gen is not None and gen.streamed is True and gen.finish_reason == "stop"
    assert (gen.prompt_tokens, gen.completion_tokens) == (1000, 500)
    assert gen.cost == pytest.approx(0.002)


def test_a_keyed_completion_is_recorded_with_its_key_and_charged_its_cost(fake, db):
    async def create_key():
        store = await RunStore.open(db)
        try:
            return await store.keys.create("proxy", budget_usd=1.0)
        finally:
            await store.close()

    key = asyncio.run(create_key())
    g = Gateway(fake, db).start()
    try:
        fake.script("m1", Script(text=TEXT, prompt_tokens=1000, completion_tokens=500))
        headers = {"Authorization": f"Bearer {key.secret}"}
        body = {"model": "fake/m1", "messages": USER}
        r = httpx.post(f"{g.url}/v1/chat/completions", json=body, headers=headers, timeout=30)
        assert r.status_code == 200, r.text
        gen = stored_generation(db, r.headers["x-generation-id"])
        assert gen is not None and gen.key_id == key.key.id and gen.cost == pytest.approx(0.002)

        async def spent() -> tuple[float, float]:
            store = await RunStore.open(db)
            try:
                fresh = await store.keys.get(key.key.id)
                assert fresh is not None
                return fresh.remaining_usd, fresh.reserved_usd
            finally:
                await store.close()

        remaining, reserved = asyncio.run(spent())
        assert reserved == 0.0 and remaining == pytest.approx(1.0 - 0.002)
    finally:
        g.stop()


def test_a_failed_completion_leaves_no_record(fake, sdk, tmp_path):
    fake.script("plain", Script(failure=Failure.HTTP, status_code=400))
    with pytest.raises(openai.BadRequestError):
        sdk.chat.completions.create(model="fake/plain", messages=USER)
    fake.script("plain", Script(text="word " * 20, failure=Failure.CUT))
    with httpx.stream(
        "POST", f"{sdk.base_url}chat/completions", json={"model": "fake/plain", "messages": USER, "stream": True}
    ) as r:
        assert r.status_code == 200 and "x-generation-id" in r.headers  # sent before the upstream broke
        body = r.read().decode()
    assert '"error"' in body  # the mid-stream error chunk
    assert generation_count(tmp_path) == 0


# --- the adapter under the proxy -------------------------------------------------------------------


@pytest.mark.parametrize("streaming", [True, False])
async def test_the_openai_adapter_keeps_each_choices_tool_calls_apart(fake, streaming):
    call = {"name": "lookup", "arguments": {"q": "paris", "page": 2}}
    fake.script("m", Script(tool_calls=[call]))
    provider, route = fake_providers(fake).for_model("fake/m")
    req = ChatRequest(model=route.model, messages=USER, n=2, timeout=10)
    events = [ev async for ev in (provider.stream(req) if streaming else provider.complete_events(req))]
    assert fake.requests_for("m")[-1].body["n"] == 2
    finished = {ev.index: ev for ev in events if ev.finish_reason}
    assert sorted(finished) == [0, 1]
    for ev in finished.values():  # interleaved fragments of one tool index, joined per choice
        (tool,) = ev.tool_calls
        assert tool.name == "lookup" and tool.arguments == '{"q": "paris", "page": 2}'
        assert ev.finish_reason == "tool_calls"


def test_the_plain_streaming_loop_reads_a_proxied_stream_to_the_end(fake, sdk):
    # Without stream_options.include_usage the usage rides on a last chunk that keeps choices[0], as
    # OpenRouter sends it: `chunk.choices[0]` is safe on every chunk.
    fake.script("m1", Script(text=TEXT, prompt_tokens=1000, completion_tokens=500))
    stream = sdk.chat.completions.create(model="fake/m1", messages=USER, stream=True)
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == TEXT
    assert chunks[-1].usage is not None and chunks[-1].choices[0].finish_reason is None
    assert [c.choices[0].finish_reason for c in chunks if c.choices[0].finish_reason] == ["stop"]


def recorded_frames(monkeypatch) -> list[str]:
    """The frames the proxy hands its response, each one write, as the response takes them."""
    from panelfuse.server import proxy

    handed: list[str] = []
    real = proxy.sse_response

    def recording(source, **kwargs):
        async def frames():
            async for frame in source:
                handed.append(frame)
                yield frame

        return real(frames(), **kwargs)

    monkeypatch.setattr(proxy, "sse_response", recording)
    return handed


def test_what_arrives_in_one_read_goes_out_in_one_write(fake, sdk, monkeypatch):
    handed = recorded_frames(monkeypatch)
    fake.script("m1", Script(text=TEXT, burst=True))  # the whole answer in one read
    chunks = list(sdk.chat.completions.create(model="fake/m1", messages=USER, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == TEXT
    assert chunks[0].choices[0].delta.role == "assistant" and chunks[-1].usage is not None
    # the role, the text, its finish and the usage in one write; [DONE] with the end of the body
    assert len(handed) == 2
    assert isinstance(handed[-1], LastFrame) and handed[-1] == "data: [DONE]\n\n"


def test_tokens_that_arrive_one_per_read_are_not_held_back(fake, sdk, monkeypatch):
    handed = recorded_frames(monkeypatch)
    fake.script("m1", Script(text=TEXT, token_rate=100))
    chunks = list(sdk.chat.completions.create(model="fake/m1", messages=USER, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == TEXT
    assert len(handed) >= len(tokenize(TEXT))  # a write per token as it came


def test_a_whole_answer_past_the_size_cap_is_refused_not_read(fake, gateway, monkeypatch):
    # An upstream that ignores max_tokens on a non-streamed call: the gateway reads no more than the
    # cap and answers 502 with the reason, rather than holding the whole answer in memory.
    from panelfuse.providers import http as provider_http
    from panelfuse.testing import Failure, Script

    monkeypatch.setattr(provider_http, "MAX_ANSWER_BYTES", 4096)
    fake.script("m1", Script(failure=Failure.OVERSIZE, oversize_tokens=5000))
    body = {"model": "fake/m1", "messages": [{"role": "user", "content": "q"}]}
    r = httpx.post(f"{gateway.url}/v1/chat/completions", json=body, timeout=30)
    assert r.status_code == 502
    assert "larger than" in r.json()["error"]["message"]
    fake.script("m1", Script(text="small"))
    assert httpx.post(f"{gateway.url}/v1/chat/completions", json=body, timeout=30).status_code == 200
