"""Generations (store/generations.py and service/generations.py) on SQLite and PostgreSQL."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from panelfuse.service import generations
from panelfuse.service.generations import Generation
from panelfuse.store import GenerationStore, RunStore
from panelfuse.store.generations import GenerationRecord
from test_store import new_run, target  # noqa: F401  (the SQLite/PostgreSQL fixture)

T0 = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
async def store(target):  # noqa: F811
    url, schema = target
    s = await RunStore.open(url, schema=schema)
    yield s
    await s.close()


def gen(gen_id: str = "chatcmpl-abc", **kw) -> Generation:
    fields = {
        "id": gen_id,
        "kind": "chat",
        "model": "fake/m",
        "key_id": "key_1",
        "created_at": T0,
        "latency_ms": 1234,
        "prompt_tokens": 10,
        "completion_tokens": 5,
        "cost": 0.000125,
        "finish_reason": "stop",
        "streamed": True,
    }
    return Generation(**{**fields, **kw})


async def test_record_and_get_round_trip_key_scoped(store):
    request = {"input": "héllo \u2603", "model": "fake/m"}
    await generations.record(store, gen("resp_1", kind="responses", request=request, response={"output": []}))
    got = await generations.get(store, "resp_1", key_id="key_1")
    assert got == gen("resp_1", kind="responses", request=request, response={"output": []})
    assert got.created_at.tzinfo is not None and got.total_tokens == 15
    assert await generations.get(store, "resp_1", key_id=None) == got  # the admin sees every key's
    assert await generations.get(store, "resp_1", key_id="key_other") is None
    assert await generations.get(store, "resp_missing", key_id=None) is None


async def test_nullable_fields_and_first_record_wins(store):
    await generations.record(store, gen("chatcmpl-1", key_id=None, cost=None, finish_reason=None, streamed=False))
    await generations.record(store, gen("chatcmpl-1", model="fake/other"))  # same id again: ignored
    got = await generations.get(store, "chatcmpl-1", key_id=None)
    assert got is not None
    assert (got.model, got.key_id, got.cost, got.finish_reason, got.streamed) == ("fake/m", None, None, None, False)
    assert (got.request, got.response, got.run_id) == (None, None, None)


async def test_record_never_raises(store, caplog):
    async with store.engine.begin() as conn:  # every write now fails
        await conn.execute(sa.text("DROP TABLE generations"))
    with caplog.at_level(logging.ERROR, logger="panelfuse.generations"):
        await generations.record(store, gen("chatcmpl-lost"))
    assert "chatcmpl-lost" in caplog.text


async def test_fusion_completion_falls_back_to_its_run(store):
    await new_run(store, "run_0123abcd0123abcd", key_id="key_1", request={"messages": [], "stream": True})
    assert await generations.get(store, "chatcmpl-0123abcd0123abcd", key_id="key_1") is None  # still running
    await store.finish_run(
        "run_0123abcd0123abcd",
        status="completed",
        result={"model": "fake/synth", "finish_reason": "length"},
        content="answer",
        usage={"prompt_tokens": 100, "completion_tokens": 40, "total_tokens": 140, "cost": 0.02},
        cost=0.02,
        degraded=False,
        error=None,
        latency_ms=2500,
    )
    got = await generations.get(store, "chatcmpl-0123abcd0123abcd", key_id="key_1")
    assert got is not None
    assert (got.kind, got.model, got.run_id, got.streamed) == ("chat", "fake/synth", "run_0123abcd0123abcd", True)
    assert (got.prompt_tokens, got.completion_tokens, got.cost, got.latency_ms) == (100, 40, 0.02, 2500)
    assert got.finish_reason == "length"
    assert await generations.get(store, "chatcmpl-0123abcd0123abcd", key_id="key_2") is None
    assert await generations.get(store, "chatcmpl-0123abcd0123abcd", key_id=None) is not None


async def test_a_recorded_generation_wins_over_its_run(store):
    await new_run(store, "run_00ff00ff00ff")
    await store.finish_run(
        "run_00ff00ff00ff",
        status="failed",
        result=None,
        content="",
        usage=None,
        cost=None,
        degraded=True,
        error="all members failed",
        latency_ms=10,
    )
    fallback = await generations.get(store, "chatcmpl-00ff00ff00ff", key_id=None)
    assert fallback is not None and fallback.finish_reason == "error" and fallback.prompt_tokens == 0
    await generations.record(store, gen("chatcmpl-00ff00ff00ff", run_id="run_00ff00ff00ff", model="fake/x"))
    assert (await generations.get(store, "chatcmpl-00ff00ff00ff", key_id=None)).model == "fake/x"


async def test_purge_blanks_kept_bodies_only(store):
    gens = GenerationStore(store.database)
    old = GenerationRecord(**{**gen("resp_old").__dict__, "request": {"a": 1}, "response": {"b": 2}})
    await gens.insert(old)
    await gens.insert(GenerationRecord(**{**gen("resp_new").__dict__, "created_at": T0 + timedelta(days=2)}))
    assert await gens.purge_content(T0 + timedelta(days=1)) == 1
    purged = await gens.get("resp_old")
    assert purged is not None and (purged.request, purged.response, purged.cost) == (None, None, 0.000125)
    assert await gens.delete("resp_new", key_id="key_other") is False
    assert await gens.delete("resp_new", key_id="key_1") is True
    assert await gens.get("resp_new") is None


async def test_migration_matches_the_table_definition(store):
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    from panelfuse.store.schema import VERSION_TABLE, metadata

    def diff(conn):
        ctx = MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE, "compare_type": False})
        return compare_metadata(ctx, metadata)

    async with store.engine.connect() as conn:
        changes = await conn.run_sync(diff)
    assert [c for c in changes if "generations" in repr(c)] == []
