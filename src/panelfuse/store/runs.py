"""RunStore: every fusion run and its events, in SQLite or PostgreSQL.

Several gateway processes may share one database, so every method is a self-contained
transaction and nothing is cached in the process.
"""

from __future__ import annotations

import dataclasses
import math
import os
import socket
from collections.abc import Collection, Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Self

import platformdirs
import sqlalchemy as sa
from sqlalchemy.engine import URL
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from panelfuse.store.database import Database, Step
from panelfuse.store.errors import DuplicateRunError, InvalidCursorError, RunNotFoundError
from panelfuse.store.events import SQLITE_INSERT_EVENTS, StoredEvent, event_row, sqlite_event_batch
from panelfuse.store.keys import KeyStore
from panelfuse.store.records import EventRecord, RunPage, RunRecord, decode_cursor, encode_cursor
from panelfuse.store.schema import FINAL_STATUSES, RUN_STATUSES, run_events, runs
from panelfuse.store.url import mask_url

# Columns update_run may touch (id and the timestamps are the store's own).
UPDATABLE = frozenset(c.name for c in runs.columns) - {"id", "created_at", "updated_at"}
MAX_PAGE = 1000
_EVENT_CHUNK = 500  # rows per INSERT on PostgreSQL (SQLite takes a batch in one statement)
# The statements a run writes, built once with their values bound at execution: SQLAlchemy memoizes a
# statement's cache key, so a reused one is neither rebuilt nor keyed again. Built per call, the
# outcome's UPDATE cost about 400 µs of CPU, reused about 75 µs (docs/performance.md).
_INSERT_RUN = runs.insert()
_FINISH_RUN = runs.update().where(runs.c.id == sa.bindparam("finished_id"))
_TOUCH_RUNS = runs.update().where(runs.c.id.in_(sa.bindparam("touched_ids", expanding=True)))


def _now() -> datetime:
    return datetime.now(UTC)


def _text(value: str | None) -> str | None:
    # PostgreSQL text cannot hold NUL; a model that emits one must not lose the whole run.
    return value.replace("\x00", "\ufffd") if value else value


def _record(row: sa.Row[Any]) -> RunRecord:
    return RunRecord(**row._mapping)


