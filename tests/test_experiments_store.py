"""ExperimentStore on SQLite and on PostgreSQL: declarations keep their state, records round-trip,
shadow spending and feedback."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine

from conftest import require_service
from panelfuse.store import ExperimentRequest, ExperimentStore, RunStore

PG_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
DEFINITION = {"models": ["gpt-default"], "arms": [{"name": "a", "model": "m", "share": 1}]}


@pytest.fixture(params=["sqlite", "postgresql"])
async def experiments(request, tmp_path):
    if request.param == "sqlite":
        store = await RunStore.open(f"sqlite+aiosqlite:///{tmp_path}/runs.db")
        yield ExperimentStore(store.database)
        await store.close()
        return
    require_service(5432, "PostgreSQL")
    schema = f"pf_x_{uuid.uuid4().hex[:10]}"
    store = await RunStore.open(PG_URL, schema=schema)
    yield ExperimentStore(store.database)
    await store.close()
    engine = create_async_engine(PG_URL)
    try:
        async with engine.begin() as conn:
            await conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
    finally:
        await engine.dispose()


def request(i: int, **kw) -> ExperimentRequest:
    data = {
        "id": f"xr_{i}",
        "experiment": "ab",
        "arm": "a",
        "shadow": False,
        "unit": "u",
        "key_id": None,
        "created_at": T0 + timedelta(seconds=i),
        "latency_ms": 100 + i,
        "status": "completed",
        "cost": 0.01,
    }
    data.update(kw)
    return ExperimentRequest(**data)


async def test_a_declaration_keeps_the_state_and_takes_a_new_definition(experiments):
    row = await experiments.declare("ab", DEFINITION, "config")
    assert row.status == "running" and row.paused_arms == ()
    await experiments.set_state("ab", paused_arms=["a", "a"])
    await experiments.set_state("ab", status="stopped", chosen_arm="a")
    changed = {**DEFINITION, "description": "v2"}
    row = await experiments.declare("ab", changed, "config")
    assert (row.status, row.chosen_arm, row.paused_arms) == ("stopped", "a", ("a",))
    assert row.definition == changed
    assert not await experiments.create("ab", DEFINITION, "api")  # the name is taken
    assert [r.name for r in await experiments.all()] == ["ab"]
    assert (await experiments.set_state("ab", status="running")).chosen_arm is None
    assert await experiments.set_state("nope", status="running") is None
    assert await experiments.delete("ab") and await experiments.get("ab") is None


async def test_records_round_trip_in_time_order(experiments):
    await experiments.record(request(2, answer="two\x00", question="q"))
    await experiments.record(request(1, status="failed", cost=None, error="boom"))
    await experiments.record(request(1))  # an id already stored changes nothing
    rows = await experiments.requests("ab")
    assert [r.id for r in rows] == ["xr_1", "xr_2"]
    assert rows[0].status == "failed" and rows[0].cost is None and rows[0].error == "boom"
    assert rows[1].answer == "two\ufffd" and rows[1].created_at == T0 + timedelta(seconds=2)
    assert await experiments.requests("other") == []


async def test_shadow_spending_and_feedback(experiments):
    await experiments.record(request(1, shadow=True, cost=0.25, run_id="run_s1"))
    await experiments.record(request(2, shadow=True, cost=None, status="skipped"))
    await experiments.record(request(3, cost=1.0, run_id="run_p", key_id="k1"))
    await experiments.record(request(4, cost=1.0, response_id="chatcmpl-x", key_id="k2"))
    assert await experiments.shadow_spent("ab") == pytest.approx(0.25)
    assert await experiments.shadow_spent("none") == 0.0
    assert await experiments.set_feedback("run_p", 1.0) == 1
    assert await experiments.set_feedback("chatcmpl-x", -0.5, key_id="k1") == 0  # another key's answer
    assert await experiments.set_feedback("chatcmpl-x", -0.5, key_id="k2") == 1
    assert await experiments.set_feedback("run_s1", 1.0) == 0  # shadows take no feedback
    scores = {r.id: r.feedback_score for r in await experiments.requests("ab")}
    assert scores == {"xr_1": None, "xr_2": None, "xr_3": 1.0, "xr_4": -0.5}
