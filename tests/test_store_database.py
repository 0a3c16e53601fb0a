"""panelfuse.store.database: the shared Database layer, its SQLite write rule, and the stores built on it."""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine

from conftest import require_service
from panelfuse.evals.store import AnswerRow, EvalStore, GradeRow
from panelfuse.store import Database, KeyStore, RunStore, StoreConnectError
from panelfuse.store import database as database_module
from panelfuse.store.schema import UTCDateTime

PG_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
SRC = Path(__file__).resolve().parents[1] / "src"

counter = sa.Table(
    "test_counter",
    sa.MetaData(),
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("value", sa.Integer, nullable=False),
)


@pytest.fixture(params=["sqlite", "postgresql"])
async def db(request, tmp_path):
    """An open, migrated Database: a SQLite file, or a random PG schema dropped afterwards."""
    if request.param == "sqlite":
        async with await Database.open(f"sqlite:///{tmp_path / 'sub' / 'runs.db'}") as database:
            yield database
        return
    require_service(5432, "PostgreSQL")
    schema = f"pf_test_{uuid.uuid4().hex[:12]}"
    async with await Database.open(PG_URL, schema=schema) as database:
        yield database
    engine = create_async_engine(PG_URL)
    try:
        async with engine.begin() as conn:
            await conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
    finally:
        await engine.dispose()


# ---- the SQLite write rule ---------------------------------------------------------------------


async def test_write_takes_the_sqlite_write_lock_before_any_statement(tmp_path):
    path = tmp_path / "runs.db"
    async with await Database.open(f"sqlite:///{path}") as db:
        assert db.is_sqlite
        other = sqlite3.connect(path, timeout=0, isolation_level=None)
        try:
            async with db.read() as conn:
                await conn.execute(sa.select(1))
                other.execute("BEGIN IMMEDIATE")  # a reader holds no write lock
                other.execute("ROLLBACK")
            async with db.write():
                with pytest.raises(sqlite3.OperationalError, match="locked"):
                    other.execute("BEGIN IMMEDIATE")
            other.execute("BEGIN IMMEDIATE")  # released at commit
            other.execute("ROLLBACK")
        finally:
            other.close()


async def test_concurrent_writers_on_one_sqlite_file_all_succeed(tmp_path):
    """Read-modify-write transactions from two Database objects (two pools, as two processes would
    have): each queues for the write lock, so none fails with SQLITE_BUSY and no update is lost."""
    url = f"sqlite:///{tmp_path / 'runs.db'}"
    async with await Database.open(url) as first, await Database.open(url) as second:
        async with first.write() as conn:
            await conn.run_sync(counter.metadata.create_all)
            await conn.execute(counter.insert().values(id=1, value=0))

        async def increment(db: Database) -> None:
            async with db.write() as conn:
                value = (await conn.execute(sa.select(counter.c.value).where(counter.c.id == 1))).scalar_one()
                await asyncio.sleep(0)  # let the other writers run in between
                await conn.execute(counter.update().where(counter.c.id == 1).values(value=value + 1))

        per_db = 15
        await asyncio.gather(*(increment(db) for db in (first, second) for _ in range(per_db)))
        async with second.read() as conn:
            assert (await conn.execute(sa.select(counter.c.value))).scalar_one() == 2 * per_db


async def test_write_rolls_back_on_error(db):
    async with db.write() as conn:
        await conn.run_sync(counter.metadata.create_all)
    with pytest.raises(RuntimeError):
        async with db.write() as conn:
            await conn.execute(counter.insert().values(id=1, value=1))
            raise RuntimeError("abort")
    async with db.read() as conn:
        assert (await conn.execute(sa.select(sa.func.count()).select_from(counter))).scalar_one() == 0


async def test_transact_commits_what_work_returns_and_rolls_back_what_raises(db):
    async with db.write() as conn:
        await conn.run_sync(counter.metadata.create_all)
    inserted = await db.transact(lambda c: c.execute(counter.insert(), {"id": 1, "value": 1}).rowcount)
    assert inserted == 1

    def fails(c: sa.Connection) -> None:
        c.execute(counter.insert(), {"id": 2, "value": 2})
        raise RuntimeError("abort")

    with pytest.raises(RuntimeError):
        await db.transact(fails)
    async with db.read() as conn:
        assert (await conn.execute(sa.select(counter.c.id))).scalars().all() == [1]


