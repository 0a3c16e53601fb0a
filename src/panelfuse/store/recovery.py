"""After a crash: runs a dead process left `running` become `interrupted`, with their terminal event
and their budget reservations settled (charged at the reservation: what they spent upstream before
the crash is unknown, and the reservation was admitted as its worst case); reservations it left
without a running run are settled too. Which rows are abandoned is the caller's decision (heartbeats,
process liveness); this module only applies it.

One transaction per run or reservation: a transaction that held a key's row while waiting for
another reservation's row could deadlock with a live settle (which takes them in the other order)."""

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


@dataclass(frozen=True)
class HeldReservation:
    run_id: str
    host: str | None
    owner_pid: int | None
    created_at: datetime
    run_status: str | None  # None: no run row (a proxied or server-tool request, or a run never started)
    run_cost: float | None
    run_ended_at: datetime | None


async def running_runs(db: Database) -> list[RunningRun]:
    query = sa.select(runs.c.id, runs.c.host, runs.c.owner_pid, runs.c.updated_at).where(runs.c.status == "running")
    async with db.read() as conn:
        return [RunningRun(*row) for row in (await conn.execute(query)).all()]


async def interrupt_runs(db: Database, run_ids: Sequence[str], error: str = INTERRUPTED_ERROR) -> list[str]:
    """Mark these runs interrupted (those still `running`), each with a last `run.failed` event, and
    settle their reservations; returns the ids changed."""
    lock = not db.is_sqlite  # SQLite's write lock is already held; PostgreSQL locks the rows read

    def interrupt(conn: sa.Connection, run_id: str, now: datetime) -> bool:
        marked = conn.execute(
            runs.update()
            .where(runs.c.id == run_id, runs.c.status == "running")
            .values(status="interrupted", updated_at=now, error=sa.func.coalesce(runs.c.error, error))
        ).rowcount
        if not marked:
            return False  # it ended meanwhile, or another replica got there first
        charge = settle_reservation(conn, run_id, None, now=now, lock=lock)
        if charge is not None:
            conn.execute(runs.update().where(runs.c.id == run_id).values(cost=charge))
        last = conn.execute(sa.select(sa.func.max(run_events.c.seq)).where(run_events.c.run_id == run_id)).scalar()
        ev = {"seq": (last or 0) + 1, "type": "run.failed", "data": {"error": error, "failed_models": []}}
        conn.execute(run_events.insert(), [event_row(run_id, ev)])
        return True

    changed = []
    for run_id in run_ids:
        now = datetime.now(UTC)
        if await db.transact(lambda conn, r=run_id, t=now: interrupt(conn, r, t)):  # type: ignore[misc]
            changed.append(run_id)
    return changed


async def held_reservations(db: Database) -> list[HeldReservation]:
    """Unsettled reservations with no running run behind them: a proxied or server-tool request, a
    fusion between its admission and its run's row, or one whose run's outcome is stored but not yet
    settled; held by a live process, or left by one that died."""
    joined = budget_reservations.outerjoin(runs, runs.c.id == budget_reservations.c.run_id)
    query = (
        sa.select(
            budget_reservations.c.run_id,
            budget_reservations.c.host,
            budget_reservations.c.owner_pid,
            budget_reservations.c.created_at,
            runs.c.status,
            runs.c.cost,
            runs.c.updated_at,
        )
        .select_from(joined)
        .where(budget_reservations.c.settled_at.is_(None), sa.or_(runs.c.status.is_(None), runs.c.status != "running"))
    )
    async with db.read() as conn:
        return [HeldReservation(*row) for row in (await conn.execute(query)).all()]


async def settle_reservations(db: Database, charges: Mapping[str, float | None]) -> int:
    """Settle these reservations, each at its cost (None: at its amount, the cost being unknown).
    Returns how many were still unsettled."""
    lock = not db.is_sqlite
    settled = 0
    for run_id, cost in charges.items():
        now = datetime.now(UTC)
        charge = await db.transact(
            lambda conn, r=run_id, c=cost, t=now: settle_reservation(conn, r, c, now=t, lock=lock)  # type: ignore[misc]
        )
        settled += charge is not None
    return settled
