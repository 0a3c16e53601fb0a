"""Database: one engine, its URL and dialect, shared by the run, key and eval stores.

Every write in the store goes through `Database.write()` or `Database.transact()`, the two places
that know SQLite's rule: a writer must take the write lock when its transaction begins (see `write`).
`transact` is for the frequent writes: on a SQLite file it runs a whole transaction on a plain
connection, on the event loop's thread when the write lock is free at once (for a lone write, or one a
client waits for), else in one writer thread.
"""

from __future__ import annotations

import asyncio
import logging
import random
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Any, Self, TypeVar, cast

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import URL, Dialect
from sqlalchemy.exc import DBAPIError, OperationalError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from panelfuse.store.engine import SQLITE_BEGIN_OPTION, build_engine, build_sqlite_writer, is_sqlite_busy
from panelfuse.store.errors import StoreConnectError, StoreError
from panelfuse.store.migrate import migrate
from panelfuse.store.prepared import Prepared, Statement
from panelfuse.store.url import mask_url, normalize_url, sqlite_file

log = logging.getLogger("panelfuse.store")
TRANSACTION_ATTEMPTS = 4
# Transactions committed on the loop's own SQLite connection between two checkpoints of the WAL, which
# the writer thread runs. SQLite's own default is a checkpoint per 1000 WAL pages; a run's outcome or
# an event batch writes a few dozen.
CHECKPOINT_EVERY = 32
# A write this soon after the previous one goes to the writer thread: it is awake then, and the loop
# has other work, which the write would hold up (at 32 fusions in flight, writing on the loop put the
# median latency up by 4 %). A lone write runs on the loop, where it is cheaper than waking the thread.
INLINE_GAP_S = 0.05
RETRYABLE_SQLSTATES = {"40P01", "40001"}  # deadlock_detected, serialization_failure
PREPARED_KEPT = 256  # compiled statements the loop's connection keeps (`execute_all`)

T = TypeVar("T")
Step = tuple[Statement, dict[str, Any]]  # a statement of a write, and its parameters