kinds = sa.Table(
    "test_kinds",
    sa.MetaData(),
    sa.Column("id", sa.String, primary_key=True),
    sa.Column("at", UTCDateTime, nullable=False),
    sa.Column("doc", sa.JSON(none_as_null=True), nullable=True),
    sa.Column("flag", sa.Boolean, nullable=False),
    sa.Column("cost", sa.Double, nullable=True),
)


@pytest.mark.parametrize("flag", [True, False])
async def test_execute_stores_a_row_as_transact_does(db, monkeypatch, flag):
    """Every kind of column the store has (UTC time, JSON, bool, null, float) reads back the same
    whichever way the row was written; on SQLite `execute` runs it through the driver, and the stored
    values are the same to the byte."""
    from datetime import UTC, datetime, timedelta, timezone

    monkeypatch.setattr(database_module, "INLINE_GAP_S", 0.0)
    async with db.write() as conn:
        await conn.run_sync(kinds.metadata.create_all)
    at = datetime(2026, 12, 4, 18, 30, 1, 123456, tzinfo=timezone(timedelta(hours=2)))
    row = {"at": at, "doc": {"a": [1, "é", None], "b": {"c": 1.5}}, "flag": flag, "cost": None}
    assert await db.execute(kinds.insert(), {"id": "fast", **row}, awaited=True) == 1
    await db.transact(lambda c: c.execute(kinds.insert(), {"id": "usual", **row}))
    async with db.read() as conn:
        rows = {r.id: r for r in (await conn.execute(sa.select(kinds))).all()}
    assert rows["fast"][1:] == rows["usual"][1:] == (at.astimezone(UTC), row["doc"], flag, None)
    if db.is_sqlite:
        path = db.url.database
        with sqlite3.connect(path) as raw:
            stored = dict(raw.execute("SELECT id, at || doc || flag || ifnull(cost, 'null') FROM test_kinds"))
        assert stored["fast"] == stored["usual"]


async def test_execute_on_the_loop_goes_through_the_driver_and_raises_sqlalchemys_errors(tmp_path, monkeypatch):
    monkeypatch.setattr(database_module, "INLINE_GAP_S", 0.0)
    async with await Database.open(f"sqlite:///{tmp_path / 'runs.db'}") as db:
        await db.transact(lambda c: counter.metadata.create_all(c))
        through_sqlalchemy: list[str] = []
        sa.event.listen(db._inline_engine, "before_cursor_execute", lambda *a: through_sqlalchemy.append(a[2]))
        assert await db.execute(counter.insert(), {"id": 1, "value": 1}) == 1
        assert through_sqlalchemy == []  # compiled once, then run by the driver
        with pytest.raises(sa.exc.IntegrityError):  # the error callers catch, as from transact
            await db.execute(counter.insert(), {"id": 1, "value": 2})
        # the failed write rolled back and the connection goes on
        assert await db.execute(counter.insert(), {"id": 2, "value": 2}, awaited=True) == 1
        assert await db.execute(db.insert_ignoring(counter, "id"), {"id": 2, "value": 3}) == 0
        async with db.read() as conn:
            assert (await conn.execute(sa.select(counter).order_by(counter.c.id))).all() == [(1, 1), (2, 2)]


async def test_execute_all_commits_its_steps_together_or_not_at_all(tmp_path, monkeypatch):
    from panelfuse.store.events import SQLITE_INSERT_EVENTS  # SQL text runs this way too

    monkeypatch.setattr(database_module, "INLINE_GAP_S", 0.0)
    async with await Database.open(f"sqlite:///{tmp_path / 'runs.db'}") as db:
        await db.transact(lambda c: counter.metadata.create_all(c))
        with pytest.raises(sa.exc.IntegrityError):
            await db.execute_all([(counter.insert(), {"id": 1, "value": 1}), (counter.insert(), {"id": 1, "value": 2})])
        async with db.read() as conn:
            assert (await conn.execute(sa.select(sa.func.count()).select_from(counter))).scalar_one() == 0
        steps = [(counter.insert(), {"id": 1, "value": 1}), (counter.update().values(value=5), {})]
        assert await db.execute_all(steps, awaited=True) == [1, 1]
        assert await db.execute_all([(SQLITE_INSERT_EVENTS, {"rows": "[]"})]) == [0]
        async with db.read() as conn:
            assert (await conn.execute(sa.select(counter))).all() == [(1, 5)]


