"""GenerationStore: one row per completion the gateway answered (OpenRouter's "generation"), so a
client can fetch its stats later by the response id (`GET /v1/generation?id=`).

A fusion run is already a row in `runs`; a generation row for it is optional (`run_id` links them).
Rows are written once: recording an id that is already stored changes nothing.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

import sqlalchemy as sa

from panelfuse.store.database import Database
from panelfuse.store.schema import UTCDateTime, budget_reservations, metadata

generations = sa.Table(
    "generations",
    metadata,
    sa.Column("id", sa.String, primary_key=True),  # the response id: chatcmpl-… or resp_…
    sa.Column("kind", sa.String, nullable=False),  # chat | responses
    sa.Column("model", sa.String, nullable=False),
    sa.Column("key_id", sa.String, nullable=True),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("latency_ms", sa.Integer, nullable=False),
    sa.Column("prompt_tokens", sa.Integer, nullable=False),
    sa.Column("completion_tokens", sa.Integer, nullable=False),
    sa.Column("cost", sa.Double, nullable=True),  # USD; None when no price is known
    sa.Column("finish_reason", sa.String, nullable=True),
    sa.Column("streamed", sa.Boolean, nullable=False),
    sa.Column("run_id", sa.String, nullable=True),  # the fusion run behind it (no FK: runs may be deleted)
    sa.Column("request", sa.JSON(none_as_null=True), nullable=True),
    sa.Column("response", sa.JSON(none_as_null=True), nullable=True),
    sa.Index("ix_generations_key_id_created_at", "key_id", "created_at"),
    sa.Index("ix_generations_run_id", "run_id"),
)


GenerationKind = Literal["chat", "responses"]


@dataclass(frozen=True)
class GenerationRecord:
    """One answered completion's stats (the service's `Generation`)."""

    id: str  # the response id: "chatcmpl-…" (chat) or "resp_…" (Responses API)
    kind: GenerationKind
    model: str
    key_id: str | None
    created_at: datetime
    latency_ms: int
    prompt_tokens: int
    completion_tokens: int
    cost: float | None
    finish_reason: str | None
    streamed: bool
    run_id: str | None = None  # the fusion run behind it, if any
    request: dict[str, Any] | None = None  # kept only where a later call needs it (previous_response_id)
    response: dict[str, Any] | None = None

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


class GenerationStore:
    """Generations in `database` (the run store's: build it with `GenerationStore(store.database)`)."""

    def __init__(self, database: Database) -> None:
        self._db = database

    async def insert(self, record: GenerationRecord) -> bool:
        """Store the generation; False (and nothing changed) when its id is already stored."""
        values = {f.name: getattr(record, f.name) for f in dataclasses.fields(record)}
        stmt = self._db.insert_ignoring(generations, "id")
        # awaited: a proxied stream's [DONE] waits for it
        inserted = await self._db.execute(stmt, values, awaited=True)
        return (inserted or 0) > 0

    async def get(self, gen_id: str, *, key_id: str | None = None) -> GenerationRecord | None:
        """The generation, or None. With `key_id`, only one made by that key (admin passes None)."""
        query = sa.select(generations).where(generations.c.id == gen_id)
        if key_id is not None:
            query = query.where(generations.c.key_id == key_id)
        async with self._db.read() as conn:
            row = (await conn.execute(query)).first()
        return GenerationRecord(**row._mapping) if row is not None else None

    async def delete(self, gen_id: str, *, key_id: str | None = None) -> bool:
        stmt = generations.delete().where(generations.c.id == gen_id)
        if key_id is not None:
            stmt = stmt.where(generations.c.key_id == key_id)
        async with self._db.write() as conn:
            res = await conn.execute(stmt)
        return (res.rowcount or 0) > 0

    async def purge_content(self, older_than: datetime) -> int:
        """Retention: blank the request and response kept for generations created before
        `older_than` (the stats stay). Returns how many rows were blanked."""
        doomed = (generations.c.created_at < older_than) & (
            generations.c.request.is_not(None) | generations.c.response.is_not(None)
        )
        async with self._db.write() as conn:
            res = await conn.execute(generations.update().where(doomed).values(request=None, response=None))
        return res.rowcount or 0

    async def charged_since(self, key_id: str, since: Sequence[datetime]) -> list[float]:
        """What `key_id` was charged (its settled budget reservations: runs, proxied and server-tool
        calls) since each instant of `since`, in one query: the windows of OpenRouter's key usage."""
        if not since:
            return []
        columns = [
            sa.func.coalesce(
                sa.func.sum(
                    sa.case((budget_reservations.c.settled_at >= at, budget_reservations.c.settled_usd), else_=0.0)
                ),
                0.0,
            )
            for at in since
        ]
        query = sa.select(*columns).where(
            budget_reservations.c.key_id == key_id, budget_reservations.c.settled_at.is_not(None)
        )
        async with self._db.read() as conn:
            row = (await conn.execute(query)).one()
        return [float(v) for v in row]
