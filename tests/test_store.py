"""panelfuse.store: the run store on SQLite (tmp file) and PostgreSQL (a fresh schema per test)."""

from __future__ import annotations

import asyncio
import json
import math
import os
import socket
import sqlite3
import uuid
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy.ext.asyncio import create_async_engine

from conftest import require_service
from panelfuse.pipeline.analysis import Analysis
from panelfuse.pipeline.events import Event, PanelDelta, RunStarted
from panelfuse.pipeline.result import CallRecord, FusionResult, MemberResult, StageResult
from panelfuse.providers.base import Usage
from panelfuse.store import (
    DuplicateRunError,
    InvalidCursorError,
    RunNotFoundError,
    RunStore,
    StoreConnectError,
    StoreURLError,
    normalize_url,
)
from panelfuse.store.keys import settled_charge
from panelfuse.store.migrate import MIGRATIONS_DIR, head_revision
from panelfuse.store.recovery import (
    INTERRUPTED_ERROR,
    held_reservations,
    interrupt_runs,
    running_runs,
    settle_reservations,
)
from panelfuse.store.schema import VERSION_TABLE, run_events, runs

PG_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
T0 = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)


@pytest.fixture(params=["sqlite", "postgresql"])
async def target(request, tmp_path):
    """(url, schema) of an empty database: a SQLite file, or a random PG schema dropped afterwards."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'sub' / 'runs.db'}", None
        return
    require_service(5432, "PostgreSQL")
    schema = f"pf_test_{uuid.uuid4().hex[:12]}"
    yield PG_URL, schema
    engine = create_async_engine(PG_URL)
    try:
        async with engine.begin() as conn:
            await conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
    finally:
        await engine.dispose()


@pytest.fixture
async def store(target):
    url, schema = target
    s = await RunStore.open(url, schema=schema)
    yield s
    await s.close()


async def new_run(store: RunStore, run_id: str, **kw) -> None:
    args = {
        "spec": {"panel": ["a", "b"]},
        "request": {"messages": [{"role": "user", "content": "hi"}]},
        "request_model": "fusion/default",
        "preset": "default",
        "mode": "synthesize",
        "prompt_version": "v1",
    }
    await store.create_run(run_id, **{**args, **kw})


async def set_column(store: RunStore, run_id: str, **values) -> None:
    """Backdate timestamps directly: tests never wait on the clock."""
    async with store.engine.begin() as conn:
        await conn.execute(runs.update().where(runs.c.id == run_id).values(**values))


async def scalar(store: RunStore, query):
    async with store.engine.connect() as conn:
        return (await conn.execute(query)).scalar_one()


def fusion_result(run_id: str) -> FusionResult:
    member = MemberResult(
        member="m1",
        model="fake/a",
        content="ответ ✓",
        calls=[CallRecord(model="fake/a", usage=Usage(prompt_tokens=3, completion_tokens=5), cost=0.25)],
    )
    failed = MemberResult(member="m2", model="fake/b", status="timeout", error="took too long")
    return FusionResult(
        run_id=run_id,
        preset="default",
        mode="synthesize",
        prompt_version="v1",
        status="completed",
        content="final",
        model="fake/s",
        panel=[member, failed],
        analysis=Analysis(
            consensus=["x"], contradictions=[], partial_coverage=[], unique_insights=[], blind_spots=["y"], risks=["z"]
        ),
        synthesizer=StageResult(model="fake/s", calls=[CallRecord(model="fake/s", cost=0.5)]),
    )


# ---- opening and migrating ---------------------------------------------------------------------


async def test_migrate_on_open_is_idempotent(target):
    url, schema = target
    first = await RunStore.open(url, schema=schema)
    await new_run(first, "run_keep")
    await first.close()
    second = await RunStore.open(url, schema=schema)  # already at head: must not re-create or wipe
    try:
        assert await scalar(second, sa.text(f"SELECT version_num FROM {VERSION_TABLE}")) == head_revision() is not None
        assert (await second.get_run("run_keep")) is not None
    finally:
        await second.close()


async def test_concurrent_open_on_fresh_database_both_succeed(target):
    url, schema = target
    # Separate engines = separate sessions; without the advisory lock / BEGIN IMMEDIATE, racing
    # CREATE TABLEs fail with "already exists".
    stores = await asyncio.gather(*(RunStore.open(url, schema=schema) for _ in range(4)))
    try:
        assert await scalar(stores[0], sa.text(f"SELECT count(*) FROM {VERSION_TABLE}")) == 1
        await new_run(stores[1], "run_c")
        assert (await stores[3].get_run("run_c")) is not None
    finally:
        for s in stores:
            await s.close()


async def test_sqlite_file_is_in_wal_mode_with_foreign_keys(tmp_path):
    path = tmp_path / "runs.db"
    store = await RunStore.open(f"sqlite+aiosqlite:///{path}")
    try:
        async with store.engine.connect() as conn:
            assert (await conn.exec_driver_sql("PRAGMA foreign_keys")).scalar_one() == 1
            assert (await conn.exec_driver_sql("PRAGMA busy_timeout")).scalar_one() > 0
    finally:
        await store.close()
    with sqlite3.connect(path) as raw:  # WAL is a property of the file, seen by any client
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_url_normalization():
    assert normalize_url("sqlite:///x.db").drivername == "sqlite+aiosqlite"
    assert normalize_url("sqlite+aiosqlite:///x.db").database == "x.db"
    assert normalize_url("sqlite://").database == ":memory:"
    pg = normalize_url("postgres://u:pw@h:5433/db?sslmode=require")
    assert (pg.drivername, pg.port, pg.database) == ("postgresql+asyncpg", 5433, "db")
    assert dict(pg.query) == {"ssl": "require"}
    assert normalize_url("postgresql://u@h/db").drivername == "postgresql+asyncpg"
    assert RunStore.default_url().startswith("sqlite+aiosqlite:///")
    assert RunStore.default_url().endswith("runs.db")


@pytest.mark.parametrize(
    ("url", "scheme"),
    [
        ("mysql://admin:s3cretpw@db.example/runs", "mysql"),
        ("mongodb+srv://admin:s3cretpw@cluster/x", "mongodb+srv"),
        ("postgresql:/admin:s3cretpw@host/db", None),  # unparseable: not echoed at all
        ("postgresql://admin:s3cretpw@host:notaport/db", "postgresql"),
    ],
)
async def test_bad_url_is_a_typed_error_without_the_password(url, scheme):
    with pytest.raises(StoreURLError) as info:
        await RunStore.open(url)
    assert info.value.scheme == scheme
    assert "s3cretpw" not in str(info.value)
    if scheme:
        assert scheme in str(info.value)
    if scheme == "mysql":  # parseable: echoed, password masked
        assert "admin:***@db.example" in str(info.value)


async def test_unreachable_database_is_a_typed_error_without_the_password():
    with pytest.raises(StoreConnectError) as info:
        await RunStore.open("postgresql://postgres:s3cretpw@127.0.0.1:1/test")
    assert "s3cretpw" not in str(info.value)
    assert "127.0.0.1:1" in str(info.value)


def test_migration_scripts_ship_in_the_package():
    for name in ("__init__.py", "env.py", "script.py.mako", "versions/__init__.py", "versions/0001_initial.py"):
        assert (MIGRATIONS_DIR / name).is_file(), name


# ---- runs --------------------------------------------------------------------------------------


async def test_create_get_finish_round_trip(store):
    request = {"messages": [{"role": "user", "content": "héllo \u2603"}], "temperature": 0.2, "stream": True}
    created = await store.create_run(
        "run_rt",
        spec={"panel": [{"model": "a", "weight": 1.5}]},
        request=request,
        request_model="fusion/deep",
        preset="deep",
        mode="synthesize",
        prompt_version="v7",
        key_id="key_1",
        background=True,
    )
    assert created.status == "running" and created.created_at.tzinfo is not None
    fr = fusion_result("run_rt")
    await store.finish_run(
        "run_rt",
        status="completed",
        result=fr.to_dict(),
        content=fr.content,
        usage=fr.usage_dict(),
        cost=fr.cost,
        degraded=fr.degraded,
        error=None,
        latency_ms=1234,
    )
    got = await store.get_run("run_rt")
    assert got is not None
    assert got.result == json.loads(json.dumps(fr.to_dict()))
    assert got.result["panel"][0]["content"] == "ответ ✓"
    assert got.request == request and got.spec == {"panel": [{"model": "a", "weight": 1.5}]}
    assert (got.status, got.content, got.cost, got.degraded, got.latency_ms) == ("completed", "final", 0.75, True, 1234)
    assert (got.request_model, got.preset, got.prompt_version, got.key_id, got.background) == (
        "fusion/deep",
        "deep",
        "v7",
        "key_1",
        True,
    )
    assert got.created_at == created.created_at and got.created_at.utcoffset() == timedelta(0)
    as_dict = json.loads(json.dumps(got.to_dict()))
    assert as_dict["id"] == "run_rt" and datetime.fromisoformat(as_dict["created_at"]) == created.created_at
    assert await store.get_run("run_missing") is None


async def test_update_run_and_its_errors(store):
    await new_run(store, "run_u")
    await store.update_run("run_u", content="partial\x00answer", usage={"prompt_tokens": 4})
    got = await store.get_run("run_u")
    assert got.content == "partial\ufffdanswer" and got.usage == {"prompt_tokens": 4}
    with pytest.raises(ValueError, match="created_at"):
        await store.update_run("run_u", created_at=T0)
    with pytest.raises(ValueError, match="status"):
        await store.update_run("run_u", status="exploded")
    with pytest.raises(ValueError):
        await store.finish_run(
            "run_u",
            status="running",
            result=None,
            content="",
            usage=None,
            cost=None,
            degraded=False,
            error=None,
            latency_ms=0,
        )
    with pytest.raises(RunNotFoundError):
        await store.update_run("run_nope", content="x")
    with pytest.raises(DuplicateRunError):
        await new_run(store, "run_u")
    with pytest.raises(RunNotFoundError):
        await new_run(store, "run_orphan", parent_run_id="run_nope")


async def test_resynthesis_points_at_parent_and_survives_its_deletion(store):
    await new_run(store, "run_parent")
    await new_run(store, "run_child", parent_run_id="run_parent")
    assert [r.id for r in (await store.list_runs(parent_run_id="run_parent")).items] == ["run_child"]
    assert await store.delete_run("run_parent")
    assert (await store.get_run("run_child")).parent_run_id is None


async def test_list_runs_filters(store):
    await new_run(store, "run_a", key_id="k1", preset="fast", mode="best-of")
    await new_run(store, "run_b", key_id="k2")
    await new_run(store, "run_c", key_id="k1")
    await store.finish_run(
        "run_c",
        status="failed",
        result=None,
        content="",
        usage=None,
        cost=None,
        degraded=True,
        error="boom",
        latency_ms=5,
    )
    for i, rid in enumerate(["run_a", "run_b", "run_c"]):
        await set_column(store, rid, created_at=T0 + timedelta(minutes=i))

    async def ids(**kw):
        return [r.id for r in (await store.list_runs(**kw)).items]

    assert await ids() == ["run_c", "run_b", "run_a"]
    assert await ids(key_id="k1") == ["run_c", "run_a"]
    assert await ids(status="running") == ["run_b", "run_a"]
    assert await ids(preset="fast") == ["run_a"]
    assert await ids(mode="best-of") == ["run_a"]
    assert await ids(degraded=True) == ["run_c"]
    assert await ids(degraded=False, key_id="k1") == ["run_a"]
    assert await ids(since=T0 + timedelta(minutes=1)) == ["run_c", "run_b"]
    with pytest.raises(ValueError):
        await store.list_runs(limit=0)
    with pytest.raises(InvalidCursorError):
        await store.list_runs(before="run_does_not_exist")


@pytest.mark.parametrize("equal_times", [False, True])
async def test_cursor_paging_has_no_duplicates_or_gaps(store, equal_times):
    for i in range(25):
        rid = f"run_{i:02d}_{uuid.uuid4().hex[:4]}"
        await new_run(store, rid)
        # Equal times: groups of 5 share a created_at, so pages split inside a tie.
        at = T0 + timedelta(seconds=(i // 5 if equal_times else i))
        await set_column(store, rid, created_at=at)
    everything = (await store.list_runs(limit=100)).items
    expected = [r.id for r in sorted(everything, key=lambda r: (r.created_at, r.id), reverse=True)]
    assert [r.id for r in everything] == expected and len(expected) == 25

    seen, cursor, pages = [], None, 0
    while True:
        page = await store.list_runs(limit=7, before=cursor)
        seen += [r.id for r in page.items]
        pages += 1
        cursor = page.next_cursor
        if cursor is None:
            break
    assert seen == expected and pages == 4
    # A bare run id works as a cursor too (OpenAI-style `after=<id>`).
    after_id = await store.list_runs(limit=5, before=expected[6])
    assert [r.id for r in after_id.items] == expected[7:12]


async def test_feedback_and_key_scoping(store):
    await new_run(store, "run_k", key_id="key_a")
    await store.append_events("run_k", [{"seq": 1, "type": "run.started", "data": {}}])
    assert await store.get_run("run_k", key_id="key_b") is None
    assert (await store.get_run("run_k", key_id="key_a")).id == "run_k"
    assert (await store.get_run("run_k")).id == "run_k"  # admin
    assert await store.list_runs(key_id="key_b") == await store.list_runs(key_id="nobody")
    assert (await store.list_runs(key_id="key_b")).items == []
    assert await store.events_after("run_k", 0, key_id="key_b") == []
    assert await store.set_feedback("run_k", 1.0, "stolen", key_id="key_b") is False
    assert await store.delete_run("run_k", key_id="key_b") is False

    assert await store.set_feedback("run_k", 0.5, "good synthesis", key_id="key_a") is True
    got = await store.get_run("run_k")
    assert (got.feedback_score, got.feedback_comment) == (0.5, "good synthesis")
    assert await store.set_feedback("run_missing", 1.0, None) is False
    with pytest.raises(ValueError):
        await store.set_feedback("run_k", float("nan"), None)
    assert await store.delete_run("run_k", key_id="key_a") is True
    assert await store.get_run("run_k") is None


# ---- events ------------------------------------------------------------------------------------


async def test_events_after_ordering_and_duplicates(store):
    await new_run(store, "run_e")
    evs = [Event("run_e", seq, PanelDelta(member="m1", text=f"t{seq}"), "panel", ts=100.0 + seq) for seq in (3, 1, 2)]
    await store.append_events("run_e", evs)
    await store.append_events(
        "run_e",
        [
            {"seq": 2, "type": "panel.delta", "data": {"text": "REPLAYED"}},  # duplicate: ignored
            {"seq": 4, "type": "run.completed", "data": {"cost": 0.1}, "ts": 200.5},
        ],
    )
    got = await store.events_after("run_e", 0)
    assert [e.seq for e in got] == [1, 2, 3, 4]
    assert got[1].data == {"member": "m1", "text": "t2"}
    assert got[3].stage == "run"  # derived from the type when not given
    assert got[3].to_dict() == {
        "run_id": "run_e",
        "seq": 4,
        "type": "run.completed",
        "stage": "run",
        "ts": 200.5,
        "cost": 0.1,
    }
    assert [e.seq for e in await store.events_after("run_e", 2)] == [3, 4]
    assert [e.seq for e in await store.events_after("run_e", 0, limit=2)] == [1, 2]
    assert await store.events_after("run_e", 4) == []
    with pytest.raises(RunNotFoundError):
        await store.append_events("run_none", [{"seq": 1, "type": "run.started"}])
    with pytest.raises(ValueError):
        await store.append_events("run_e", [Event("run_other", 9, RunStarted(spec={}, prompt_version="v"), "run")])


async def test_event_data_round_trips_in_batches_past_one_statement(store):
    # On SQLite a batch is one statement carrying the rows as a JSON array (store/events.py);
    # what is read back is what was written, through a flush and through the outcome's transaction.
    await new_run(store, "run_rt")
    tricky = {
        "text": 'quote " backslash \\ newline \n tab \t ✓ 🙂 \u0000 end',
        "nested": {"list": [1, 2.5, None, True, "x"], "empty": {}},
        "floats": [0.1, 1e-300, 123456789.123456789, -0.0],
        "huge": 2**70,
        "nan": math.nan,
    }
    flushed = [
        {"seq": i, "type": "panel.delta", "data": {**tricky, "i": i}, "ts": 1000.0 + i / 7} for i in range(1, 1201)
    ]
    await store.append_events("run_rt", flushed)
    last = [{"seq": 1201, "type": "run.completed", "data": {"cost": 0.1}, "ts": 3000.25}]
    await store.finish_run(
        "run_rt",
        status="completed",
        result=None,
        content="",
        usage=None,
        cost=None,
        degraded=False,
        error=None,
        latency_ms=1,
        events=[*flushed[-3:], *last],  # already-stored ones are skipped
    )
    got = await store.events_after("run_rt", 0, limit=2000)
    assert [e.seq for e in got] == list(range(1, 1202))
    expected = {**tricky, "nan": None}
    for e in (got[0], got[499], got[500], got[1199]):
        assert e.data == {**expected, "i": e.seq}
        assert e.ts == 1000.0 + e.seq / 7 and e.stage == "panel" and e.type == "panel.delta"
    assert got[-1].data == {"cost": 0.1} and got[-1].ts == 3000.25 and got[-1].stage == "run"


async def test_a_sqlite_event_batch_is_one_statement(tmp_path):
    """sqlite3's executemany lets go of the GIL once per row, and in the writer thread each row then
    waited for a busy loop to hand it back: a batch must be one statement there."""
    store = await RunStore.open(f"sqlite:///{tmp_path / 'runs.db'}")
    seen: list[tuple[str, bool]] = []

    def record(conn, cursor, statement, parameters, context, executemany):
        if "run_events" in statement:
            seen.append((statement.split()[0], executemany))

    sa.event.listen(sa.engine.Engine, "before_cursor_execute", record)
    try:
        await new_run(store, "run_one")
        await store.append_events("run_one", [{"seq": i, "type": "panel.delta"} for i in range(1, 1101)])
        assert seen == [("INSERT", False)]
        assert len(await store.events_after("run_one", 0, limit=2000)) == 1100
    finally:
        sa.event.remove(sa.engine.Engine, "before_cursor_execute", record)
        await store.close()


async def test_delete_cascades_events(store):
    await new_run(store, "run_d")
    await new_run(store, "run_other")
    await store.append_events("run_d", [{"seq": i, "type": "final.delta", "data": {"text": "x"}} for i in range(1, 6)])
    await store.append_events("run_other", [{"seq": 1, "type": "run.started"}])
    assert await store.delete_run("run_d") is True
    assert (
        await scalar(store, sa.select(sa.func.count()).select_from(run_events).where(run_events.c.run_id == "run_d"))
        == 0
    )
    assert len(await store.events_after("run_other", 0)) == 1
    assert await store.delete_run("run_d") is False


# ---- lifecycle sweeps --------------------------------------------------------------------------


async def test_interrupting_abandoned_runs_ends_them_and_settles_their_reservations(store):
    for rid in ("run_r1", "run_r2", "run_done"):
        await new_run(store, rid)
    await store.finish_run(
        "run_done",
        status="completed",
        result=None,
        content="ok",
        usage=None,
        cost=0.1,
        degraded=False,
        error=None,
        latency_ms=1,
    )
    key = await store.keys.create("team", budget_usd=1.0)
    assert await store.keys.reserve(key.key.id, "run_r1", 0.25)
    assert await store.keys.reserve(key.key.id, "proxy_old", 0.125)  # a proxied call of the dead process
    await store.append_events("run_r1", [{"seq": 1, "type": "run.started", "data": {}}])
    running = {r.id for r in await running_runs(store.database)}
    assert running == {"run_r1", "run_r2"}
    assert sorted(await interrupt_runs(store.database, ["run_r1", "run_r2", "run_done"])) == ["run_r1", "run_r2"]
    assert await interrupt_runs(store.database, ["run_r1"]) == []  # once only (another replica raced it)
    r1 = await store.get_run("run_r1")
    assert r1.status == "interrupted" and r1.error == INTERRUPTED_ERROR and r1.cost == 0.25
    assert (await store.get_run("run_done")).status == "completed"
    events = await store.events_after("run_r1")
    assert [e.type for e in events] == ["run.started", "run.failed"] and events[-1].seq == 2
    fresh = await store.keys.get(key.key.id)
    assert fresh.spent_usd == 0.25 and fresh.reserved_usd == 0.125
    assert await store.keys.reserve(key.key.id, "run_done", 0.0625)  # stored, then the process died unsettled
    held = {h.run_id: h for h in await held_reservations(store.database)}
    assert set(held) == {"run_done", "proxy_old"}  # run_r1's was settled with its interruption
    assert (held["run_done"].run_status, held["run_done"].run_cost) == ("completed", 0.1)
    proxy = held["proxy_old"]
    assert (proxy.run_status, proxy.host, proxy.owner_pid) == (None, socket.gethostname(), os.getpid())
    assert await settle_reservations(store.database, {"run_done": 0.1}) == 1
    fresh = await store.keys.get(key.key.id)
    assert fresh.spent_usd == pytest.approx(0.35) and fresh.reserved_usd == 0.125  # at run_done's stored cost
    assert await settle_reservations(store.database, {"proxy_old": None, "run_done": 0.1}) == 1  # once each
    fresh = await store.keys.get(key.key.id)
    assert fresh.spent_usd == pytest.approx(0.475) and fresh.reserved_usd == 0.0


async def test_purge_content_blanks_old_runs_but_keeps_cost(store):
    for rid in ("run_old", "run_new", "run_old_running"):
        await new_run(store, rid)
        await store.append_events(rid, [{"seq": 1, "type": "final.delta", "data": {"text": "secret"}}])
    for rid in ("run_old", "run_new"):
        await store.finish_run(
            rid,
            status="completed",
            result={"content": "secret"},
            content="secret",
            usage={"prompt_tokens": 9},
            cost=0.42,
            degraded=False,
            error=None,
            latency_ms=7,
        )
    cutoff = T0 + timedelta(days=30)
    await set_column(store, "run_old", created_at=T0)
    await set_column(store, "run_old_running", created_at=T0)
    await set_column(store, "run_new", created_at=cutoff + timedelta(days=1))

    assert await store.purge_content(cutoff) == 1
    old = await store.get_run("run_old")
    assert (old.request, old.result, old.content) == ({}, None, "")
    assert (old.cost, old.usage, old.status, old.purged_at is not None) == (
        0.42,
        {"prompt_tokens": 9},
        "completed",
        True,
    )
    old_events = await store.events_after("run_old", 0)
    assert [(e.type, e.data) for e in old_events] == [("final.delta", {})]
    new = await store.get_run("run_new")
    assert (new.content, new.result, new.purged_at) == ("secret", {"content": "secret"}, None)
    assert (await store.events_after("run_new", 0))[0].data == {"text": "secret"}
    assert (await store.get_run("run_old_running")).content == ""  # never finished; still not purged:
    assert (await store.get_run("run_old_running")).purged_at is None
    assert await store.purge_content(cutoff) == 0


async def test_settling_never_overspends_a_budget_nor_credits_a_key(store):
    key = (await store.keys.create("tight", budget_usd=0.02)).key
    assert await store.keys.reserve(key.id, "run_neg", 0.001)
    await store.keys.settle("run_neg", -5.0)  # a negative reported cost
    assert (await store.keys.get(key.id)).spent_usd == 0.0
    assert await store.keys.reserve(key.id, "run_over", 0.006)
    await store.keys.settle("run_over", 0.031)  # the provider reported more than our worst case
    fresh = await store.keys.get(key.id)
    assert fresh.reserved_usd == 0.0
    assert fresh.spent_usd == pytest.approx(0.02)  # charged up to the budget, nothing credited


@given(
    reserved=st.floats(0, 10),
    actual=st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True)),
    budget=st.one_of(st.none(), st.floats(0, 20)),
    spent=st.floats(0, 20),
    others=st.floats(0, 5),
)
def test_a_settled_charge_is_finite_non_negative_and_within_the_budget(reserved, actual, budget, spent, others):
    headroom = None if budget is None else budget - spent
    charge = settled_charge(reserved, actual, headroom, reserved + others)
    assert math.isfinite(charge) and charge >= 0.0
    assert charge >= min(reserved, charge)  # never below the admitted reservation unless it cost less
    if headroom is not None and charge > reserved:
        assert charge <= headroom - others + 1e-9  # past the reservation only into free budget