async def test_execute_of_a_statement_with_a_computed_default_runs_the_usual_way(tmp_path, monkeypatch):
    monkeypatch.setattr(database_module, "INLINE_GAP_S", 0.0)
    defaulted = sa.Table(
        "test_defaulted",
        sa.MetaData(),
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("tag", sa.String, nullable=False, default=lambda: "computed"),
    )
    async with await Database.open(f"sqlite:///{tmp_path / 'runs.db'}") as db:
        await db.transact(lambda c: defaulted.metadata.create_all(c))
        assert await db.execute(defaulted.insert(), {"id": 1}) == 1
        async with db.read() as conn:
            assert (await conn.execute(sa.select(defaulted))).all() == [(1, "computed")]


async def test_execute_of_a_statement_that_expands_a_list_runs_the_usual_way(tmp_path, monkeypatch):
    monkeypatch.setattr(database_module, "INLINE_GAP_S", 0.0)
    async with await Database.open(f"sqlite:///{tmp_path / 'runs.db'}") as db:
        await db.transact(lambda c: counter.metadata.create_all(c))
        for i in range(3):
            await db.execute(counter.insert(), {"id": i, "value": i})
        bump = counter.update().where(counter.c.id.in_(sa.bindparam("ids", expanding=True)))
        assert await db.execute(bump, {"ids": [0, 2], "value": 9}) == 2
        async with db.read() as conn:
            assert (await conn.execute(sa.select(counter).order_by(counter.c.id))).all() == [(0, 9), (1, 1), (2, 9)]


async def test_execute_waits_in_the_writer_thread_while_another_process_holds_the_lock(tmp_path, monkeypatch):
    monkeypatch.setattr(database_module, "INLINE_GAP_S", 3600.0)
    path = tmp_path / "runs.db"
    async with await Database.open(f"sqlite:///{path}") as db:
        await db.transact(lambda c: counter.metadata.create_all(c))
        second_tries: list[object] = []  # refused the lock once, the write goes to the thread, not to BEGIN again

        def tried_again(self: Database, work: object) -> tuple[bool, None]:
            second_tries.append(work)
            return False, None

        monkeypatch.setattr(Database, "_transact_inline", tried_again)
        other = sqlite3.connect(path, timeout=0, isolation_level=None)  # as another worker process would
        try:
            other.execute("BEGIN IMMEDIATE")
            other.execute("INSERT INTO test_counter (id, value) VALUES (2, 2)")
            write = asyncio.create_task(db.execute(counter.insert(), {"id": 1, "value": 1}, awaited=True))
            for _ in range(20):  # the loop is not blocked meanwhile
                await asyncio.sleep(0.01)
            assert not write.done()
            other.execute("COMMIT")
            assert await asyncio.wait_for(write, 30) == 1
        finally:
            other.close()
        assert second_tries == []
        assert await db.execute(counter.insert(), {"id": 3, "value": 3}, awaited=True) == 1  # the loop's again
        async with db.read() as conn:
            assert (await conn.execute(sa.select(counter.c.id).order_by(counter.c.id))).scalars().all() == [1, 2, 3]


async def test_a_lone_write_runs_on_the_loop_thread_when_the_write_lock_is_free(tmp_path, monkeypatch):
    monkeypatch.setattr(database_module, "INLINE_GAP_S", 0.0)  # every write is a lone one
    async with await Database.open(f"sqlite:///{tmp_path / 'runs.db'}") as db:
        await db.transact(lambda c: counter.metadata.create_all(c))
        ran_in: list[str] = []

        def work(c: sa.Connection) -> int:
            ran_in.append(threading.current_thread().name)
            return c.execute(counter.insert(), {"id": 1, "value": 1}).rowcount

        assert await db.transact(work) == 1
        assert ran_in == [threading.current_thread().name]  # no hop: the loop's own thread
        # What `work` raises is the caller's, raised once: a failed write is not tried again elsewhere.
        calls: list[int] = []

        def duplicate(c: sa.Connection) -> None:
            calls.append(1)
            c.execute(counter.insert(), {"id": 1, "value": 2})

        with pytest.raises(sa.exc.IntegrityError):
            await db.transact(duplicate)
        assert calls == [1]
        # The loop keeps one connection open across its writes (no pool checkout and reset per write),
        # and a write that raised leaves it usable.
        checkouts: list[int] = []
        sa.event.listen(db._inline_engine, "checkout", lambda *_: checkouts.append(1))
        assert await db.transact(lambda c: c.execute(counter.insert(), {"id": 2, "value": 2}).rowcount) == 1
        assert await db.transact(lambda c: c.execute(counter.insert(), {"id": 3, "value": 3}).rowcount) == 1
        assert ran_in == [threading.current_thread().name] and checkouts == []


