"""The response cache through a real gateway (uvicorn in a thread, SQLite) over the fake upstream:
hits, misses, expiry, the opt-out headers, what is never cached, streamed hits through the `openai`
SDK, the other entry points (Responses, Messages, MCP), and one cache per key."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import anthropic
import httpx
import openai
import pytest
import sqlalchemy as sa

from gateway_helpers import TEST_PRESET, Gateway, gateway_config
from panelfuse.store import RunStore
from panelfuse.testing import Failure, FakeUpstream, Script
from pipeline_helpers import judge_script, script_panel

ANSWER = "The sky is blue because air scatters short wavelengths."
QUESTION = [{"role": "user", "content": "Why is the sky blue?"}]
OTHER_PRESET = {**TEST_PRESET, "members": ["fake/m1", "fake/m2"], "cache_ttl_s": 600}


def cached_config(fake: FakeUpstream, ttl: int | None = 600):
    cfg = gateway_config(fake)
    test = {**TEST_PRESET, **({"cache_ttl_s": ttl} if ttl is not None else {})}
    return cfg.model_copy(update={"presets": {"test": test, "other": OTHER_PRESET}})


@pytest.fixture
def db(tmp_path):
    return f"sqlite+aiosqlite:///{tmp_path}/runs.db"


@pytest.fixture
def gw(fake, db):
    g = Gateway(fake, db, config=cached_config(fake)).start()
    yield g
    g.stop()


def upstream_calls(fake: FakeUpstream) -> int:
    return sum(1 for r in list(fake.requests) if r.method == "POST")


def ask(gw: Gateway, body: dict[str, Any] | None = None, *, key: str | None = None, **headers: str) -> httpx.Response:
    body = {"model": "panelfuse/fusion", "messages": QUESTION, **(body or {})}
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    return httpx.post(f"{gw.url}/v1/chat/completions", json=body, headers=headers, timeout=30)


def store_work(db: str, work):
    async def go():
        store = await RunStore.open(db)
        try:
            return await work(store)
        finally:
            await store.close()

    return asyncio.run(go())


# ---- a hit ---------------------------------------------------------------------------------------------


def test_an_identical_request_is_answered_from_the_cache_at_no_cost(fake, gw):
    script_panel(fake)
    first = ask(gw)
    assert first.status_code == 200 and first.headers["x-panelfuse-cache"] == "miss"
    paid = first.json()
    assert paid["fusion"]["cached"] is False and paid["usage"]["cost"] > 0 and paid["fusion"]["calls"] == 5
    calls = upstream_calls(fake)
    assert calls == 5  # three members, the judge, the synthesizer

    second = ask(gw)
    assert second.status_code == 200 and second.headers["x-panelfuse-cache"] == "hit"
    assert upstream_calls(fake) == calls  # nobody was called
    hit = second.json()
    assert hit["choices"][0]["message"]["content"] == ANSWER == paid["choices"][0]["message"]["content"]
    assert hit["choices"][0]["finish_reason"] == "stop" and hit["model"] == "fake/synth"
    assert hit["usage"]["cost"] == 0 and hit["usage"]["prompt_tokens"] == hit["usage"]["completion_tokens"] == 0
    fusion = hit["fusion"]
    assert fusion["cached"] is True and fusion["cached_from"] == paid["fusion"]["run_id"]
    assert fusion["run_id"] != paid["fusion"]["run_id"] and fusion["calls"] == 0
    assert fusion["degraded"] is False and fusion["analysis"] == paid["fusion"]["analysis"]
    assert [m["content"] for m in fusion["panel"]] == [m["content"] for m in paid["fusion"]["panel"]]

    # Recorded as a run of its own: the runs list, the run record and /v1/generation all see it.
    run_id = fusion["run_id"]
    run = httpx.get(f"{gw.url}/v1/fusion/runs/{run_id}", timeout=10).json()
    assert run["status"] == "completed" and run["cost"] == 0 and run["degraded"] is False
    assert run["result"]["cached"] is True and run["result"]["cached_from"] == paid["fusion"]["run_id"]
    assert run["result"]["calls"] == 0 and run["content"] == ANSWER
    listed = httpx.get(f"{gw.url}/v1/fusion/runs", timeout=10).json()["data"]
    assert {r["id"] for r in listed} >= {run_id, paid["fusion"]["run_id"]}
    gen = httpx.get(f"{gw.url}/v1/generation", params={"id": hit["id"]}, timeout=10).json()["data"]
    assert gen["total_cost"] == 0
    events = httpx.get(f"{gw.url}/v1/fusion/runs/{run_id}/events", timeout=10).text
    types = [json.loads(line[6:])["type"] for line in events.splitlines() if line.startswith("data: {")]
    assert types == ["run.started", "final.delta", "final.completed", "run.completed"]


def test_a_hit_reserves_no_budget_and_charges_nothing(fake, db):
    key = store_work(db, lambda s: s.keys.create("team", budget_usd=1.0))
    g = Gateway(fake, db, config=cached_config(fake)).start()
    try:
        script_panel(fake)
        paid = ask(g, key=key.secret)
        assert paid.status_code == 200
        spent = store_work(db, lambda s: s.keys.get(key.key.id)).spent_usd
        assert spent > 0
        hit = ask(g, key=key.secret)
        assert hit.headers["x-panelfuse-cache"] == "hit"
        after = store_work(db, lambda s: s.keys.get(key.key.id))
        assert (after.spent_usd, after.reserved_usd) == (spent, 0)

        async def reservations(store):
            async with store.engine.connect() as conn:
                return (await conn.execute(sa.text("SELECT run_id FROM budget_reservations"))).scalars().all()

        assert store_work(db, reservations) == [paid.json()["fusion"]["run_id"]]  # none for the hit
    finally:
        g.stop()


def test_rate_limits_still_apply_to_a_hit(fake, db):
    key = store_work(db, lambda s: s.keys.create("team", rpm=2))
    g = Gateway(fake, db, config=cached_config(fake)).start()
    try:
        script_panel(fake)
        assert ask(g, key=key.secret).status_code == 200
        assert ask(g, key=key.secret).headers["x-panelfuse-cache"] == "hit"
        assert ask(g, key=key.secret).status_code == 429  # a hit is still a request
    finally:
        g.stop()


# ---- misses --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "changed",
    [
        {"plugins": [{"id": "fusion", "analysis_models": ["fake/m1", "fake/m2"]}]},  # another member set
        {"plugins": [{"id": "fusion", "mode": "single"}]},  # another mode
        {"model": "panelfuse/fusion-other"},  # another preset
        {"plugins": [{"id": "fusion", "model": "fake/judge2"}]},  # another judge
        {"temperature": 0.2},  # an answer setting
        {"response_format": {"type": "json_object"}},
        {"messages": [{"role": "user", "content": "Why is the sea blue?"}]},  # another message
        {"messages": [{"role": "system", "content": "Be brief."}, *QUESTION]},
    ],
    ids=["members", "mode", "preset", "judge", "temperature", "response_format", "message", "system"],
)
def test_a_changed_spec_or_message_misses(fake, gw, changed):
    script_panel(fake)
    fake.script("judge2", judge_script)
    assert ask(gw).headers["x-panelfuse-cache"] == "miss"
    calls = upstream_calls(fake)
    other = ask(gw, changed)
    assert other.status_code == 200 and other.headers["x-panelfuse-cache"] == "miss"
    assert upstream_calls(fake) > calls and other.json()["fusion"]["cached"] is False
    # each is cached under its own key: asked again, both are hits
    calls = upstream_calls(fake)
    assert ask(gw, changed).headers["x-panelfuse-cache"] == "hit"
    assert ask(gw).headers["x-panelfuse-cache"] == "hit"
    assert upstream_calls(fake) == calls


@pytest.mark.parametrize(
    ("fields", "fact"),
    [({"mode": "vote"}, "vote"), ({"mode": "escalate", "escalation": {"rule": "final-answer"}}, "escalation")],
)
def test_a_hit_keeps_the_modes_facts(fake, gw, fields, fact):
    for model in ("m1", "m2", "m3"):
        fake.script(model, Script(text="The answer is 42.", prompt_tokens=10, completion_tokens=20))
    body = {"messages": [{"role": "user", "content": "What is 6 x 7?"}], "plugins": [{"id": "fusion", **fields}]}
    paid = ask(gw, body).json()["fusion"]
    assert paid[fact] is not None and paid["degraded"] is False
    calls = upstream_calls(fake)
    hit = ask(gw, body)
    assert hit.headers["x-panelfuse-cache"] == "hit" and upstream_calls(fake) == calls
    fusion = hit.json()["fusion"]
    assert fusion[fact] == paid[fact] and fusion["mode"] == paid["mode"] and fusion["calls"] == 0
    assert fusion["escalated"] == paid["escalated"]


def test_an_equivalent_request_hits(fake, gw):
    script_panel(fake)
    assert ask(gw).headers["x-panelfuse-cache"] == "miss"
    same = {"messages": [{"role": "user", "content": [{"type": "text", "text": " Why is the sky blue?\n"}]}]}
    r = ask(gw, {**same, "stream": False, "plugins": [{"id": "fusion", "include_panel": False}]})
    assert r.headers["x-panelfuse-cache"] == "hit"


def test_an_entry_expires(fake, gw):
    script_panel(fake)
    first = ask(gw).json()["fusion"]["run_id"]
    assert ask(gw).headers["x-panelfuse-cache"] == "hit"
    cache = gw.app.state.fusion_service.cache
    later = datetime.now(UTC) + timedelta(seconds=601)  # past the preset's 600 s
    cache.clock = lambda: later
    calls = upstream_calls(fake)
    expired = ask(gw)
    assert expired.headers["x-panelfuse-cache"] == "miss" and upstream_calls(fake) > calls
    assert expired.json()["fusion"]["cached"] is False
    # the fresh answer replaced the entry: it is what is served now
    again = ask(gw).json()["fusion"]
    assert again["cached"] is True and again["cached_from"] == expired.json()["fusion"]["run_id"] != first


def test_an_aged_row_is_not_served(fake, gw, db):
    """The same through the table itself: an entry whose expires_at has passed is never read."""
    script_panel(fake)
    ask(gw)

    async def age(store):
        async with store.engine.begin() as conn:
            await conn.execute(sa.text("UPDATE response_cache SET expires_at = '2000-01-01 00:00:00.000000'"))

    store_work(db, age)
    assert ask(gw).headers["x-panelfuse-cache"] == "miss"


def test_off_unless_asked_and_the_gateway_default(fake, db):
    script_panel(fake)
    g = Gateway(fake, db, config=cached_config(fake, ttl=None)).start()
    try:
        first = ask(g)
        assert "x-panelfuse-cache" not in first.headers and first.json()["fusion"]["cached"] is False
        calls = upstream_calls(fake)
        assert "x-panelfuse-cache" not in ask(g).headers and upstream_calls(fake) > calls
        # the plugin turns it on for one request
        on = {"plugins": [{"id": "fusion", "cache_ttl_s": 60}]}
        assert ask(g, on).headers["x-panelfuse-cache"] == "miss"
        assert ask(g, on).headers["x-panelfuse-cache"] == "hit"
    finally:
        g.stop()
    g = Gateway(fake, db, config=cached_config(fake, ttl=None), cache_ttl_s=600).start()
    try:  # PANELFUSE_CACHE_TTL_S: every spec that sets none
        # The TTL is not part of the key: what the plugin's 60 s stored is found under the default too.
        assert ask(g).headers["x-panelfuse-cache"] == "hit"
        fresh = {"messages": [{"role": "user", "content": "Another question"}]}
        assert ask(g, fresh).headers["x-panelfuse-cache"] == "miss"
        assert ask(g, fresh).headers["x-panelfuse-cache"] == "hit"
        off = {**fresh, "plugins": [{"id": "fusion", "cache_ttl_s": 0}]}
        assert "x-panelfuse-cache" not in ask(g, off).headers
    finally:
        g.stop()


def test_a_bad_cache_option_is_a_400_naming_the_field(fake, gw):
    r = ask(gw, {"plugins": [{"id": "fusion", "cache_ttl_s": -5}]})
    assert r.status_code == 400
    err = r.json()["error"]
    assert "cache_ttl_s" in err["message"] and "cache_ttl_s" in (err.get("param") or "")
    assert ask(gw, {"plugins": [{"id": "fusion", "cache_ttl_s": 10**9}]}).status_code == 400


# ---- the headers ---------------------------------------------------------------------------------------


def test_no_cache_skips_the_read_and_no_store_the_write(fake, gw):
    script_panel(fake)
    first = ask(gw).json()["fusion"]["run_id"]
    calls = upstream_calls(fake)
    fresh = ask(gw, **{"X-Panelfuse-Cache": "no-cache"})
    assert fresh.headers["x-panelfuse-cache"] == "miss" and upstream_calls(fake) > calls
    # no-cache still stores: the fresh answer is the one served next
    assert ask(gw).json()["fusion"]["cached_from"] == fresh.json()["fusion"]["run_id"] != first
    calls = upstream_calls(fake)
    assert ask(gw, **{"Cache-Control": "no-cache"}).headers["x-panelfuse-cache"] == "miss"
    assert upstream_calls(fake) > calls

    other = {"messages": [{"role": "user", "content": "Not to be kept."}]}
    assert ask(gw, other, **{"X-Panelfuse-Cache": "no-store"}).headers["x-panelfuse-cache"] == "miss"
    assert ask(gw, other).headers["x-panelfuse-cache"] == "miss"  # nothing was stored
    third = {"messages": [{"role": "user", "content": "Nor this."}]}
    assert ask(gw, third, **{"Cache-Control": "no-store"}).headers["x-panelfuse-cache"] == "miss"
    assert ask(gw, third).headers["x-panelfuse-cache"] == "miss"
    # no-store still reads what is there
    assert ask(gw, third, **{"X-Panelfuse-Cache": "no-store"}).headers["x-panelfuse-cache"] == "hit"


# ---- never cached --------------------------------------------------------------------------------------


def test_a_failed_run_is_never_cached(fake, gw):
    script_panel(fake, **{m: Script(failure=Failure.HTTP, status_code=500) for m in ("m1", "m2", "m3")})
    assert ask(gw).status_code == 502
    calls = upstream_calls(fake)
    script_panel(fake)
    retried = ask(gw)
    assert retried.status_code == 200 and retried.headers["x-panelfuse-cache"] == "miss"
    assert upstream_calls(fake) > calls


def test_a_degraded_run_is_never_cached(fake, gw):
    script_panel(fake, m1=Script(failure=Failure.HTTP, status_code=400))
    first = ask(gw).json()
    assert first["fusion"]["degraded"] is True
    calls = upstream_calls(fake)
    again = ask(gw)
    assert again.headers["x-panelfuse-cache"] == "miss" and upstream_calls(fake) > calls


def test_a_deleted_run_is_not_served_again(fake, gw):
    script_panel(fake)
    run_id = ask(gw).json()["fusion"]["run_id"]
    assert httpx.delete(f"{gw.url}/v1/fusion/runs/{run_id}", timeout=10).status_code == 200
    assert ask(gw).headers["x-panelfuse-cache"] == "miss"


# ---- streams and the other entry points ---------------------------------------------------------------


def test_a_streamed_hit_through_the_openai_sdk(fake, gw):
    script_panel(fake)
    with openai.OpenAI(base_url=f"{gw.url}/v1", api_key="unused", max_retries=0) as client:
        paid = list(client.chat.completions.create(model="panelfuse/fusion", messages=QUESTION, stream=True))
        assert "".join(c.choices[0].delta.content or "" for c in paid) == ANSWER
        calls = upstream_calls(fake)
        raw = client.chat.completions.with_raw_response.create(model="panelfuse/fusion", messages=QUESTION, stream=True)
        assert raw.headers["x-panelfuse-cache"] == "hit"
        chunks = list(raw.parse())
    assert upstream_calls(fake) == calls
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == ANSWER
    last = chunks[-1]
    assert last.choices[0].finish_reason == "stop" and last.usage.model_extra["cost"] == 0
    assert last.model_extra["fusion"]["cached"] is True
    assert last.model_extra["fusion"]["cached_from"] == paid[-1].model_extra["fusion"]["run_id"]
    assert [c.choices[0].finish_reason for c in chunks[:-1]] == [None] * (len(chunks) - 1)


def test_the_responses_and_messages_apis_hit_too(fake, gw):
    script_panel(fake)
    with openai.OpenAI(base_url=f"{gw.url}/v1", api_key="unused", max_retries=0) as client:
        first = client.responses.with_raw_response.create(model="panelfuse/fusion", input="Why is the sky blue?")
        assert first.headers["x-panelfuse-cache"] == "miss"
        calls = upstream_calls(fake)
        second = client.responses.with_raw_response.create(model="panelfuse/fusion", input="Why is the sky blue?")
        assert second.headers["x-panelfuse-cache"] == "hit" and upstream_calls(fake) == calls
        assert second.parse().output_text == ANSWER
        streamed = list(client.responses.create(model="panelfuse/fusion", input="Why is the sky blue?", stream=True))
        assert streamed[-1].type == "response.completed" and streamed[-1].response.output_text == ANSWER
        assert upstream_calls(fake) == calls
    with anthropic.Anthropic(base_url=gw.url, api_key="unused", max_retries=0) as claude:
        msg = claude.messages.with_raw_response.create(
            model="panelfuse/fusion", max_tokens=100, messages=[{"role": "user", "content": "Why is the sky blue?"}]
        )
        assert msg.headers["x-panelfuse-cache"] in ("hit", "miss")
        calls = upstream_calls(fake)
        again = claude.messages.with_raw_response.create(
            model="panelfuse/fusion", max_tokens=100, messages=[{"role": "user", "content": "Why is the sky blue?"}]
        )
        assert again.headers["x-panelfuse-cache"] == "hit" and upstream_calls(fake) == calls
        assert again.parse().content[0].text == ANSWER


def test_mcp_fusion_hits_too(tmp_path, fake):
    from test_mcp import connect_stdio, structured

    script_panel(fake)
    question = {"question": "Why is the sky blue?"}

    async def go() -> tuple[dict[str, Any], dict[str, Any], int]:
        async with connect_stdio(tmp_path, fake, PANELFUSE_CACHE_TTL_S="600") as session:
            paid = structured(await session.call_tool("fusion", question))
            calls = upstream_calls(fake)
            hit = structured(await session.call_tool("fusion", question))
            return paid, hit, calls

    paid, hit, calls = asyncio.run(go())
    assert paid["status"] == hit["status"] == "completed" and paid["cost"] > 0
    assert hit["cost"] == 0 and hit["answer"] == paid["answer"] and hit["run_id"] != paid["run_id"]
    assert upstream_calls(fake) == calls


def test_the_fusion_server_tool_hits_too(fake, gw):
    """A plain outer model calling the fusion tool: its fusion (panel + analysis) is served from the
    cache the second time; the outer model's own calls are made and billed as always."""
    tool = {
        "type": "panelfuse:fusion",
        "parameters": {"analysis_models": ["fake/m1", "fake/m2"], "model": "fake/judge", "cache_ttl_s": 600},
    }
    call = Script(tool_calls=[{"name": "panelfuse_fusion", "arguments": {"question": "Why is the sky blue?"}}])
    script_panel(fake)
    fake.script("outer", call, Script(text="Scattering."), call, Script(text="Scattering."))
    body = {"model": "fake/outer", "messages": [{"role": "user", "content": "Why blue?"}], "tools": [tool]}
    first = ask(gw, body).json()
    inner = {m: len(fake.requests_for(m)) for m in ("m1", "m2", "judge")}
    assert inner == {"m1": 1, "m2": 1, "judge": 1}
    second = ask(gw, body).json()
    assert second["choices"][0]["message"]["content"] == "Scattering."
    assert {m: len(fake.requests_for(m)) for m in ("m1", "m2", "judge")} == inner  # the fusion was a hit
    assert len(fake.requests_for("outer")) == 4
    tool_result = json.loads(
        next(m["content"] for m in fake.requests_for("outer")[3].body["messages"] if m["role"] == "tool")
    )
    assert tool_result["status"] == "ok" and tool_result["analysis"]["consensus"] == ["the sky scatters blue light"]
    assert second["usage"]["cost"] < first["usage"]["cost"]  # only the outer calls were paid for