class Database:
    """An open database. Build with `await Database.open(url)`; close with `await db.close()`."""

    def __init__(self, engine: AsyncEngine, url: URL) -> None:
        self._engine = engine
        self._url = url
        # SQLite: the frequent writes (`transact`) run whole on a plain connection: the loop's own when
        # the write lock is free at once, else the writer thread's, which waits for it.
        self._writer: ThreadPoolExecutor | None = None
        self._writer_engine: sa.Engine | None = None
        self._inline_engine: sa.Engine | None = None
        # The loop's own connection stays open: checking a connection out of the pool and resetting it
        # on return cost as much as the insert itself (a generation: 130 → 72 µs per write).
        self._inline_conn: sa.Connection | None = None
        self._inline_commits = 0
        self._last_write = -INLINE_GAP_S
        self._inserts_ignoring: dict[tuple[str, tuple[str, ...]], sqlite.Insert | postgresql.Insert] = {}
        # The statement is kept beside its compiled form: the key's id() must not be reused.
        self._prepared: dict[tuple[int, tuple[str, ...]], tuple[Statement, Prepared | None]] = {}
        if engine.dialect.name == "sqlite" and sqlite_file(url) is not None:  # in memory: one connection only
            self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="panelfuse-sqlite-writer")
            self._writer_engine = build_sqlite_writer(url)
            self._inline_engine = build_sqlite_writer(url, wait=False)

    @classmethod
    async def open(
        cls,
        url: str | URL,
        *,
        schema: str | None = None,
        connect_args: dict[str, Any] | None = None,
        echo: bool = False,
    ) -> Self:
        """Connect and migrate to the latest schema (safe when several processes open at once).

        `url`: sqlite[+aiosqlite]:///path.db or postgresql[+asyncpg]://... (plain forms are normalized).
        `schema` (PostgreSQL only): tables live in that schema (created if missing) via the connection's
        search_path. `connect_args` go to the driver's connect(). Raises StoreURLError (bad URL),
        StoreConnectError (unreachable, auth, missing driver), StoreMigrationError; messages never
        contain the password.
        """
        parsed = normalize_url(url)
        path = sqlite_file(parsed)
        if path is not None:
            path.expanduser().parent.mkdir(parents=True, exist_ok=True)
        db = cls(build_engine(parsed, schema=schema, connect_args=connect_args, echo=echo), parsed)
        try:
            # The write transaction is also the cross-process migration lock on SQLite.
            async with db.write() as conn:
                await migrate(conn, schema=schema)
        except BaseException as exc:
            await db.close()
            if isinstance(exc, SQLAlchemyError | OSError | TimeoutError) and not isinstance(exc, StoreError):
                raise _connect_error(parsed, exc) from None
            raise
        return db

    async def close(self) -> None:
        await self._engine.dispose()
        if self._inline_conn is not None:
            self._inline_conn.close()
            self._inline_conn = None
        if self._inline_engine is not None:
            self._inline_engine.dispose()
        if self._writer is not None and self._writer_engine is not None:
            await asyncio.get_running_loop().run_in_executor(self._writer, self._writer_engine.dispose)
            self._writer.shutdown(wait=False)

    async def transact(self, work: Callable[[sa.Connection], T], *, awaited: bool = False) -> T:
        """Run `work(conn)` in one write transaction (committed when it returns, rolled back if it
        raises) and return its result. `work` is plain, synchronous SQLAlchemy Core, and small.

        On a SQLite file it runs with BEGIN IMMEDIATE, as `write` does. A lone write (none in the last
        INLINE_GAP_S) runs on the loop's thread when the write lock is free at once: in WAL mode a commit
        is a few writes to the page cache, cheaper than waking an idle thread. Otherwise it runs in the
        writer thread, which waits for the lock (another process's transaction, or one of ours queued
        there). `awaited`: a small write a client is waiting for (a run's start or outcome) runs on the
        loop's thread whenever the lock is free at once, lone or not: in the writer thread it waited
        behind the queue and for the GIL, and took 14 ms at the median and 150 ms at p99 with 32
        fusions in flight (against 1 ms on the loop). On PostgreSQL it runs on the async connection
        through `run_sync`. The write completes even if the awaiting task is cancelled."""
        if self._writer is not None:
            return await self._transact_local(work, inline=self._inline_turn(awaited))
        for attempt in range(1, TRANSACTION_ATTEMPTS + 1):
            try:
                async with self.write() as conn:
                    return await conn.run_sync(work)
            except DBAPIError as exc:
                # PostgreSQL picked this transaction as a deadlock's (or a serialization conflict's)
                # victim: it was rolled back whole, so running `work` again is safe.
                if attempt == TRANSACTION_ATTEMPTS or getattr(exc.orig, "sqlstate", None) not in RETRYABLE_SQLSTATES:
                    raise
                await asyncio.sleep(random.uniform(0.005, 0.05) * attempt)
        raise AssertionError("unreachable")

    async def execute(self, stmt: Statement, params: dict[str, Any], *, awaited: bool = False) -> int:
        """Run the one statement `stmt` with `params` in a write transaction of its own; its rowcount.
        See `execute_all`."""
        return (await self.execute_all([(stmt, params)], awaited=awaited))[0]

    async def execute_all(self, steps: Sequence[Step], *, awaited: bool = False) -> list[int]:
        """Run `steps` (a statement and its parameters each), in order, in one write transaction, as
        `transact` would; return their rowcounts. Where `transact` would run them on the loop's SQLite
        connection, they run through the driver, each compiled once (`Prepared`), without SQLAlchemy's
        per-execution work: build each statement once (a module constant), as its compiled form is
        kept by the statement's identity. Errors are SQLAlchemy's, as from `transact`."""

        def work(conn: sa.Connection) -> list[int]:
            return [conn.execute(s, p).rowcount for s, p in steps]

        if self._writer is None:
            return await self.transact(work, awaited=awaited)
        inline = self._inline_turn(awaited)
        if inline and (prepared := self._prepared_steps(steps)) is not None:
            counts = self._execute_inline(prepared, steps)
            if counts is not None:
                return counts
            inline = False  # the lock is taken: the writer thread waits for it, not a second try here
        return await self._transact_local(work, inline=inline)

    async def _transact_local(self, work: Callable[[sa.Connection], T], *, inline: bool) -> T:
        """`work` on a SQLite file: on the loop's connection if `inline` and the lock is free at once,
        else in the writer thread."""
        if inline:
            done, result = self._transact_inline(work)
            if done:
                return cast(T, result)
        return await asyncio.get_running_loop().run_in_executor(self._writer, self._transact_sqlite, work)

    def _inline_turn(self, awaited: bool) -> bool:
        """Whether a write now goes to the loop's connection: a lone one (none in the last
        INLINE_GAP_S), or one a client waits for."""
        now = time.monotonic()
        lone, self._last_write = now - self._last_write >= INLINE_GAP_S, now
        return lone or awaited

    def _loop_conn(self) -> sa.Connection:
        assert self._inline_engine is not None
        conn = self._inline_conn
        if conn is None or conn.closed or conn.invalidated:
            conn = self._inline_conn = self._inline_engine.connect()
            conn.execution_options(**{SQLITE_BEGIN_OPTION: "BEGIN IMMEDIATE"})
        return conn

    def _prepared_steps(self, steps: Sequence[Step]) -> list[Prepared] | None:
        """Each step's statement compiled for the driver, or None if one is not to run that way."""
        dialect = self._loop_conn().dialect
        prepared = [self._prepare(stmt, params, dialect) for stmt, params in steps]
        return None if None in prepared else cast(list[Prepared], prepared)

    def _execute_inline(self, prepared: Sequence[Prepared], steps: Sequence[Step]) -> list[int] | None:
        """The rowcounts when the write lock was free and the steps committed on the loop's
        connection, through the driver; None when the lock was taken, before anything ran."""
        driver = self._loop_conn().connection.driver_connection
        assert driver is not None  # the loop's connection is open: _prepared_steps opened it
        try:
            driver.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            if is_sqlite_busy(exc):
                return None
            self._drop_inline_conn()
            raise DBAPIError.instance("BEGIN IMMEDIATE", (), exc, sqlite3.Error) from exc
        counts: list[int] = []
        sql, args = "COMMIT", []
        try:
            for statement, (_, params) in zip(prepared, steps, strict=True):
                sql, args = statement.sql, statement.args(params)
                counts.append(driver.execute(sql, args).rowcount)
            driver.execute("COMMIT")
        except BaseException as exc:
            if driver.in_transaction:
                driver.execute("ROLLBACK")
            if isinstance(exc, sqlite3.Error):
                raise DBAPIError.instance(sql, args, exc, sqlite3.Error) from exc
            raise
        self._committed_inline()
        return counts

    def _prepare(self, stmt: Statement, params: Mapping[str, Any], dialect: Dialect) -> Prepared | None:
        """`stmt` compiled for these parameters' names, once; None if SQLAlchemy computes some of its
        parameters at execution (such a statement runs the usual way)."""
        key = (id(stmt), tuple(params))
        if key not in self._prepared:
            if len(self._prepared) >= PREPARED_KEPT:  # statements are meant to be built once; if not,
                self._prepared.clear()  # the cache must not grow with them
            try:
                self._prepared[key] = (stmt, Prepared(stmt, dialect, list(params)))
            except ValueError:
                self._prepared[key] = (stmt, None)
        return self._prepared[key][1]

    def _committed_inline(self) -> None:
        assert self._writer is not None
        self._inline_commits += 1
        if self._inline_commits % CHECKPOINT_EVERY == 0:
            self._writer.submit(self._checkpoint)

    def _transact_inline(self, work: Callable[[sa.Connection], T]) -> tuple[bool, T | None]:
        """(True, result) when the write lock was free and `work` committed here; (False, None) when
        the lock was taken, before anything ran. What `work` raises propagates."""
        assert self._writer is not None
        conn = self._loop_conn()
        try:
            transaction = conn.begin()
        except OperationalError as exc:
            if is_sqlite_busy(exc):
                return False, None
            self._drop_inline_conn()
            raise
        try:
            with transaction:
                result = work(conn)
        except BaseException:
            if conn.invalidated:
                self._drop_inline_conn()
            raise
        self._committed_inline()
        return True, result

    def _drop_inline_conn(self) -> None:
        """Close the loop's connection after a failure it may not survive; the next write opens another."""
        if self._inline_conn is not None:
            self._inline_conn.close()
            self._inline_conn = None

    def _checkpoint(self) -> None:
        """Copy what the WAL holds into the database file, as far as readers allow (PASSIVE: waits
        for nobody). In the writer thread: it syncs the file. A failure waits for the next one."""
        assert self._writer_engine is not None
        try:
            with self._writer_engine.connect() as conn:
                conn.exec_driver_sql("PRAGMA wal_checkpoint(PASSIVE)")
        except SQLAlchemyError:
            log.debug("WAL checkpoint failed", exc_info=True)

    def _transact_sqlite(self, work: Callable[[sa.Connection], T]) -> T:
        assert self._writer_engine is not None
        with self._writer_engine.connect() as conn:
            conn = conn.execution_options(**{SQLITE_BEGIN_OPTION: "BEGIN IMMEDIATE"})
            with conn.begin():
                return work(conn)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def engine(self) -> AsyncEngine:
        return self._engine

    @property
    def url(self) -> URL:
        """The normalized URL. It holds the password: show `mask_url(db.url)` instead."""
        return self._url

    @property
    def is_sqlite(self) -> bool:
        return self._engine.dialect.name == "sqlite"

    def read(self) -> AsyncConnection:
        """`async with db.read() as conn:` a connection for reads (its implicit transaction is rolled
        back on exit)."""
        return self._engine.connect()

    @asynccontextmanager
    async def write(self) -> AsyncIterator[AsyncConnection]:
        """`async with db.write() as conn:` one transaction, committed on exit, rolled back on error.

        On SQLite it begins with BEGIN IMMEDIATE: taking the write lock up front lets busy_timeout
        queue concurrent writers, where a deferred BEGIN that upgrades to a write later fails at once
        with SQLITE_BUSY (or finds its snapshot stale under WAL).
        """
        async with self._engine.connect() as conn:
            if self.is_sqlite:
                await conn.execution_options(**{SQLITE_BEGIN_OPTION: "BEGIN IMMEDIATE"})
            async with conn.begin():
                yield conn

    def insert(self, table: sa.Table) -> sqlite.Insert | postgresql.Insert:
        """An INSERT in this dialect: both spell upserts `on_conflict_do_nothing/do_update`, which
        the generic insert lacks."""
        return sqlite.insert(table) if self.is_sqlite else postgresql.insert(table)

    def insert_ignoring(self, table: sa.Table, *key: str) -> sqlite.Insert | postgresql.Insert:
        """INSERT … ON CONFLICT (`key`) DO NOTHING, built once per table and key: the frequent writes
        reuse it, and SQLAlchemy reuses its cache key (docs/performance.md)."""
        stmt = self._inserts_ignoring.get((table.name, key))
        if stmt is None:
            stmt = self.insert(table).on_conflict_do_nothing(index_elements=list(key))
            self._inserts_ignoring[(table.name, key)] = stmt
        return stmt


def _connect_error(url: URL, exc: BaseException) -> StoreConnectError:
    masked = mask_url(url)
    detail = str(exc.orig) if isinstance(exc, DBAPIError) else str(exc)
    if url.password:
        detail = detail.replace(url.password, "***")
    return StoreConnectError(f"could not open the run store at {masked}: {detail}", url=masked)