async def test_a_write_right_after_another_goes_to_the_writer_thread(tmp_path, monkeypatch):
    monkeypatch.setattr(database_module, "INLINE_GAP_S", 3600.0)  # every write but the first follows another
    async with await Database.open(f"sqlite:///{tmp_path / 'runs.db'}") as db:
        ran_in: list[str] = []

        def work(c: sa.Connection) -> None:
            ran_in.append(threading.current_thread().name)
            counter.metadata.create_all(c)

        await db.transact(work)
        await db.transact(work)
        assert ran_in[0] == threading.current_thread().name
        assert ran_in[1].startswith("panelfuse-sqlite-writer")


async def test_an_awaited_write_runs_on_the_loop_thread_even_right_after_another(tmp_path, monkeypatch):
    monkeypatch.setattr(database_module, "INLINE_GAP_S", 3600.0)  # no write is a lone one
    async with await Database.open(f"sqlite:///{tmp_path / 'runs.db'}") as db:
        ran_in: list[str] = []

        def work(c: sa.Connection) -> None:
            ran_in.append(threading.current_thread().name)
            counter.metadata.create_all(c)

        await db.transact(work)
        await db.transact(work)  # follows another: the writer thread
        await db.transact(work, awaited=True)  # a client waits for it: the loop's thread, lock free
        assert ran_in[1].startswith("panelfuse-sqlite-writer")
        assert ran_in[2] == threading.current_thread().name


async def test_the_writes_a_client_waits_for_are_awaited_and_the_event_flush_is_not(tmp_path, monkeypatch):
    """A run's start and outcome and a proxied call's generation commit on the loop (the lock being
    free); the periodic flush of many runs' events still goes to the writer thread."""
    from datetime import UTC, datetime

    from panelfuse.store import GenerationStore
    from panelfuse.store.generations import GenerationRecord

    monkeypatch.setattr(database_module, "INLINE_GAP_S", 3600.0)  # no write is a lone one
    where: list[str] = []
    inline, threaded = Database._transact_inline, Database._transact_sqlite
    executed = Database._execute_inline

    def on_loop(self: Database, work):  # type: ignore[no-untyped-def]
        where.append("loop")
        return inline(self, work)

    def executed_on_loop(self: Database, prepared, steps):  # type: ignore[no-untyped-def]
        where.append("loop")
        return executed(self, prepared, steps)

    def in_thread(self: Database, work):  # type: ignore[no-untyped-def]
        where.append("thread")
        return threaded(self, work)

    monkeypatch.setattr(Database, "_transact_inline", on_loop)
    monkeypatch.setattr(Database, "_execute_inline", executed_on_loop)
    monkeypatch.setattr(Database, "_transact_sqlite", in_thread)
    store = await RunStore.open(f"sqlite:///{tmp_path / 'runs.db'}")
    try:
        await store.create_run(
            "run_1",
            spec={},
            request={},
            request_model="fusion/default",
            preset="default",
            mode="synthesize",
            prompt_version="v1",
        )
        await store.append_events_of({"run_1": [{"seq": 1, "type": "run.started", "data": {}}]})
        await store.finish_run(
            "run_1",
            status="completed",
            result={},
            content="done",
            usage=None,
            cost=None,
            degraded=False,
            error=None,
            latency_ms=1,
            events=[{"seq": 2, "type": "run.completed", "data": {}}],
        )
        record = GenerationRecord(
            id="chatcmpl-1",
            kind="chat",
            model="fake/m",
            key_id=None,
            created_at=datetime.now(UTC),
            latency_ms=1,
            prompt_tokens=1,
            completion_tokens=1,
            cost=None,
            finish_reason="stop",
            streamed=True,
        )
        assert await GenerationStore(store.database).insert(record)
        assert where[-4:] == ["loop", "thread", "loop", "loop"]
        assert [e.seq for e in await store.events_after("run_1", 0)] == [1, 2]
    finally:
        await store.close()


