"""Apply the Alembic migrations in `migrations/` at open, safely when several processes start at once."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncConnection

from panelfuse.store.errors import StoreMigrationError
from panelfuse.store.schema import VERSION_TABLE

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
# pg_advisory_xact_lock key: ASCII "panelfus" as a signed 64-bit int. Database-wide; held only
# for the length of the migration transaction.
ADVISORY_LOCK_KEY = int.from_bytes(b"panelfus", "big", signed=True)


def alembic_config(connection: Connection | None = None) -> Config:
    """An Alembic Config built in code (no alembic.ini); `connection` goes to env.py via attributes."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR).replace("%", "%%"))
    cfg.set_main_option("path_separator", "os")
    cfg.attributes["connection"] = connection
    return cfg


def head_revision() -> str | None:
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def _current_revision(connection: Connection) -> str | None:
    return MigrationContext.configure(connection, opts={"version_table": VERSION_TABLE}).get_current_revision()


def _upgrade(connection: Connection) -> None:
    try:
        command.upgrade(alembic_config(connection), "head")
    except CommandError as exc:
        # Typically "Can't locate revision": the database was migrated by a newer panelfuse.
        try:
            current = repr(_current_revision(connection))
        except Exception:  # the message matters more than this detail
            current = "an unknown revision"
        raise StoreMigrationError(f"cannot migrate the run store from {current} to {head_revision()!r}: {exc}") from exc


async def migrate(conn: AsyncConnection, *, schema: str | None = None) -> None:
    """Upgrade to head inside the caller's write transaction (`Database.write()`), which is also the
    cross-process migration lock: SQLite — BEGIN IMMEDIATE (the write lock; other openers wait on
    busy_timeout); PostgreSQL — a transaction-scoped advisory lock taken here. The second opener
    then finds the schema at head."""
    if conn.dialect.name == "postgresql":
        await conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": ADVISORY_LOCK_KEY})
        if schema is not None:  # validated as an identifier by build_engine
            await conn.execute(text(f'CREATE SCHEMA IF NOT EXISTS "{schema}"'))
    await conn.run_sync(_upgrade)
