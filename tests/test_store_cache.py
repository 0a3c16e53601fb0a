"""The response cache's entries (store/cache.py, migration 0007) on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest

from panelfuse.store import CacheEntry, CacheStore, RunStore
from test_store import target  # noqa: F401  (the SQLite/PostgreSQL fixture)

T0 = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
async def store(target):  # noqa: F811
    url, schema = target
    s = await RunStore.open(url, schema=schema)
    yield s
    await s.close()


def entry(key: str = "k1", *, run_id: str = "run_1", ttl: float = 60, created: datetime = T0, **kw) -> CacheEntry:
    return CacheEntry(
        key=key,
        key_id=kw.get("key_id", "key_1"),
        run_id=run_id,
        finish_reason=kw.get("finish_reason", "stop"),
        result=kw.get("result", {"content": f"answer of {run_id}", "panel": [{"member": "A", "content": "é \u2603"}]}),
        created_at=created,
        expires_at=created + timedelta(seconds=ttl),
    )


async def test_an_entry_round_trips_until_it_expires(store):
    cache = CacheStore(store.database)
    await cache.put(entry(), now=T0)
    got = await cache.get("k1", now=T0 + timedelta(seconds=59))
    assert got == entry()
    assert got.created_at.tzinfo is not None
    assert await cache.get("k1", now=T0 + timedelta(seconds=60)) is None  # expired: never served
    assert await cache.get("other", now=T0) is None


async def test_a_write_replaces_the_entry_of_its_key(store):
    cache = CacheStore(store.database)
    await cache.put(entry(run_id="run_1"), now=T0)
    await cache.put(entry(run_id="run_2", finish_reason="length", created=T0 + timedelta(seconds=5)), now=T0)
    got = await cache.get("k1", now=T0 + timedelta(seconds=1))
    assert got is not None and (got.run_id, got.finish_reason) == ("run_2", "length")


async def test_writes_racing_on_one_key_all_succeed(store):
    """Two processes finishing the same question at once: both writes land (insert or replace), one
    entry stays. (Separate connections from one pool stand in for the processes: the statements race
    in the database the same way.)"""
    cache = CacheStore(store.database)
    await asyncio.gather(*(cache.put(entry(run_id=f"run_{i}"), now=T0) for i in range(8)))
    got = await cache.get("k1", now=T0)
    assert got is not None and got.run_id in {f"run_{i}" for i in range(8)}


async def test_a_write_purges_what_has_expired(store):
    cache = CacheStore(store.database)
    await cache.put(entry("old", ttl=10), now=T0)
    await cache.put(entry("young", ttl=3600), now=T0)
    later = T0 + timedelta(seconds=20)
    await cache.put(entry("new", created=later), now=later)
    assert await cache.purge(expired_at=T0) == 0  # nothing left that had expired at T0
    # "old" went with the last write; the others stay.
    assert await cache.purge(expired_at=later + timedelta(days=1)) == 2


async def test_retention_deletes_entries_created_before_the_cutoff(store):
    cache = CacheStore(store.database)
    await cache.put(entry("a", created=T0, ttl=86_400), now=T0)
    await cache.put(entry("b", created=T0 + timedelta(hours=2), ttl=86_400), now=T0)
    assert await cache.purge(expired_at=T0, created_before=T0 + timedelta(hours=1)) == 1
    assert await cache.get("a", now=T0) is None
    assert await cache.get("b", now=T0 + timedelta(hours=3)) is not None


async def test_a_deleted_run_is_no_longer_served(store):
    cache = CacheStore(store.database)
    await cache.put(entry("a", run_id="run_1"), now=T0)
    await cache.put(entry("b", run_id="run_2"), now=T0)
    assert await cache.forget_run("run_1") == 1
    assert await cache.get("a", now=T0) is None
    assert await cache.get("b", now=T0) is not None


async def test_migration_matches_the_table_definition(store):
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    from panelfuse.store.schema import VERSION_TABLE, metadata

    def diff(conn):
        ctx = MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE, "compare_type": False})
        return compare_metadata(ctx, metadata)

    async with store.engine.connect() as conn:
        changes = await conn.run_sync(diff)
    assert [c for c in changes if "response_cache" in repr(c)] == []
