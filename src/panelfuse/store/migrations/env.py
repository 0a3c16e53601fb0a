"""Alembic environment of the run store.

At runtime `panelfuse.store.migrate` hands a live (sync-facing) connection in through
`config.attributes["connection"]`, already inside the transaction that holds the migration lock.
Developers may also point the `alembic` CLI here with `sqlalchemy.url` set, e.g. to autogenerate
a revision: `alembic -x ... revision --autogenerate` against a scratch database.
"""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy.engine import Connection

from panelfuse.store.schema import VERSION_TABLE, metadata

config = context.config


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        version_table=VERSION_TABLE,
        render_as_batch=connection.dialect.name == "sqlite",  # SQLite ALTERs go through table copies
        compare_type=True,
    )
    # Inside the caller's transaction this is a no-op context: the caller commits (and unlocks).
    with context.begin_transaction():
        context.run_migrations()


async def _run_from_url(url: str) -> None:
    from sqlalchemy.ext.asyncio import create_async_engine

    from panelfuse.store.url import normalize_url

    engine = create_async_engine(normalize_url(url))
    try:
        async with engine.begin() as conn:
            await conn.run_sync(_run)
    finally:
        await engine.dispose()


if context.is_offline_mode():
    context.configure(
        url=config.get_main_option("sqlalchemy.url"),
        target_metadata=metadata,
        version_table=VERSION_TABLE,
        literal_binds=True,
    )
    with context.begin_transaction():
        context.run_migrations()
elif (conn := config.attributes.get("connection")) is not None:
    _run(conn)
else:
    asyncio.run(_run_from_url(config.get_main_option("sqlalchemy.url") or ""))
