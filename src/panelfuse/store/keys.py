"""API keys and budgets. Keys are stored hashed; budgets are reserved atomically in the database, so
parallel requests on any number of gateway processes sharing the store can never overspend."""

from __future__ import annotations

import fnmatch
import hashlib
import hmac
import math
import os
import secrets
import socket
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from panelfuse.store.database import Database
from panelfuse.store.schema import api_keys, budget_reservations

KEY_PREFIX = "pf-"
EPSILON = 1e-12  # float slack so a reservation that exactly fits is not refused


def hash_secret(secret: str) -> str:
    # Keys are 256-bit random tokens: a plain SHA-256 is enough (no dictionary to guard against).
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def looks_like_panelfuse_key(token: str) -> bool:
    return token.startswith(KEY_PREFIX)


@dataclass(frozen=True)
class ApiKey:
    id: str
    name: str
    prefix: str  # enough of the key to recognise it in a list; never enough to use it
    created_at: datetime
    revoked_at: datetime | None
    is_admin: bool
    budget_usd: float | None
    spent_usd: float
    reserved_usd: float
    rpm: int | None
    max_concurrent: int | None
    models: tuple[str, ...] | None

    def allows(self, qualified_model: str) -> bool:
        """The allowlist is fnmatch patterns over qualified ids ("openrouter/*", "local/smollm2")."""
        return self.models is None or any(fnmatch.fnmatchcase(qualified_model, p) for p in self.models)

    @property
    def remaining_usd(self) -> float | None:
        return None if self.budget_usd is None else self.budget_usd - self.spent_usd - self.reserved_usd

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "prefix": self.prefix,
            "created_at": self.created_at.isoformat(),
            "revoked_at": self.revoked_at.isoformat() if self.revoked_at else None,
            "is_admin": self.is_admin,
            "budget_usd": self.budget_usd,
            "spent_usd": self.spent_usd,
            "reserved_usd": self.reserved_usd,
            "rpm": self.rpm,
            "max_concurrent": self.max_concurrent,
            "models": list(self.models) if self.models is not None else None,
        }


@dataclass(frozen=True)
class NewKey:
    key: ApiKey
    secret: str  # shown once, at creation


def _row_to_key(row: Mapping[Any, Any]) -> ApiKey:
    """A key from its table row (a fetched row's mapping, or the dict just inserted)."""
    models = row["models"]
    return ApiKey(
        id=row["id"],
        name=row["name"],
        prefix=row["prefix"],
        created_at=row["created_at"],
        revoked_at=row["revoked_at"],
        is_admin=row["is_admin"],
        budget_usd=row["budget_usd"],
        spent_usd=row["spent_usd"],
        reserved_usd=row["reserved_usd"],
        rpm=row["rpm"],
        max_concurrent=row["max_concurrent"],
        models=tuple(models) if models is not None else None,
    )


def settled_charge(reserved: float, actual: float | None, headroom: float | None, reserved_total: float) -> float:
    """What a run is charged: what it cost (the reservation when that is unknown or not a finite
    number), never below zero (a negative reported cost never credits a key), and never past the
    budget: a provider that reports more than our worst case (its prices changed) is charged only up
    to what the budget has left beside the other runs' reservations, and always at least the
    reservation, which was admitted. `headroom` is budget minus spent (None: no budget)."""
    if actual is None or not math.isfinite(actual):
        return reserved
    charge = max(0.0, actual)
    if headroom is None or charge <= reserved:
        return charge
    others_reserved = max(0.0, reserved_total - reserved)
    return max(reserved, min(charge, headroom - others_reserved))


def settle_reservation(
    conn: sa.Connection, run_id: str, cost: float | None, *, now: datetime, lock: bool
) -> float | None:
    """Settle the run's unsettled reservation at `cost` (None: at the reservation, the cost being
    unknown) by `settled_charge`, inside the caller's transaction; the charge, or None when there is no
    reservation left to settle. `lock`: take the reservation's row lock (PostgreSQL)."""
    query = sa.select(budget_reservations).where(
        budget_reservations.c.run_id == run_id, budget_reservations.c.settled_at.is_(None)
    )
    res = conn.execute(query.with_for_update() if lock else query).first()
    if res is None:
        return None
    key_query = sa.select(api_keys.c.budget_usd, api_keys.c.spent_usd, api_keys.c.reserved_usd)
    key = conn.execute(key_query.where(api_keys.c.id == res.key_id)).first()
    headroom = None if key is None or key.budget_usd is None else key.budget_usd - key.spent_usd
    charge = settled_charge(res.amount_usd, cost, headroom, key.reserved_usd if key else 0.0)
    conn.execute(
        api_keys.update()
        .where(api_keys.c.id == res.key_id)
        .values(reserved_usd=api_keys.c.reserved_usd - res.amount_usd, spent_usd=api_keys.c.spent_usd + charge)
    )
    conn.execute(
        budget_reservations.update()
        .where(budget_reservations.c.run_id == run_id)
        .values(settled_usd=charge, settled_at=now)
    )
    return charge


