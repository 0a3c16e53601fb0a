"""Recorded experiment requests for the report's tests: a seeded mix of arms, statuses, costs (some
unknown), latencies, feedback, cached and degraded answers, shadow runs and skipped shadows."""

from __future__ import annotations

import asyncio
import random
from datetime import UTC, datetime, timedelta
from typing import Any

from panelfuse.experiment_spec import ExperimentSpec
from panelfuse.store import RunStore
from panelfuse.store.experiments import ExperimentRequest, ExperimentStore, RequestStatus

T0 = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)
NAME = "fusion-vs-single"
DEFINITION: dict[str, Any] = {
    "models": ["gpt-default"],
    "arms": [
        {"name": "single", "model": "fake/m1", "share": 0.5},
        {"name": "vote", "model": "panelfuse/fusion", "fusion": {"mode": "best-of"}, "shadow": True},
        {"name": "fusion", "model": "panelfuse/fusion", "share": 0.5},
    ],
}
SPEC = ExperimentSpec.model_validate(DEFINITION)

STATUSES: list[RequestStatus] = ["completed", "failed", "cancelled"]
# arm: (cost scale, latency range in ms, failure weight, feedback mean)
PROFILE = {
    "single": (0.001, (200, 900), 4, 0.2),
    "fusion": (0.02, (1500, 6000), 10, 0.5),
    "vote": (0.01, (900, 3000), 8, 0),
}


def make_rows(n: int = 120, seed: int = 7, name: str = NAME, gap_s: float = 60.0) -> list[ExperimentRequest]:
    """`n` primary requests, one every `gap_s` seconds, each with a shadow run of `vote` (a third of
    them skipped)."""
    rng = random.Random(seed)
    rows: list[ExperimentRequest] = []
    for i in range(n):
        at = T0 + timedelta(seconds=i * gap_s)
        arm = "single" if rng.random() < 0.5 else "fusion"
        rows.append(_row(rng, f"req-{i:04d}", name, arm, False, at))
        if i % 3 == 0:
            rows.append(ExperimentRequest(f"shd-{i:04d}", name, "vote", True, "u", None, at, 0, "skipped"))
        else:
            rows.append(_row(rng, f"shd-{i:04d}", name, "vote", True, at))
    return rows


def _row(rng: random.Random, rid: str, name: str, arm: str, shadow: bool, at: datetime) -> ExperimentRequest:
    scale, (lo, hi), fail_weight, feedback = PROFILE[arm]
    status = rng.choices(STATUSES, [100 - fail_weight - 3, fail_weight, 3])[0]
    cost = None if rng.random() < 0.1 else round(scale * rng.uniform(0.5, 1.5), 8)
    score = None if shadow or rng.random() < 0.5 else max(-1.0, min(1.0, rng.gauss(feedback, 0.5)))
    return ExperimentRequest(
        id=rid,
        experiment=name,
        arm=arm,
        shadow=shadow,
        unit=f"unit-{rng.randrange(20)}",
        key_id=None,
        created_at=at,
        latency_ms=rng.randint(lo, hi),
        status=status,
        degraded=status == "completed" and rng.random() < 0.15,
        cost=cost,
        calls=1 if arm == "single" else 5,
        cached=status == "completed" and rng.random() < 0.1,
        feedback_score=score,
    )


async def record(
    db_url: str, rows: list[ExperimentRequest], definitions: dict[str, dict[str, Any]], schema: str | None = None
) -> None:
    """Store the experiments' definitions (as the admin API would) and the rows."""
    store = await RunStore.open(db_url, schema=schema)
    try:
        experiments = ExperimentStore(store.database)
        for name, definition in definitions.items():
            await experiments.create(name, definition, "api")
        for row in rows:
            await experiments.record(row)
    finally:
        await store.close()


def record_sync(db_url: str, rows: list[ExperimentRequest], definitions: dict[str, dict[str, Any]]) -> None:
    """`record` from a test that is not async (a thread of its own: Playwright may hold this one's loop)."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, record(db_url, rows, definitions)).result()