# ---- scope ---------------------------------------------------------------------------------------------


def test_each_key_has_its_own_cache(fake, db):
    a = store_work(db, lambda s: s.keys.create("team-a"))
    b = store_work(db, lambda s: s.keys.create("team-b"))
    g = Gateway(fake, db, config=cached_config(fake)).start()
    try:
        script_panel(fake)
        assert ask(g, key=a.secret).headers["x-panelfuse-cache"] == "miss"
        calls = upstream_calls(fake)
        other = ask(g, key=b.secret)  # the same question from another tenant runs anew
        assert other.headers["x-panelfuse-cache"] == "miss" and upstream_calls(fake) > calls
        assert ask(g, key=a.secret).json()["fusion"]["cached"] is True
        assert ask(g, key=b.secret).json()["fusion"]["cached_from"] == other.json()["fusion"]["run_id"]
    finally:
        g.stop()
    g = Gateway(fake, db, config=cached_config(fake), cache_scope="gateway").start()
    try:  # PANELFUSE_CACHE_SCOPE=gateway: one cache for every key
        fresh = {"messages": [{"role": "user", "content": "Shared?"}]}
        paid = ask(g, fresh, key=a.secret).json()["fusion"]["run_id"]
        shared = ask(g, fresh, key=b.secret).json()["fusion"]
        assert shared["cached"] is True and shared["cached_from"] == paid
    finally:
        g.stop()