@pytest.mark.parametrize("awaited", [False, True])  # lone, or one a client waits for: the loop's, but for the lock
async def test_transact_waits_in_the_writer_thread_while_another_process_holds_the_lock(tmp_path, monkeypatch, awaited):
    monkeypatch.setattr(database_module, "INLINE_GAP_S", 3600.0 if awaited else 0.0)
    path = tmp_path / "runs.db"
    async with await Database.open(f"sqlite:///{path}") as db:
        await db.transact(lambda c: counter.metadata.create_all(c))
        other = sqlite3.connect(path, timeout=0, isolation_level=None)  # as another worker process would
        ran_in: list[str] = []

        def work(c: sa.Connection) -> None:
            ran_in.append(threading.current_thread().name)
            c.execute(counter.insert(), {"id": 1, "value": 1})

        try:
            other.execute("BEGIN IMMEDIATE")
            other.execute("INSERT INTO test_counter (id, value) VALUES (2, 2)")
            write = asyncio.create_task(db.transact(work, awaited=awaited))
            for _ in range(20):  # the loop is not blocked meanwhile: this task keeps getting turns
                await asyncio.sleep(0.01)
            assert not write.done() and ran_in == []
            other.execute("COMMIT")
            await asyncio.wait_for(write, 30)
        finally:
            other.close()
        assert ran_in and ran_in[0].startswith("panelfuse-sqlite-writer")

        # The loop's connection, refused the lock at BEGIN, takes the next write as soon as it is free.
        def more(c: sa.Connection) -> None:
            ran_in.append(threading.current_thread().name)
            c.execute(counter.insert(), {"id": 3, "value": 3})

        await db.transact(more, awaited=True)
        assert ran_in[-1] == threading.current_thread().name
        async with db.read() as conn:
            assert (await conn.execute(sa.select(counter.c.id).order_by(counter.c.id))).scalars().all() == [1, 2, 3]


async def test_the_writer_thread_checkpoints_what_the_loop_commits(tmp_path, monkeypatch):
    monkeypatch.setattr(database_module, "CHECKPOINT_EVERY", 4)
    monkeypatch.setattr(database_module, "INLINE_GAP_S", 0.0)
    path = tmp_path / "runs.db"
    async with await Database.open(f"sqlite:///{path}") as db:
        await db.transact(lambda c: counter.metadata.create_all(c))
        checkpoints: list[str] = []
        original = Database._checkpoint

        def spied(self: Database) -> None:
            original(self)
            checkpoints.append(threading.current_thread().name)

        monkeypatch.setattr(Database, "_checkpoint", spied)
        for i in range(8):
            await db.transact(lambda c, i=i: c.execute(counter.insert(), {"id": i, "value": i}))
        for _ in range(500):
            if len(checkpoints) >= 2:
                break
            await asyncio.sleep(0.01)
        # 9 commits on the loop (the table, then 8 rows): a checkpoint after the 4th and the 8th.
        assert len(checkpoints) == 2 and all(n.startswith("panelfuse-sqlite-writer") for n in checkpoints)
        async with db.read() as conn:
            assert (await conn.execute(sa.select(sa.func.count()).select_from(counter))).scalar_one() == 8


async def test_transact_on_an_in_memory_database_uses_its_one_connection():
    async with await Database.open("sqlite://") as db:
        await db.transact(lambda c: counter.metadata.create_all(c))
        await db.transact(lambda c: c.execute(counter.insert(), {"id": 1, "value": 7}))
        async with db.read() as conn:
            assert (await conn.execute(sa.select(counter.c.value))).scalar_one() == 7


async def test_insert_speaks_the_dialect_upsert(db):
    async with db.write() as conn:
        await conn.run_sync(counter.metadata.create_all)
    for value in (1, 2):
        stmt = db.insert(counter).values(id=1, value=value)
        async with db.write() as conn:
            await conn.execute(stmt.on_conflict_do_update(index_elements=["id"], set_={"value": value}))
    async with db.write() as conn:
        await conn.execute(db.insert(counter).values(id=1, value=9).on_conflict_do_nothing(index_elements=["id"]))
    async with db.read() as conn:
        assert (await conn.execute(sa.select(counter.c.value))).all() == [(2,)]


async def test_open_unreachable_raises_connect_error_without_password():
    with pytest.raises(StoreConnectError) as info:
        await Database.open("postgresql://u:s3cretpw@127.0.0.1:1/x")
    assert "s3cretpw" not in str(info.value)


