"""CacheStore: the response cache's entries (docs/cache.md), one row per cache key.

A row holds what a cache hit serves again (the answer, its panel and analysis, as the paying run's
result) and when it stops being served. The key is the service's hash of the caller's scope, the spec
and the normalised request: the store only compares it. Several processes share the table: a write
replaces the row of its key in one statement (the last writer wins, both answers being equally good),
and a read never returns a row past its `expires_at`, whoever has or has not purged it yet.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from panelfuse.store.database import Database
from panelfuse.store.schema import UTCDateTime, metadata

response_cache = sa.Table(
    "response_cache",
    metadata,
    sa.Column("key", sa.String, primary_key=True),  # sha256 hex of scope, spec and request
    sa.Column("key_id", sa.String, nullable=True),  # the API key that paid for it (None: no key)
    sa.Column("run_id", sa.String, nullable=False),  # the run that made the answer (no FK: runs may be deleted)
    sa.Column("finish_reason", sa.String, nullable=False),
    sa.Column("result", sa.JSON, nullable=False),  # that run's result (FusionResult.to_dict())
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("expires_at", UTCDateTime, nullable=False),
    sa.Index("ix_response_cache_expires_at", "expires_at"),
    sa.Index("ix_response_cache_run_id", "run_id"),
)


@dataclass(frozen=True)
class CacheEntry:
    """One cached answer."""

    key: str
    key_id: str | None
    run_id: str
    finish_reason: str
    result: dict[str, Any]
    created_at: datetime
    expires_at: datetime


def _now() -> datetime:
    return datetime.now(UTC)


class CacheStore:
    """Cache entries in `database` (the run store's: `CacheStore(store.database)`)."""

    def __init__(self, database: Database) -> None:
        self._db = database

    async def get(self, key: str, *, now: datetime | None = None) -> CacheEntry | None:
        """The entry of `key` if it has not expired at `now`; else None."""
        query = sa.select(response_cache).where(
            response_cache.c.key == key, response_cache.c.expires_at > (now or _now())
        )
        async with self._db.read() as conn:
            row = (await conn.execute(query)).first()
        return CacheEntry(**row._mapping) if row is not None else None

    async def put(self, entry: CacheEntry, *, now: datetime | None = None) -> None:
        """Store `entry`, replacing its key's row (insert or replace: two processes writing one key at
        once both succeed, the later one stays). Expired rows are deleted in the same transaction, so
        the table holds what can still be served, plus what expired since the last write."""
        values = {
            "key": entry.key,
            "key_id": entry.key_id,
            "run_id": entry.run_id,
            "finish_reason": entry.finish_reason,
            "result": entry.result,
            "created_at": entry.created_at,
            "expires_at": entry.expires_at,
        }
        upsert = self._db.insert(response_cache).values(values)
        upsert = upsert.on_conflict_do_update(
            index_elements=["key"], set_={k: v for k, v in values.items() if k != "key"}
        )
        expired = response_cache.delete().where(response_cache.c.expires_at <= (now or _now()))

        def work(conn: sa.Connection) -> None:
            conn.execute(expired)
            conn.execute(upsert)

        await self._db.transact(work)

    async def purge(self, *, expired_at: datetime | None = None, created_before: datetime | None = None) -> int:
        """Delete the entries expired at `expired_at` (default: now) and, for retention, those created
        before `created_before` (their content goes with the runs' content). Returns how many."""
        doomed = response_cache.c.expires_at <= (expired_at or _now())
        if created_before is not None:
            doomed = doomed | (response_cache.c.created_at < created_before)
        async with self._db.write() as conn:
            res = await conn.execute(response_cache.delete().where(doomed))
        return res.rowcount or 0

    async def forget_run(self, run_id: str) -> int:
        """Delete the entries a run's answer fills (the run was deleted: its content must not outlive it)."""
        async with self._db.write() as conn:
            res = await conn.execute(response_cache.delete().where(response_cache.c.run_id == run_id))
        return res.rowcount or 0
