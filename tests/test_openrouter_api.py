"""OpenRouter compatibility over real HTTP: /v1/models in OpenRouter's model schema (the `openrouter`
and `openai` SDKs both parse it), the /api/v1 prefix, /v1/generation and /v1/key."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime

import httpx
import openai
import pytest
from openrouter import OpenRouter

import gateway_helpers
from gateway_helpers import Gateway
from panelfuse.config import Config, ProviderConfig
from panelfuse.service import generations
from panelfuse.service.generations import Generation
from panelfuse.store import RunStore
from panelfuse.testing import FakeUpstream
from pipeline_helpers import script_panel

ALIASES = {"panelfuse/fusion", "openrouter/fusion", "panelfuse/fusion-test", "panelfuse/fusion-local"}
PRICES = {**gateway_helpers.PRICES, "fake/up-1": {"input": 2.5, "output": 10.0}}


def config(fake: FakeUpstream) -> Config:
    """The gateway's usual config plus: models named in the config, a provider without a key (its config
    models are listed, its upstream is not asked) and one whose upstream is down (left out)."""
    return Config(
        default_provider="fake",
        default_preset="test",
        providers={
            "fake": ProviderConfig(
                kind="openai_compat", base_url=fake.openai_base_url, api_key="upstream-key", models={"cfg-1": ""}
            ),
            "nokey": ProviderConfig(kind="openai_compat", base_url=fake.openai_base_url, models={"listed": ""}),
            "down": ProviderConfig(kind="openai_compat", base_url="http://127.0.0.1:1/v1", api_key="k"),
        },
        presets={"test": gateway_helpers.TEST_PRESET},
        prices=PRICES,
    )


def run_async(coro):
    return asyncio.run(coro)


async def _with_store(db: str, fn):
    store = await RunStore.open(db)
    try:
        return await fn(store)
    finally:
        await store.close()


@pytest.fixture
def db(tmp_path):
    return f"sqlite+aiosqlite:///{tmp_path}/runs.db"


@pytest.fixture
def start(fake, db, monkeypatch):
    """start() → a gateway over `config(fake)` (after any keys the test put in the store)."""
    monkeypatch.delenv("OPENROUTER_API_KEY", raising=False)  # the built-in openrouter provider: never asked
    monkeypatch.setattr(gateway_helpers, "gateway_config", config)
    fake.models = ["up-1", "up-2"]
    started: list[Gateway] = []

    def _start(**settings) -> Gateway:
        started.append(Gateway(fake, db, **settings).start())
        return started[-1]

    yield _start
    for gw in started:
        gw.stop()


def openrouter_sdk(gw: Gateway, key: str = "unused") -> OpenRouter:
    return OpenRouter(api_key=key, server_url=f"{gw.url}/api/v1")


# ---- /v1/models ---------------------------------------------------------------------------------


def test_openrouter_sdk_lists_models_under_api_v1(start):
    gw = start()
    with openrouter_sdk(gw) as sdk:
        page = sdk.models.list()
    assert page is not None
    models = {m.id: m for m in page.result.data}
    assert ALIASES <= set(models)
    assert {"fake/cfg-1", "nokey/listed", "local/smollm2", "fake/up-1", "fake/up-2"} <= set(models)
    assert not any(i.startswith("down/") for i in models)  # its upstream failed: left out, the rest served
    assert page.result.total_count == len(models)

    fusion = models["panelfuse/fusion"]
    assert {"tools", "tool_choice", "max_tokens", "temperature", "stream"} <= set(fusion.supported_parameters)
    assert (fusion.pricing.prompt, fusion.pricing.completion) == ("-1", "-1")  # a router: the price varies
    assert fusion.architecture.output_modalities == ["text"] and fusion.name.startswith("panelfuse: Fusion")
    assert "fake/m1" in (fusion.description or "")
    priced = models["fake/up-1"]
    assert (priced.pricing.prompt, priced.pricing.completion) == ("0.0000025", "0.00001")  # USD per token
    assert models["fake/cfg-1"].pricing.prompt == "-1"  # no known price
    assert models["local/smollm2"].pricing.prompt == "0"


def test_openai_sdk_lists_and_retrieves(start):
    gw = start()
    with openai.OpenAI(base_url=f"{gw.url}/v1", api_key="unused", max_retries=0) as client:
        listed = {m.id: m for m in client.models.list()}
        assert ALIASES | {"fake/cfg-1", "fake/up-1"} <= set(listed)
        assert listed["panelfuse/fusion"].owned_by == "panelfuse" and listed["fake/up-1"].owned_by == "fake"
        assert {m.object for m in listed.values()} == {"model"}
        one = client.models.retrieve("fake/up-1")
        assert one.id == "fake/up-1" and one.model_extra["pricing"]["prompt"] == "0.0000025"
        with pytest.raises(openai.NotFoundError) as info:
            client.models.retrieve("fake/never-heard-of")
    assert info.value.status_code == 404


def test_one_model_by_id_and_the_error_shape(start):
    gw = start()
    for prefix in ("/v1", "/api/v1"):
        r = httpx.get(f"{gw.url}{prefix}/models/panelfuse/fusion-test")
        assert r.status_code == 200 and r.json()["id"] == "panelfuse/fusion-test"
        missing = httpx.get(f"{gw.url}{prefix}/models/nope/nothing")
        assert missing.status_code == 404
        err = missing.json()["error"]
        assert {"message", "type", "param", "code"} <= set(err) and "nope/nothing" in err["message"]
    with openrouter_sdk(gw) as sdk:
        got = sdk.models.get(author="fake", slug="up-1")
        assert got.data.id == "fake/up-1" and got.data.links.details.endswith("/models/fake/up-1")
        assert sdk.models.count().data.count == len(httpx.get(f"{gw.url}/v1/models").json()["data"])


def test_filters_and_pages(start):
    gw = start()
    with openrouter_sdk(gw) as sdk:
        with_tools = sdk.models.list(supported_parameters="tools")
        assert ALIASES <= {m.id for m in with_tools.result.data}
        first = sdk.models.list(limit=2)
        assert len(first.result.data) == 2 and first.result.links.next is not None
        seen = [m.id for m in first.result.data]
        page = first.next()
        while page is not None:
            seen += [m.id for m in page.result.data]
            page = page.next()
    everything = [m["id"] for m in httpx.get(f"{gw.url}/v1/models").json()["data"]]
    assert seen == everything  # paging walks the whole list once, in order
    found = httpx.get(f"{gw.url}/v1/models", params={"q": "UP-"}).json()
    assert {m["id"] for m in found["data"]} == {"fake/up-1", "fake/up-2"} and found["total_count"] == 2


def test_provider_lists_are_cached_in_the_process(fake, start):
    gw = start()
    for _ in range(3):
        assert httpx.get(f"{gw.url}/api/v1/models").status_code == 200
    asked = [r for r in fake.requests if r.method == "GET" and r.path.endswith("/models")]
    assert len(asked) == 1  # one provider with a key and a live upstream, asked once


def test_a_key_sees_only_the_models_it_may_use(db, start):
    key = run_async(_with_store(db, lambda s: s.keys.create("narrow", models=["fake/up-*"])))
    gw = start()
    r = httpx.get(f"{gw.url}/v1/models", headers={"Authorization": f"Bearer {key.secret}"})
    ids = {m["id"] for m in r.json()["data"]}
    assert ALIASES <= ids and {"fake/up-1", "fake/up-2"} <= ids
    assert not ids & {"fake/cfg-1", "local/smollm2", "nokey/listed"}
    assert httpx.get(f"{gw.url}/v1/models").status_code == 401  # auth is on: a key exists


# ---- /v1/generation -----------------------------------------------------------------------------


def test_a_fusion_completion_has_generation_stats(fake, start):
    gw = start()
    script_panel(fake)
    with openai.OpenAI(base_url=f"{gw.url}/api/v1", api_key="unused", max_retries=0) as client:
        done = client.chat.completions.create(
            model="panelfuse/fusion", messages=[{"role": "user", "content": "Why blue?"}]
        )
    with openrouter_sdk(gw) as sdk:
        gen = sdk.generations.get_generation(id=done.id).data
    run_id = done.model_extra["fusion"]["run_id"]
    assert gen.id == done.id and gen.model == done.model == "fake/synth"
    assert gen.total_cost == pytest.approx(done.usage.model_extra["cost"])
    assert (gen.tokens_prompt, gen.tokens_completion) == (done.usage.prompt_tokens, done.usage.completion_tokens)
    assert gen.finish_reason == "stop" and gen.streamed is False and gen.latency is not None
    assert gen.router == "panelfuse/fusion"
    raw = httpx.get(f"{gw.url}/v1/generation", params={"id": done.id}).json()["data"]
    assert (raw["run_id"], raw["kind"]) == (run_id, "chat")  # ours, beside OpenRouter's fields
    missing = httpx.get(f"{gw.url}/api/v1/generation", params={"id": "chatcmpl-0000000000000000"})
    assert missing.status_code == 404 and missing.json()["error"]["param"] == "id"
    assert httpx.get(f"{gw.url}/v1/generation").status_code == 400  # the id is required


def test_recorded_generations_are_key_scoped(db, start):
    keys = {n: run_async(_with_store(db, lambda s, n=n: s.keys.create(n))) for n in ("a", "b")}
    admin = run_async(_with_store(db, lambda s: s.keys.create("ops", is_admin=True)))
    gen = Generation(
        id="chatcmpl-recorded",
        kind="chat",
        model="fake/up-1",
        key_id=keys["a"].key.id,
        created_at=datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
        latency_ms=321,
        prompt_tokens=12,
        completion_tokens=34,
        cost=0.0004,
        finish_reason="length",
        streamed=True,
    )
    run_async(_with_store(db, lambda s: generations.record(s, gen)))
    gw = start()

    def fetch(secret: str) -> httpx.Response:
        return httpx.get(
            f"{gw.url}/api/v1/generation", params={"id": gen.id}, headers={"Authorization": f"Bearer {secret}"}
        )

    with openrouter_sdk(gw, keys["a"].secret) as sdk:
        data = sdk.generations.get_generation(id=gen.id).data
    assert (data.model, data.tokens_prompt, data.tokens_completion, data.total_cost) == ("fake/up-1", 12, 34, 0.0004)
    assert (data.finish_reason, data.streamed, data.latency, data.provider_name) == ("length", True, 321.0, "fake")
    assert data.created_at.startswith("2026-01-02T03:04:05")
    assert fetch(keys["b"].secret).status_code == 404  # another key's: as if missing
    assert fetch(admin.secret).status_code == 200


def test_retention_blanks_the_bodies_kept_with_generations(db, start):
    kept = Generation(
        id="resp_kept",
        kind="responses",
        model="fake/up-1",
        key_id=None,
        created_at=datetime(2026, 1, 1, tzinfo=UTC),
        latency_ms=5,
        prompt_tokens=1,
        completion_tokens=1,
        cost=0.5,
        finish_reason="stop",
        streamed=False,
        request={"input": "secret question"},
        response={"output_text": "secret answer"},
    )
    run_async(_with_store(db, lambda s: generations.record(s, kept)))
    gw = start(retain_days=0.0)  # everything is "old"
    for _ in range(100):
        got = run_async(_with_store(db, lambda s: generations.get(s, kept.id, key_id=None)))
        if got.request is None:
            break
        time.sleep(0.05)
    assert (got.request, got.response, got.cost) == (None, None, 0.5)  # the stats stay
    assert httpx.get(f"{gw.url}/v1/generation", params={"id": kept.id}).json()["data"]["total_cost"] == 0.5


# ---- /v1/key ------------------------------------------------------------------------------------


def test_current_key_with_auth_off(start):
    gw = start()
    with openrouter_sdk(gw) as sdk:
        data = sdk.api_keys.get_current_key_metadata().data
    assert "auth off" in data.label
    assert (data.usage, data.limit, data.limit_remaining, data.is_free_tier) == (0.0, None, None, False)


def test_current_key_reports_budget_and_usage(db, start):
    key = run_async(_with_store(db, lambda s: s.keys.create("team", budget_usd=5.0, rpm=60)))

    async def spend(store: RunStore) -> None:  # one settled request: $1.25 charged today
        assert await store.keys.reserve(key.key.id, "run_spent", 2.0)
        await store.keys.settle("run_spent", 1.25)
        assert await store.keys.reserve(key.key.id, "run_held", 0.5)  # in flight: held, not charged

    run_async(_with_store(db, spend))
    gw = start()
    with openrouter_sdk(gw, key.secret) as sdk:
        data = sdk.api_keys.get_current_key_metadata().data
    assert data.label == "team"
    assert (data.usage, data.usage_daily, data.usage_weekly, data.usage_monthly) == (1.25, 1.25, 1.25, 1.25)
    assert data.limit == 5.0 and data.limit_remaining == pytest.approx(5.0 - 1.25 - 0.5)
    assert data.effective_budget is not None and data.effective_budget.spend_usd == 1.25
    plain = run_async(_with_store(db, lambda s: s.keys.create("unbudgeted")))
    r = httpx.get(f"{gw.url}/v1/key", headers={"Authorization": f"Bearer {plain.secret}"}).json()["data"]
    assert (r["label"], r["limit"], r["limit_remaining"], r["budgets"]) == ("unbudgeted", None, None, [])
    mine = httpx.get(f"{gw.url}/v1/key", headers={"Authorization": f"Bearer {key.secret}"}).json()["data"]
    assert mine["rate_limit"]["requests"] == 60 and r["rate_limit"]["requests"] == -1  # the key's rpm
    assert httpx.get(f"{gw.url}/api/v1/key").status_code == 401