# ---- the stores on a Database ------------------------------------------------------------------


async def test_key_store_on_a_database_alone(db):
    keys = KeyStore(db)
    new = await keys.create("team", budget_usd=1.0)
    assert (await keys.authenticate(new.secret)).id == new.key.id
    assert await keys.reserve(new.key.id, "run_1", 0.75) is True
    assert await keys.reserve(new.key.id, "run_2", 0.5) is False  # over budget
    await keys.settle("run_1", 0.25)
    await keys.settle("run_1", 0.25)  # twice: no effect
    got = await keys.get(new.key.id)
    assert (got.spent_usd, got.reserved_usd) == (0.25, 0.0)
    assert await keys.revoke("team") == 1
    assert await keys.authenticate(new.secret) is None


def _answer(content: str) -> AnswerRow:
    return AnswerRow("cfg", "t1", 0, "h", "ok", content, None, 1, 2, 0.5, 10)


def _grade(verdict: str) -> GradeRow:
    return GradeRow("cfg", "t1", 0, "c1", verdict, "why", "grader", "v1", 1, None, 1, 1, None, 5)


async def test_eval_store_on_a_database_alone(db):
    evals = EvalStore(db)
    await evals.put_answer("e1", _answer("first\x00"))
    await evals.put_grade("e1", _grade("UNMET"))
    await evals.put_grade("e1", _grade("MET"))  # upsert: replaces
    assert (await evals.answers("e1"))[("cfg", "t1", 0)].content == "first\ufffd"
    assert [g.verdict for g in (await evals.grades("e1")).values()] == ["MET"]
    await evals.put_answer("e1", _answer("second"))  # a new answer drops the old grades
    assert (await evals.answers("e1"))[("cfg", "t1", 0)].content == "second"
    assert await evals.grades("e1") == {}
    assert await evals.answers("other") == {}


async def test_run_store_shares_its_database(tmp_path):
    async with await RunStore.open(f"sqlite:///{tmp_path / 'runs.db'}") as store:
        assert store.engine is store.database.engine
        new = await store.keys.create("k")
        assert (await KeyStore(store.database).get(new.key.id)) == new.key
        await EvalStore(store.database).put_answer("e1", _answer("x"))
        assert list(await EvalStore(store.database).answers("e1")) == [("cfg", "t1", 0)]


async def test_append_events_reads_the_stage_from_the_event(tmp_path):
    class Ev:  # any object with the StoredEvent fields; not the pipeline's Event
        def __init__(self, seq: int, type_: str, stage: str) -> None:
            self.run_id, self.seq, self.type, self.stage, self.data, self.ts = "run_s", seq, type_, stage, {"k": 1}, 5.0

    async with await RunStore.open(f"sqlite:///{tmp_path / 'runs.db'}") as store:
        await store.create_run(
            "run_s", spec={}, request={}, request_model="m", preset=None, mode="synthesize", prompt_version="v1"
        )
        await store.append_events(
            "run_s",
            [Ev(1, "tool.called", "analysis"), {"seq": 2, "type": "final.delta"}, {"seq": 3, "type": "panel.cut"}],
        )
        got = await store.events_after("run_s")
    assert [(e.seq, e.stage) for e in got] == [(1, "analysis"), (2, "synthesis"), (3, "panel")]
    assert (got[0].data, got[0].ts) == ({"k": 1}, 5.0)


# ---- import boundaries -------------------------------------------------------------------------

_IMPORT_CHECK = """
import sys, types
# A bare parent package: panelfuse/__init__.py itself imports the pipeline (the public Fusion API),
# and what is checked here is the store's own imports.
pkg = types.ModuleType("panelfuse")
pkg.__path__ = [{src!r} + "/panelfuse"]
sys.modules["panelfuse"] = pkg
import panelfuse.store, panelfuse.store.database, panelfuse.store.events, panelfuse.store.keys
import panelfuse.store.runs, panelfuse.store.migrate
forbidden = ("panelfuse.pipeline", "panelfuse.service", "panelfuse.server", "panelfuse.cli", "panelfuse.evals")
print(sorted(m for m in sys.modules if m.startswith(forbidden)))
"""


def test_the_store_imports_no_pipeline_service_server_cli_or_evals():
    out = subprocess.run(
        [sys.executable, "-c", _IMPORT_CHECK.format(src=str(SRC))], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"
