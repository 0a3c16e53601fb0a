"""Persistence of fusion runs and their events, keys, generations, experiments and the response cache
(SQLite by default, PostgreSQL by URL).

The server writes here; the store knows nothing of HTTP nor of the pipeline. `Database` owns the engine
and the write rule; `RunStore`, `KeyStore` (and the evals' `EvalStore`) take one. Schema changes are
Alembic migrations in `panelfuse/store/migrations/versions`, applied by `Database.open` (which
`RunStore.open` calls).
"""

from panelfuse.store.cache import CacheEntry, CacheStore
from panelfuse.store.database import Database
from panelfuse.store.errors import (
    DuplicateRunError,
    InvalidCursorError,
    RunNotFoundError,
    StoreConnectError,
    StoreError,
    StoreMigrationError,
    StoreURLError,
)
from panelfuse.store.experiments import ExperimentRequest, ExperimentRow, ExperimentStore
from panelfuse.store.generations import GenerationRecord, GenerationStore
from panelfuse.store.keys import ApiKey, KeyStore, NewKey, looks_like_panelfuse_key
from panelfuse.store.records import EventRecord, RunPage, RunRecord
from panelfuse.store.runs import RunStore
from panelfuse.store.url import mask_url, normalize_url

__all__ = [
    "ApiKey",
    "CacheEntry",
    "CacheStore",
    "Database",
    "DuplicateRunError",
    "EventRecord",
    "ExperimentRequest",
    "ExperimentRow",
    "ExperimentStore",
    "GenerationRecord",
    "GenerationStore",
    "InvalidCursorError",
    "KeyStore",
    "NewKey",
    "RunNotFoundError",
    "RunPage",
    "RunRecord",
    "RunStore",
    "StoreConnectError",
    "StoreError",
    "StoreMigrationError",
    "StoreURLError",
    "looks_like_panelfuse_key",
    "mask_url",
    "normalize_url",
]
