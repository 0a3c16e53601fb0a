"""After a crash: runs a dead process left `running` become `interrupted`, with their terminal event
and their budget reservations settled (charged at the reservation: what they spent upstream before
the crash is unknown, and the reservation was admitted as its worst case). Which runs are abandoned
is the caller's decision (heartbeats, process liveness); this module only applies it, atomically."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import sqlalchemy as sa

from panelfuse.store.database import Database
from panelfuse.store.events import event_row
from panelfuse.store.schema import api_keys, budget_reservations, run_events, runs

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
            charge = _settle(conn, run_id, now, lock)
            if charge is not None:
                conn.execute(runs.update().where(runs.c.id == run_id).values(cost=charge))
            last = conn.execute(sa.select(sa.func.max(run_events.c.seq)).where(run_events.c.run_id == run_id)).scalar()
            ev = {"seq": (last or 0) + 1, "type": "run.failed", "data": {"error": error, "failed_models": []}}
            conn.execute(run_events.insert(), [event_row(run_id, ev)])
        return changed

    return await db.transact(work)


async def settle_orphaned_reservations(db: Database, older_than: datetime) -> int:
    """Reservations with no running run behind them (a proxied or server-tool request of a process
    that died), older than any request lives: charged at the reservation. Returns how many."""
    now = datetime.now(UTC)
    lock = not db.is_sqlite
    running = sa.select(runs.c.id).where(runs.c.id == budget_reservations.c.run_id, runs.c.status == "running")

    def work(conn: sa.Connection) -> int:
        ids = conn.execute(
            sa.select(budget_reservations.c.run_id).where(
                budget_reservations.c.settled_at.is_(None),
                budget_reservations.c.created_at < older_than,
                ~sa.exists(running),
            )
        ).scalars()
        return sum(_settle(conn, run_id, now, lock) is not None for run_id in list(ids))

    return await db.transact(work)


def _settle(conn: sa.Connection, run_id: str, now: datetime, lock: bool) -> float | None:
    """Charge an unsettled reservation at its amount; the charge, or None when there is none."""
    query = sa.select(budget_reservations).where(
        budget_reservations.c.run_id == run_id, budget_reservations.c.settled_at.is_(None)
    )
    res = conn.execute(query.with_for_update() if lock else query).first()
    if res is None:
        return None
    conn.execute(
        api_keys.update()
        .where(api_keys.c.id == res.key_id)
        .values(reserved_usd=api_keys.c.reserved_usd - res.amount_usd, spent_usd=api_keys.c.spent_usd + res.amount_usd)
    )
    conn.execute(
        budget_reservations.update()
        .where(budget_reservations.c.run_id == run_id)
        .values(settled_usd=res.amount_usd, settled_at=now)
    )
    return float(res.amount_usd)
