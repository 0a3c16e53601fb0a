"""Alembic migrations of the run store; applied by `RunStore.open` (see panelfuse.store.migrate)."""