class RunStore:
    """Async run store. Open with `await RunStore.open(url)`; close with `await store.close()`."""

    def __init__(self, database: Database) -> None:
        self._db = database

    # ---- lifecycle -------------------------------------------------------------------------

    @staticmethod
    def default_url() -> str:
        """SQLite file in the user data dir, e.g. ~/.local/share/panelfuse/runs.db."""
        return f"sqlite+aiosqlite:///{Path(platformdirs.user_data_dir('panelfuse')) / 'runs.db'}"

    @classmethod
    async def open(
        cls,
        url: str | URL | None = None,
        *,
        schema: str | None = None,
        connect_args: dict[str, Any] | None = None,
        echo: bool = False,
    ) -> Self:
        """Connect and migrate to the latest schema (safe when several processes open at once).

        `url`: sqlite[+aiosqlite]:///path.db or postgresql[+asyncpg]://...; None → default_url().
        `schema` (PostgreSQL only): test / multi-tenant hook — tables live in that schema (created if
        missing) via the connection's search_path. `connect_args` go to the driver's connect().
        Raises StoreURLError (bad URL), StoreConnectError (unreachable, auth, missing driver),
        StoreMigrationError; messages never contain the password.
        """
        database = await Database.open(
            url if url is not None else cls.default_url(), schema=schema, connect_args=connect_args, echo=echo
        )
        return cls(database)

    async def close(self) -> None:
        await self._db.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def url(self) -> str:
        """The database URL with the password masked."""
        return mask_url(self._db.url)

    @property
    def keys(self) -> KeyStore:
        """API keys and budgets, in the same database."""
        return KeyStore(self._db)

    @property
    def database(self) -> Database:
        """The database this store (and `keys`) writes to; an EvalStore can share it."""
        return self._db

    @property
    def engine(self) -> AsyncEngine:
        """The underlying engine (for tests and admin tooling; the API above is the contract)."""
        return self._db.engine

    # ---- runs ------------------------------------------------------------------------------

    async def create_run(
        self,
        run_id: str,
        *,
        spec: dict[str, Any],
        request: dict[str, Any],
        request_model: str,
        preset: str | None,
        mode: str,
        prompt_version: str,
        key_id: str | None = None,
        background: bool = False,
        parent_run_id: str | None = None,
    ) -> RunRecord:
        """Insert a run in status `running`. DuplicateRunError if the id is taken;
        RunNotFoundError if `parent_run_id` names no run."""
        now = _now()
        record = RunRecord(
            id=run_id,
            status="running",
            created_at=now,
            updated_at=now,
            preset=preset,
            mode=mode,
            request_model=request_model,
            spec=spec,
            request=request,
            result=None,
            content="",
            usage=None,
            cost=None,
            degraded=False,
            error=None,
            latency_ms=0,
            prompt_version=prompt_version,
            key_id=key_id,
            background=background,
            parent_run_id=parent_run_id,
            feedback_score=None,
            feedback_comment=None,
            owner_pid=os.getpid(),
            host=socket.gethostname(),
            purged_at=None,
        )
        values = {f.name: getattr(record, f.name) for f in dataclasses.fields(record)}
        try:
            await self._db.execute(_INSERT_RUN, values, awaited=True)
        except IntegrityError:
            if await self._exists(run_id):
                raise DuplicateRunError(run_id) from None
            raise RunNotFoundError(parent_run_id or run_id) from None
        return record

    async def update_run(self, run_id: str, **fields: Any) -> None:
        """Partial update of run columns; always bumps updated_at (so `update_run(id)` is a heartbeat)."""
        unknown = set(fields) - UPDATABLE
        if unknown:
            raise ValueError(f"update_run: unknown or read-only fields {sorted(unknown)}")
        if "status" in fields and fields["status"] not in RUN_STATUSES:
            raise ValueError(f"invalid run status {fields['status']!r}; expected one of {RUN_STATUSES}")
        for key in ("content", "error", "feedback_comment"):
            if key in fields:
                fields[key] = _text(fields[key])
        if fields.get("content", "") is None:
            fields["content"] = ""
        stmt = runs.update().where(runs.c.id == run_id).values(updated_at=_now(), **fields)
        if await self._db.transact(lambda conn: conn.execute(stmt).rowcount) == 0:
            raise RunNotFoundError(run_id)

    async def touch_runs(self, run_ids: Collection[str]) -> None:
        """One heartbeat for many live runs: their updated_at moves to now, in one statement."""
        if not run_ids:
            return
        params = {"touched_ids": list(run_ids), "updated_at": _now()}
        await self._db.transact(lambda conn: conn.execute(_TOUCH_RUNS, params))

    async def finish_run(
        self,
        run_id: str,
        *,
        status: str,
        result: dict[str, Any] | None,
        content: str,
        usage: dict[str, Any] | None,
        cost: float | None,
        degraded: bool,
        error: str | None,
        latency_ms: int,
        events: Iterable[StoredEvent | Mapping[str, Any]] = (),
    ) -> None:
        """Record the outcome, with the run's `events` not stored yet, in one transaction. `status` is
        one of completed|failed|cancelled|interrupted."""
        if status not in FINAL_STATUSES:
            raise ValueError(f"finish_run: status must be one of {FINAL_STATUSES}, not {status!r}")
        rows = self._event_rows(run_id, events)
        fields = {
            "status": status,
            "result": result,
            "content": _text(content) or "",
            "usage": usage,
            "cost": cost,
            "degraded": degraded,
            "error": _text(error),
            "latency_ms": latency_ms,
            "updated_at": _now(),
        }
        params = {"finished_id": run_id, **fields}

        def work(conn: sa.Connection) -> int:
            self._insert_events(conn, rows)
            return conn.execute(_FINISH_RUN, params).rowcount

        try:
            if self._db.is_sqlite:  # two statements, through the driver on the loop (Database.execute_all)
                steps: list[Step] = [(SQLITE_INSERT_EVENTS, sqlite_event_batch(rows))] if rows else []
                steps.append((_FINISH_RUN, params))
                updated = (await self._db.execute_all(steps, awaited=True))[-1]
            else:
                updated = await self._db.transact(work, awaited=True)
        except IntegrityError:
            raise RunNotFoundError(run_id) from None
        if updated == 0:
            raise RunNotFoundError(run_id)

    async def get_run(self, run_id: str, *, key_id: str | None = None) -> RunRecord | None:
        """The run, or None. With `key_id`, only a run made by that key (admin passes None)."""
        query = sa.select(runs).where(runs.c.id == run_id)
        if key_id is not None:
            query = query.where(runs.c.key_id == key_id)
        async with self._db.read() as conn:
            row = (await conn.execute(query)).first()
        return _record(row) if row is not None else None

    async def list_runs(
        self,
        *,
        limit: int = 20,
        before: str | None = None,
        status: str | None = None,
        preset: str | None = None,
        mode: str | None = None,
        key_id: str | None = None,
        degraded: bool | None = None,
        since: datetime | None = None,
        parent_run_id: str | None = None,
    ) -> RunPage:
        """Newest first, keyset-paged on (created_at, id) so equal timestamps neither repeat nor skip.
        `before` is a page's next_cursor (or a bare run id: the page starts after that run)."""
        if not 1 <= limit <= MAX_PAGE:
            raise ValueError(f"limit must be between 1 and {MAX_PAGE}, not {limit}")
        query = sa.select(runs).order_by(runs.c.created_at.desc(), runs.c.id.desc()).limit(limit + 1)
        for column, value in (
            ("status", status),
            ("preset", preset),
            ("mode", mode),
            ("key_id", key_id),
            ("degraded", degraded),
            ("parent_run_id", parent_run_id),
        ):
            if value is not None:
                query = query.where(runs.c[column] == value)
        if since is not None:
            query = query.where(runs.c.created_at >= since)
        async with self._db.read() as conn:
            if before is not None:
                at, after_id = await self._resolve_cursor(conn, before, key_id)
                query = query.where(
                    sa.or_(runs.c.created_at < at, sa.and_(runs.c.created_at == at, runs.c.id < after_id))
                )
            rows = (await conn.execute(query)).all()
        items = [_record(r) for r in rows[:limit]]
        more = len(rows) > limit
        return RunPage(items=items, next_cursor=encode_cursor(items[-1].created_at, items[-1].id) if more else None)

    async def _resolve_cursor(self, conn: AsyncConnection, cursor: str, key_id: str | None) -> tuple[datetime, str]:
        decoded = decode_cursor(cursor)
        if decoded is not None:
            return decoded
        query = sa.select(runs.c.created_at).where(runs.c.id == cursor)
        if key_id is not None:
            query = query.where(runs.c.key_id == key_id)
        at = (await conn.execute(query)).scalar_one_or_none()
        if at is None:
            raise InvalidCursorError(f"invalid cursor {cursor!r}: neither a list_runs cursor nor a known run id")
        return at, cursor

    async def delete_run(self, run_id: str, *, key_id: str | None = None) -> bool:
        """Delete the run and (by ON DELETE CASCADE) its events. False if no such run (for this key)."""
        stmt = runs.delete().where(runs.c.id == run_id)
        if key_id is not None:
            stmt = stmt.where(runs.c.key_id == key_id)
        async with self._db.write() as conn:
            res = await conn.execute(stmt)
        return res.rowcount > 0

    async def set_feedback(self, run_id: str, score: float, comment: str | None, *, key_id: str | None = None) -> bool:
        """Attach (or replace) the caller's rating. False if no such run (for this key)."""
        if not math.isfinite(score):
            raise ValueError(f"feedback score must be a finite number, not {score!r}")
        stmt = runs.update().where(runs.c.id == run_id)
        if key_id is not None:
            stmt = stmt.where(runs.c.key_id == key_id)
        stmt = stmt.values(feedback_score=float(score), feedback_comment=_text(comment), updated_at=_now())
        async with self._db.write() as conn:
            res = await conn.execute(stmt)
        return res.rowcount > 0

    async def purge_content(self, older_than: datetime) -> int:
        """Retention: for finished runs created before `older_than`, blank request, result, content and
        event data; the row, its usage/cost/status and the event skeleton stay. Returns runs purged."""
        doomed = (runs.c.created_at < older_than) & (runs.c.status != "running") & runs.c.purged_at.is_(None)
        async with self._db.write() as conn:
            await conn.execute(
                run_events.update().where(run_events.c.run_id.in_(sa.select(runs.c.id).where(doomed))).values(data={})
            )
            res = await conn.execute(
                runs.update().where(doomed).values(request={}, result=None, content="", purged_at=_now())
            )
        return res.rowcount

    async def _exists(self, run_id: str) -> bool:
        async with self._db.read() as conn:
            return (await conn.execute(sa.select(runs.c.id).where(runs.c.id == run_id))).first() is not None

    # ---- events ----------------------------------------------------------------------------

    async def append_events(self, run_id: str, events: Iterable[StoredEvent | Mapping[str, Any]]) -> None:
        """Batch insert. Events are pipeline `Event`s, `EventRecord`s (anything with the StoredEvent fields)
        or mappings with seq/type[/stage/data/ts]. A (run_id, seq) already stored is skipped, so
        replaying a batch is harmless."""
        await self.append_events_of({run_id: events})

    async def append_events_of(self, batches: Mapping[str, Iterable[StoredEvent | Mapping[str, Any]]]) -> None:
        """The events of several runs in one transaction (a gateway flushes every live run's at once:
        one write per interval, not one per run). RunNotFoundError names a run that does not exist."""
        rows = [row for run_id, events in batches.items() for row in self._event_rows(run_id, events)]
        if not rows:
            return
        try:
            await self._db.transact(lambda conn: self._insert_events(conn, rows))
        except IntegrityError:
            # the only constraint left is the run FK: find the missing run to name it
            for run_id in batches:
                if not await self._exists(run_id):
                    raise RunNotFoundError(run_id) from None
            raise

    @staticmethod
    def _event_rows(run_id: str, events: Iterable[StoredEvent | Mapping[str, Any]]) -> list[dict[str, Any]]:
        rows: dict[int, dict[str, Any]] = {}
        for ev in events:
            row = event_row(run_id, ev)
            rows.setdefault(row["seq"], row)  # first wins, as in the database
        return list(rows.values())

    def _insert_events(self, conn: sa.Connection, rows: list[dict[str, Any]]) -> None:
        if not rows:
            return
        if self._db.is_sqlite:
            conn.execute(SQLITE_INSERT_EVENTS, sqlite_event_batch(rows))
            return
        stmt = self._db.insert_ignoring(run_events, "run_id", "seq")
        for i in range(0, len(rows), _EVENT_CHUNK):
            conn.execute(stmt, rows[i : i + _EVENT_CHUNK])

    async def events_after(
        self, run_id: str, after_seq: int = 0, limit: int = 1000, *, key_id: str | None = None
    ) -> list[EventRecord]:
        """Events with seq > after_seq, in seq order. With `key_id`, empty unless the run is that key's."""
        query = (
            sa.select(run_events)
            .where(run_events.c.run_id == run_id, run_events.c.seq > after_seq)
            .order_by(run_events.c.seq)
            .limit(limit)
        )
        if key_id is not None:
            query = query.where(sa.exists().where(runs.c.id == run_id, runs.c.key_id == key_id))
        async with self._db.read() as conn:
            rows = (await conn.execute(query)).all()
        return [EventRecord(**r._mapping) for r in rows]
