"""ExperimentStore: experiments (definition and state) and the requests they assigned.

An experiment's definition is what the config file or the admin API declared (kept as JSON: the
service validates it); its state (running or stopped, the chosen arm, the paused arms) is changed only
through the admin API and survives restarts, so several replicas sharing the database agree on it.
One `experiment_requests` row is written when a request an experiment assigned has ended, primary or
shadow: the report reads nothing else.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import sqlalchemy as sa

from panelfuse.store.database import Database
from panelfuse.store.schema import UTCDateTime, metadata

ExperimentStatus = Literal["running", "stopped"]
# skipped: a shadow that never started (its budget or concurrency cap said no).
RequestStatus = Literal["completed", "failed", "cancelled", "skipped"]

experiments = sa.Table(
    "experiments",
    metadata,
    sa.Column("name", sa.String, primary_key=True),
    sa.Column("definition", sa.JSON, nullable=False),
    sa.Column("source", sa.String, nullable=False),  # config | api
    sa.Column("status", sa.String, nullable=False),
    sa.Column("chosen_arm", sa.String, nullable=True),
    sa.Column("paused_arms", sa.JSON, nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("updated_at", UTCDateTime, nullable=False),
)

experiment_requests = sa.Table(
    "experiment_requests",
    metadata,
    sa.Column("id", sa.String, primary_key=True),
    sa.Column("experiment", sa.String, nullable=False),
    sa.Column("arm", sa.String, nullable=False),
    sa.Column("shadow", sa.Boolean, nullable=False),
    sa.Column("unit", sa.String, nullable=False),  # the sticky unit, hashed
    sa.Column("key_id", sa.String, nullable=True),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("latency_ms", sa.Integer, nullable=False),
    sa.Column("status", sa.String, nullable=False),
    sa.Column("degraded", sa.Boolean, nullable=False),
    sa.Column("error", sa.Text, nullable=True),
    sa.Column("cost", sa.Double, nullable=True),  # USD; None when no price is known
    sa.Column("calls", sa.Integer, nullable=True),  # upstream calls made, where known
    sa.Column("cached", sa.Boolean, nullable=False),
    sa.Column("run_id", sa.String, nullable=True),  # the fusion run that answered (no FK: runs may be deleted)
    sa.Column("response_id", sa.String, nullable=True),  # the completion id the caller got
    sa.Column("feedback_score", sa.Double, nullable=True),
    # Kept only when the experiment has a grader (the report grades a sample of answers).
    sa.Column("question", sa.Text, nullable=True),
    sa.Column("answer", sa.Text, nullable=True),
    sa.Index("ix_experiment_requests_experiment_created_at", "experiment", "created_at"),
    sa.Index("ix_experiment_requests_run_id", "run_id"),
    sa.Index("ix_experiment_requests_response_id", "response_id"),
)


@dataclass(frozen=True)
class ExperimentRow:
    name: str
    definition: dict[str, Any]
    source: str
    status: ExperimentStatus
    chosen_arm: str | None
    paused_arms: tuple[str, ...]
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True)
class ExperimentRequest:
    """One request an experiment assigned, as it ended."""

    id: str
    experiment: str
    arm: str
    shadow: bool
    unit: str
    key_id: str | None
    created_at: datetime
    latency_ms: int
    status: RequestStatus
    degraded: bool = False
    error: str | None = None
    cost: float | None = None
    calls: int | None = None
    cached: bool = False
    run_id: str | None = None
    response_id: str | None = None
    feedback_score: float | None = None
    question: str | None = None
    answer: str | None = None


def _now() -> datetime:
    return datetime.now(UTC)


def _row(row: sa.Row[Any]) -> ExperimentRow:
    m = row._mapping
    return ExperimentRow(
        name=m["name"],
        definition=dict(m["definition"]),
        source=m["source"],
        status=m["status"],
        chosen_arm=m["chosen_arm"],
        paused_arms=tuple(m["paused_arms"] or ()),
        created_at=m["created_at"],
        updated_at=m["updated_at"],
    )


def _text(value: str | None) -> str | None:
    # PostgreSQL text cannot hold NUL.
    return value.replace("\x00", "\ufffd") if value else value


class ExperimentStore:
    """Experiments in `database` (the run store's: `ExperimentStore(store.database)`)."""

    def __init__(self, database: Database) -> None:
        self._db = database

    async def create(self, name: str, definition: dict[str, Any], source: str) -> bool:
        """Store a new experiment, running; False (nothing changed) when the name is taken."""
        now = _now()
        values: dict[str, Any] = {
            "name": name,
            "definition": definition,
            "source": source,
            "status": "running",
            "chosen_arm": None,
            "paused_arms": [],
            "created_at": now,
            "updated_at": now,
        }
        stmt = self._db.insert_ignoring(experiments, "name")
        inserted = await self._db.transact(lambda conn: conn.execute(stmt, values).rowcount)
        return (inserted or 0) > 0

    async def declare(self, name: str, definition: dict[str, Any], source: str) -> ExperimentRow:
        """The config file's declaration: created when new, its definition replaced when it changed;
        its state (stopped, paused arms) is kept across restarts either way."""

        def work(conn: sa.Connection) -> None:
            now = _now()
            found = conn.execute(sa.select(experiments.c.definition).where(experiments.c.name == name)).first()
            if found is None:
                conn.execute(
                    experiments.insert().values(
                        name=name,
                        definition=definition,
                        source=source,
                        status="running",
                        chosen_arm=None,
                        paused_arms=[],
                        created_at=now,
                        updated_at=now,
                    )
                )
            elif found[0] != definition:
                conn.execute(
                    experiments.update()
                    .where(experiments.c.name == name)
                    .values(definition=definition, source=source, updated_at=now)
                )

        await self._db.transact(work)
        row = await self.get(name)
        assert row is not None
        return row

    async def get(self, name: str) -> ExperimentRow | None:
        async with self._db.read() as conn:
            row = (await conn.execute(sa.select(experiments).where(experiments.c.name == name))).first()
        return _row(row) if row is not None else None

    async def all(self) -> list[ExperimentRow]:
        query = sa.select(experiments).order_by(experiments.c.created_at, experiments.c.name)
        async with self._db.read() as conn:
            rows = (await conn.execute(query)).all()
        return [_row(r) for r in rows]

    async def set_state(
        self,
        name: str,
        *,
        status: ExperimentStatus | None = None,
        chosen_arm: str | None = None,
        paused_arms: Sequence[str] | None = None,
    ) -> ExperimentRow | None:
        """Change the state (only what is given); None when there is no such experiment."""
        values: dict[str, Any] = {"updated_at": _now()}
        if status is not None:
            values["status"] = status
            values["chosen_arm"] = chosen_arm if status == "stopped" else None
        if paused_arms is not None:
            values["paused_arms"] = sorted(set(paused_arms))
        async with self._db.write() as conn:
            res = await conn.execute(experiments.update().where(experiments.c.name == name).values(**values))
        if (res.rowcount or 0) == 0:
            return None
        return await self.get(name)

    async def delete(self, name: str) -> bool:
        """Forget the experiment's definition (its recorded requests stay for the report)."""
        async with self._db.write() as conn:
            res = await conn.execute(experiments.delete().where(experiments.c.name == name))
        return (res.rowcount or 0) > 0

    async def record(self, request: ExperimentRequest) -> None:
        values = {f.name: getattr(request, f.name) for f in dataclasses.fields(request)}
        values["error"], values["question"], values["answer"] = (
            _text(request.error),
            _text(request.question),
            _text(request.answer),
        )
        stmt = self._db.insert_ignoring(experiment_requests, "id")
        await self._db.transact(lambda conn: conn.execute(stmt, values))

    async def requests(self, name: str) -> list[ExperimentRequest]:
        """Every request `name` assigned, oldest first."""
        query = (
            sa.select(experiment_requests)
            .where(experiment_requests.c.experiment == name)
            .order_by(experiment_requests.c.created_at, experiment_requests.c.id)
        )
        async with self._db.read() as conn:
            rows = (await conn.execute(query)).all()
        return [ExperimentRequest(**r._mapping) for r in rows]

    async def shadow_spent(self, name: str) -> float:
        """What the experiment's shadow runs have cost so far (USD)."""
        query = sa.select(sa.func.coalesce(sa.func.sum(experiment_requests.c.cost), 0.0)).where(
            experiment_requests.c.experiment == name, experiment_requests.c.shadow.is_(True)
        )
        async with self._db.read() as conn:
            return float((await conn.execute(query)).scalar_one())

    async def set_feedback(self, answer_id: str, score: float, *, key_id: str | None = None) -> int:
        """Feedback on an answer (its run id or its completion id) reaches the experiment's record;
        returns how many records took it. With `key_id`, only that key's requests."""
        match = (experiment_requests.c.run_id == answer_id) | (experiment_requests.c.response_id == answer_id)
        stmt = experiment_requests.update().where(match, experiment_requests.c.shadow.is_(False))
        if key_id is not None:
            stmt = stmt.where(experiment_requests.c.key_id == key_id)
        async with self._db.write() as conn:
            res = await conn.execute(stmt.values(feedback_score=score))
        return res.rowcount or 0
