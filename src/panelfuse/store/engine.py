"""Engine construction: async drivers, SQLite pragmas and transaction control, tolerant JSON."""

from __future__ import annotations

import dataclasses
import json
import math
import random
import re
import time
from datetime import date, datetime
from typing import Any

import orjson
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import StaticPool

from panelfuse.store.errors import StoreConnectError, StoreURLError
from panelfuse.store.url import mask_url

SQLITE_BUSY_TIMEOUT_MS = 15_000
# Execution option read by the SQLite "begin" hook: writers ask for BEGIN IMMEDIATE.
SQLITE_BEGIN_OPTION = "panelfuse_sqlite_begin"
_SCHEMA_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")


def _json_default(obj: Any) -> Any:
    # A run must not be lost to one odd value in an event: store something readable instead.
    if hasattr(obj, "to_dict"):
        return obj.to_dict()
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    if isinstance(obj, datetime | date):
        return obj.isoformat()
    if isinstance(obj, set | frozenset | tuple):
        return list(obj)
    return str(obj)


def _finite(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite(v) for v in obj]
    return obj


def json_dumps(obj: Any) -> str:
    """JSON for the database. NaN/Infinity become null: PostgreSQL's json type rejects them (orjson
    writes them as null itself). The standard library takes what orjson refuses (integers past 64 bits)."""
    try:
        return orjson.dumps(obj, default=_json_default, option=orjson.OPT_NON_STR_KEYS).decode()
    except (TypeError, orjson.JSONEncodeError):
        pass
    try:
        return json.dumps(obj, default=_json_default, allow_nan=False)
    except ValueError:
        return json.dumps(_finite(json.loads(json.dumps(obj, default=_json_default))), allow_nan=False)


def build_engine(
    url: URL, *, schema: str | None = None, connect_args: dict[str, Any] | None = None, echo: bool = False
) -> AsyncEngine:
    """An AsyncEngine for a normalized URL (see url.normalize_url)."""
    args = dict(connect_args or {})
    backend = url.get_backend_name()
    kwargs: dict[str, Any] = {}
    if schema is not None:
        if backend != "postgresql":
            raise StoreURLError(
                f"schema= needs PostgreSQL, not {url.drivername!r}", scheme=url.drivername, url=mask_url(url)
            )
        if not _SCHEMA_NAME.match(schema):
            raise ValueError(f"invalid schema name {schema!r}: letters, digits and _ only")
        if url.drivername == "postgresql+asyncpg":
            args["server_settings"] = {**(args.get("server_settings") or {}), "search_path": schema}
        else:  # psycopg (v3): libpq options
            args["options"] = f"{args.get('options', '')} -csearch_path={schema}".strip()
    if url.drivername == "postgresql+asyncpg":
        args.setdefault("timeout", 10)  # connect timeout; asyncpg's default is a minute
    if backend == "postgresql":
        kwargs["pool_pre_ping"] = True  # replicas outlive database restarts and idle-connection reapers
    try:
        engine = create_async_engine(url, connect_args=args, json_serializer=json_dumps, echo=echo, **kwargs)
    except ModuleNotFoundError as exc:
        extra = " (pip install 'panelfuse[postgres]')" if backend == "postgresql" else ""
        raise StoreConnectError(
            f"database driver {exc.name!r} for {url.drivername} is not installed{extra}", url=mask_url(url)
        ) from None
    if backend == "sqlite":
        _install_sqlite_hooks(engine.sync_engine)
    return engine


def build_sqlite_writer(url: URL, *, wait: bool = True) -> Engine:
    """A plain (sync) engine on the same SQLite file, with one connection, for the store's frequent
    writes: a whole write transaction runs in one call, where the async driver hands every statement,
    fetch and commit to its thread and back (several hops, most of a write's CPU).

    `wait=False` is the event loop's own writer: it never waits for the write lock (busy_timeout 0,
    so a taken lock fails at BEGIN at once) and never checkpoints (a checkpoint copies pages into the
    database file and syncs it: the writer thread does that, off the loop)."""
    sync_url = url.set(drivername="sqlite")
    engine = create_engine(
        sync_url,
        json_serializer=json_dumps,
        poolclass=StaticPool,  # one connection, used by one thread only
        connect_args={"check_same_thread": False},
    )
    _install_sqlite_hooks(engine)
    if not wait:

        @event.listens_for(engine, "connect")
        def _never_wait(dbapi_conn: Any, _record: Any) -> None:  # after _install_sqlite_hooks' own
            cur = dbapi_conn.cursor()
            try:
                cur.execute("PRAGMA busy_timeout = 0")
                cur.execute("PRAGMA wal_autocheckpoint = 0")
            finally:
                cur.close()

    return engine


def is_sqlite_busy(exc: BaseException) -> bool:
    """SQLite said the database is locked (another connection holds the write lock)."""
    orig = getattr(exc, "orig", exc)
    return getattr(orig, "sqlite_errorname", "") in {"SQLITE_BUSY", "SQLITE_LOCKED"} or "locked" in str(orig)


def _install_sqlite_hooks(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # SQLAlchemy emits BEGIN itself (below), so the driver must not: this is the documented
        # recipe, and it lets migrations run as real transactional DDL under BEGIN IMMEDIATE.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        try:
            cur.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")  # first: WAL switch may wait
            _enable_wal(cur)  # readers never block the writer (several workers)
            cur.execute("PRAGMA synchronous = NORMAL")  # safe with WAL; fsync at checkpoints only
            cur.execute("PRAGMA foreign_keys = ON")  # event cascade on delete
        finally:
            cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        # Writers use BEGIN IMMEDIATE: taking the write lock up front lets busy_timeout queue them,
        # where a deferred BEGIN that upgrades later fails at once with SQLITE_BUSY.
        conn.exec_driver_sql(conn.get_execution_options().get(SQLITE_BEGIN_OPTION, "BEGIN"))


def _enable_wal(cur: Any, attempts: int = 50) -> None:
    """Switch to WAL unless the file already is (the mode persists in the file). Switching needs an
    exclusive lock and SQLite does not wait on busy_timeout for it, so processes opening a fresh file
    together retry briefly instead of failing with "database is locked"."""
    cur.execute("PRAGMA journal_mode")
    if str(cur.fetchone()[0]).lower() == "wal":
        return
    for attempt in range(attempts):
        try:
            cur.execute("PRAGMA journal_mode = WAL")
            return
        except Exception as exc:  # the driver's OperationalError, whichever adapter wraps it
            if not is_sqlite_busy(exc) or attempt == attempts - 1:
                raise
            time.sleep(0.05 + 0.05 * random.random())