class KeyStore:
    """API keys and budgets in `database` (the run store's: `RunStore.keys`)."""

    def __init__(self, database: Database) -> None:
        self._db = database

    async def create(
        self,
        name: str,
        *,
        budget_usd: float | None = None,
        rpm: int | None = None,
        max_concurrent: int | None = None,
        models: list[str] | None = None,
        is_admin: bool = False,
    ) -> NewKey:
        secret = KEY_PREFIX + secrets.token_urlsafe(32)
        row = {
            "id": f"key_{uuid.uuid4().hex[:16]}",
            "name": name,
            "key_hash": hash_secret(secret),
            "prefix": secret[:9],
            "created_at": datetime.now(UTC),
            "revoked_at": None,
            "is_admin": is_admin,
            "budget_usd": budget_usd,
            "spent_usd": 0.0,
            "reserved_usd": 0.0,
            "rpm": rpm,
            "max_concurrent": max_concurrent,
            "models": models,
        }
        async with self._db.write() as conn:
            await conn.execute(api_keys.insert().values(**row))
        return NewKey(_row_to_key(row), secret)

    async def list(self) -> list[ApiKey]:
        async with self._db.read() as conn:
            rows = (await conn.execute(sa.select(api_keys).order_by(api_keys.c.created_at))).all()
        return [_row_to_key(r._mapping) for r in rows]

    async def get(self, key_id: str) -> ApiKey | None:
        async with self._db.read() as conn:
            row = (await conn.execute(sa.select(api_keys).where(api_keys.c.id == key_id))).first()
        return _row_to_key(row._mapping) if row else None

    async def revoke(self, id_or_name: str) -> int:
        """Revoke by id, or every active key with that name. Returns how many were revoked."""
        async with self._db.write() as conn:
            res = await conn.execute(
                api_keys.update()
                .where(sa.or_(api_keys.c.id == id_or_name, api_keys.c.name == id_or_name))
                .where(api_keys.c.revoked_at.is_(None))
                .values(revoked_at=datetime.now(UTC))
            )
        return res.rowcount or 0

    async def count_active(self) -> int:
        async with self._db.read() as conn:
            return int(
                await conn.scalar(
                    sa.select(sa.func.count()).select_from(api_keys).where(api_keys.c.revoked_at.is_(None))
                )
                or 0
            )

    async def authenticate(self, secret: str) -> ApiKey | None:
        """The active key with this secret, or None. The lookup is by hash; the final comparison is
        constant-time so timing says nothing about how much of a guess was right."""
        digest = hash_secret(secret)
        async with self._db.read() as conn:
            row = (await conn.execute(sa.select(api_keys).where(api_keys.c.key_hash == digest))).first()
        if row is None or row.revoked_at is not None or not hmac.compare_digest(row.key_hash, digest):
            return None
        return _row_to_key(row._mapping)

    async def reserve(self, key_id: str, run_id: str, amount_usd: float) -> bool:
        """Hold `amount_usd` against the key's budget, atomically: one conditional UPDATE, so two
        processes can never both take the last dollars. False when it does not fit."""
        fits = sa.or_(
            api_keys.c.budget_usd.is_(None),
            api_keys.c.spent_usd + api_keys.c.reserved_usd + amount_usd <= api_keys.c.budget_usd + EPSILON,
        )
        hold = (
            api_keys.update()
            .where(api_keys.c.id == key_id, api_keys.c.revoked_at.is_(None))
            .where(fits)
            .values(reserved_usd=api_keys.c.reserved_usd + amount_usd)
        )
        record = budget_reservations.insert().values(
            run_id=run_id,
            key_id=key_id,
            amount_usd=amount_usd,
            created_at=datetime.now(UTC),
            host=socket.gethostname(),  # the holder: a restart after a crash settles what it left
            owner_pid=os.getpid(),
        )

        def work(conn: sa.Connection) -> bool:
            if (conn.execute(hold).rowcount or 0) != 1:
                return False
            conn.execute(record)
            return True

        return await self._db.transact(work)

    async def settle(self, run_id: str, actual_usd: float | None) -> None:
        """Release the run's reservation and charge what it really cost (the reservation itself when
        the cost is unknown). Settling twice does nothing."""
        now, lock = datetime.now(UTC), not self._db.is_sqlite  # SQLite's write lock is already held
        await self._db.transact(lambda conn: settle_reservation(conn, run_id, actual_usd, now=now, lock=lock))
