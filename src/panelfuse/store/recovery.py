"""After a crash: runs a dead process left `running` become `interrupted`, with their terminal event
and their budget reservations settled (charged at the reservation: what they spent upstream before
the crash is unknown, and the reservation was admitted as its worst case). Which runs are abandoned
is the caller's decision (heartbeats, process liveness); this module only applies it, atomically."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import sqlalchemy as sa

from panelfuse.store.database import Database
from panelfuse.store.events import event_row
from panelfuse.store.keys import settle_reservation
from panelfuse.store.schema import budget_reservations, run_events, runs

INTERRUPTED_ERROR = "interrupted: the gateway stopped before the run finished"


@dataclass(frozen=True)
class RunningRun:
    id: str
    host: str | None
    owner_pid: int | None
    updated_at: datetime


async def running_runs(db: Database) -> list[RunningRun]:
    query = sa.select(runs.c.id, runs.c.host, runs.c.owner_pid, runs.c.updated_at).where(runs.c.status == "running")
    async with db.read() as conn:
        return [RunningRun(*row) for row in (await conn.execute(query)).all()]


async def interrupt_runs(db: Database, run_ids: Sequence[str], error: str = INTERRUPTED_ERROR) -> list[str]:
    """Mark these runs interrupted (those still `running`), each with a last `run.failed` event, and
    settle their reservations; returns the ids changed."""
    if not run_ids:
        return []
    now = datetime.now(UTC)
    lock = not db.is_sqlite  # SQLite's write lock is already held; PostgreSQL locks the rows read

    def work(conn: sa.Connection) -> list[str]:
        changed = []
        for run_id in run_ids:
            marked = conn.execute(
                runs.update()
                .where(runs.c.id == run_id, runs.c.status == "running")
                .values(status="interrupted", updated_at=now, error=sa.func.coalesce(runs.c.error, error))
            ).rowcount
            if not marked:
                continue  # it ended meanwhile, or another replica got there first
            changed.append(run_id)
            charge = settle_reservation(conn, run_id, None, now=now, lock=lock)
            if charge is not None:
                conn.execute(runs.update().where(runs.c.id == run_id).values(cost=charge))
            last = conn.execute(sa.select(sa.func.max(run_events.c.seq)).where(run_events.c.run_id == run_id)).scalar()
            ev = {"seq": (last or 0) + 1, "type": "run.failed", "data": {"error": error, "failed_models": []}}
            conn.execute(run_events.insert(), [event_row(run_id, ev)])
        return changed

    return await db.transact(work)


async def settle_finished_reservations(db: Database) -> int:
    """Reservations of runs whose outcome is stored but whose settling never happened (the process
    died between the two): charged at the stored run's cost. Returns how many."""
    now = datetime.now(UTC)
    lock = not db.is_sqlite
    query = (
        sa.select(budget_reservations.c.run_id, runs.c.cost)
        .join(runs, runs.c.id == budget_reservations.c.run_id)
        .where(budget_reservations.c.settled_at.is_(None), runs.c.status != "running")
    )

    def work(conn: sa.Connection) -> int:
        settled = [
            settle_reservation(conn, run_id, cost, now=now, lock=lock) for run_id, cost in conn.execute(query).all()
        ]
        return sum(charge is not None for charge in settled)

    return await db.transact(work)


@dataclass(frozen=True)
class HeldReservation:
    run_id: str
    host: str | None
    owner_pid: int | None
    created_at: datetime


async def runless_reservations(db: Database) -> list[HeldReservation]:
    """Unsettled reservations with no running run behind them: a proxied or server-tool request, or a
    fusion between its admission and its run's row; alive, or left by a process that died."""
    running = sa.select(runs.c.id).where(runs.c.id == budget_reservations.c.run_id, runs.c.status == "running")
    query = sa.select(
        budget_reservations.c.run_id,
        budget_reservations.c.host,
        budget_reservations.c.owner_pid,
        budget_reservations.c.created_at,
    ).where(budget_reservations.c.settled_at.is_(None), ~sa.exists(running))
    async with db.read() as conn:
        return [HeldReservation(*row) for row in (await conn.execute(query)).all()]


async def settle_reservations(db: Database, charges: Mapping[str, float | None]) -> int:
    """Settle these reservations, each at its cost (None: at its amount, the cost being unknown).
    Returns how many."""
    now = datetime.now(UTC)
    lock = not db.is_sqlite

    def work(conn: sa.Connection) -> int:
        settled = [settle_reservation(conn, run_id, cost, now=now, lock=lock) for run_id, cost in charges.items()]
        return sum(charge is not None for charge in settled)

    return await db.transact(work)
