"""Typed store errors. Messages never carry a database password."""

from __future__ import annotations


class StoreError(Exception):
    """Base of every error the run store raises on purpose."""


class StoreURLError(StoreError, ValueError):
    """The database URL is malformed or names a backend the store does not support."""

    def __init__(self, message: str, *, scheme: str | None = None, url: str | None = None) -> None:
        super().__init__(message)
        self.scheme = scheme
        self.url = url  # already masked


class StoreConnectError(StoreError):
    """The database could not be opened or migrated (unreachable, auth, missing driver)."""

    def __init__(self, message: str, *, url: str | None = None) -> None:
        super().__init__(message)
        self.url = url  # already masked


class RunNotFoundError(StoreError, LookupError):
    """A write named a run that does not exist (or is not visible to the given key)."""

    def __init__(self, run_id: str) -> None:
        super().__init__(f"run {run_id!r} not found")
        self.run_id = run_id


class DuplicateRunError(StoreError):
    """create_run with an id that is already taken."""

    def __init__(self, run_id: str) -> None:
        super().__init__(f"run {run_id!r} already exists")
        self.run_id = run_id


class InvalidCursorError(StoreError, ValueError):
    """A paging cursor that was not produced by list_runs (or whose run is gone)."""


class StoreMigrationError(StoreError):
    """The schema could not be brought to this version (e.g. the database is from a newer panelfuse)."""
