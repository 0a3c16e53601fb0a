"""Alembic migrations of the run store; applied by `Database.open` (see panelfuse.store.migrate)."""
