"""Budgets and rate limits that hold across gateway processes: two `panelfuse serve` processes
sharing one PostgreSQL (budgets) and one Redis (rate limits)."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid

import httpx
import pytest

from conftest import require_service
from panelfuse.config import Config, ProviderConfig
from panelfuse.pipeline.run import Fusion
from panelfuse.pricing import PriceTable
from panelfuse.providers.registry import Providers
from panelfuse.spec import all_presets, spec_from_preset
from panelfuse.store import RunStore
from panelfuse.testing import Script
from pipeline_helpers import judge_script
from serve_helpers import start_server, stop

PG = "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
PRICES = {m: {"input": 1.0, "output": 2.0} for m in ("fake/m1", "fake/m2", "fake/m3")} | {
    "fake/judge": {"input": 3.0, "output": 6.0},
    "fake/synth": {"input": 3.0, "output": 6.0},
}
PRICES_TOML = "[prices]\n" + "".join(
    f'"{m}" = {{ input = {p["input"]}, output = {p["output"]} }}\n' for m, p in PRICES.items()
)
MESSAGES = [{"role": "user", "content": "How do budgets hold across replicas?"}]
TEST_PRESET = {
    "members": ["fake/m1", "fake/m2", "fake/m3"],
    "judge": "fake/judge",
    "synthesizer": {"model": "fake/synth"},
    "deadline_ms": 60000,
    "max_tokens": 100,
}


def planned_costs() -> tuple[float, dict[str, float]]:
    """The run's worst case as the gateway computes it, and each model's planned call cost."""
    cfg = Config(
        default_provider="fake",
        presets={"test": TEST_PRESET},
        providers={"fake": ProviderConfig(kind="openai_compat", base_url="http://x/v1", api_key="k")},
    )
    spec = spec_from_preset("test", all_presets(cfg.presets))
    est = Fusion(spec, providers=Providers(cfg, env={}), prices=PriceTable.load(PRICES)).estimate(MESSAGES)
    return est.total, {c.model.split("/", 1)[1]: c.cost for c in est.calls}


async def _in_schema(schema: str, work):
    store = await RunStore.open(PG, schema=schema)
    try:
        return await work(store)
    finally:
        await store.close()


async def _drop(schema: str) -> None:
    import asyncpg

    conn = await asyncpg.connect("postgresql://postgres@127.0.0.1:5432/test")
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await conn.close()


def test_fifty_concurrent_requests_against_a_budget_for_ten_on_two_processes(tmp_path, fake):
    require_service(5432, "PostgreSQL")
    total, per_model = planned_costs()
    # The fake bills every call exactly its planned worst case, so each run costs exactly its reservation.
    for model in ("m1", "m2", "m3", "synth"):
        fake.script(model, Script(text=f"answer from {model}", cost=per_model[model]))
    fake.script("judge", lambda body: dataclasses.replace(judge_script(body), cost=per_model["judge"]))
    schema = f"pf_budget_{uuid.uuid4().hex[:8]}"
    key = asyncio.run(_in_schema(schema, lambda s: s.keys.create("ten-runs", budget_usd=10 * total * (1 + 1e-9))))
    env = {"PANELFUSE_DB_SCHEMA": schema}
    procs = [start_server(tmp_path, fake, db=PG, env=env, config_extra=PRICES_TOML) for _ in range(2)]
    try:

        async def fire():
            async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=100)) as http:
                body = {"model": "panelfuse/fusion", "messages": MESSAGES}
                headers = {"Authorization": f"Bearer {key.secret}"}
                return await asyncio.gather(
                    *(
                        http.post(f"{procs[i % 2][1]}/v1/chat/completions", json=body, headers=headers)
                        for i in range(50)
                    )
                )

        codes = [r.status_code for r in asyncio.run(fire())]
        assert codes.count(200) == 10, codes
        assert codes.count(402) == 40

        async def check(store):
            k = await store.keys.get(key.key.id)
            runs = (await store.list_runs(limit=100)).items
            return k, runs

        k, runs = asyncio.run(_in_schema(schema, check))
        assert len([r for r in runs if r.status == "completed"]) == 10
        assert k.spent_usd == pytest.approx(sum(r.cost for r in runs))
        assert k.spent_usd == pytest.approx(10 * total)
        assert k.reserved_usd == pytest.approx(0.0, abs=1e-12)
    finally:
        for proc, _ in procs:
            stop(proc)
        asyncio.run(_drop(schema))


def test_rate_limit_holds_across_two_processes_through_redis(tmp_path, fake):
    require_service(6379, "Redis")
    db = f"sqlite:///{tmp_path}/runs.db"
    key = asyncio.run(_sqlite_key(db))
    fake.script("plain", Script(text="ok"))
    procs = [start_server(tmp_path, fake, "--redis", "redis://127.0.0.1:6379/0", db=db) for _ in range(2)]
    try:
        headers = {"Authorization": f"Bearer {key.secret}"}
        body = {"model": "fake/plain", "messages": [{"role": "user", "content": "q"}]}
        responses = [
            httpx.post(f"{procs[i % 2][1]}/v1/chat/completions", json=body, headers=headers, timeout=30)
            for i in range(8)
        ]
        codes = [r.status_code for r in responses]
        assert codes.count(200) == 5 and codes.count(429) == 3, codes
        assert all(int(r.headers["retry-after"]) >= 1 for r in responses if r.status_code == 429)
        assert {procs[0][1], procs[1][1]}  # both servers were asked
    finally:
        for proc, _ in procs:
            stop(proc)


async def _sqlite_key(db: str):
    store = await RunStore.open(db)
    try:
        return await store.keys.create(f"rpm-{uuid.uuid4().hex[:6]}", rpm=5)
    finally:
        await store.close()
