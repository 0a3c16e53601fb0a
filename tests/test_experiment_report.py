"""The experiment report's arithmetic: every figure equals a recomputation from the stored rows, the
bootstrap intervals are seeded and sensible, and the monthly cost is projected at each volume source."""

from __future__ import annotations

import random
import statistics
import uuid
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine

from conftest import require_service
from experiment_rows import DEFINITION, NAME, SPEC, T0, make_rows, record
from panelfuse.evals.bootstrap import bootstrap_difference
from panelfuse.evals.experiment_report import experiment_report
from panelfuse.evals.experiment_stats import build_report
from panelfuse.experiment_spec import ExperimentSpec
from panelfuse.store import RunStore
from panelfuse.store.experiments import ExperimentRequest

PG_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/test"


def p(values: list[float], q: int) -> float:
    """numpy's default percentile (linear), through the standard library's own implementation."""
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


@pytest.fixture(params=["sqlite", "postgresql"])
async def target(request, tmp_path: Path):
    """(url, schema) of an empty database: a SQLite file, or a random PostgreSQL schema dropped after."""
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'runs.db'}", None
        return
    require_service(5432, "PostgreSQL")
    schema = f"pf_test_{uuid.uuid4().hex[:12]}"
    yield PG_URL, schema
    engine = create_async_engine(PG_URL)
    try:
        async with engine.begin() as conn:
            await conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
    finally:
        await engine.dispose()


async def test_the_report_equals_a_recomputation_from_the_stored_rows(target: tuple[str, str | None]) -> None:
    url, schema = target
    rows = make_rows()
    await record(url, rows, {NAME: DEFINITION}, schema)
    async with await RunStore.open(url, schema=schema) as store:
        report = await experiment_report(store.database, NAME, {})
    assert report is not None
    # The definition's order, roles as defined; the first primary arm is the control.
    assert [(a.arm, a.role) for a in report.arms] == [("single", "control"), ("vote", "shadow"), ("fusion", "primary")]
    assert report.control == "single" and report.status == "running"
    assert report.requests == sum(1 for r in rows if not r.shadow)
    assert report.first_at == T0 and report.last_at == max(r.created_at for r in rows)

    for arm in report.arms:
        mine = [r for r in rows if r.arm == arm.arm]
        skipped = [r for r in mine if r.status == "skipped"]
        not_skipped = [r for r in mine if r.status != "skipped"]
        done = [r for r in mine if r.status == "completed"]
        failed = [r for r in mine if r.status == "failed"]
        cancelled = [r for r in mine if r.status == "cancelled"]
        known = [r.cost for r in not_skipped if r.cost is not None]
        latency = sorted(float(r.latency_ms) for r in done)
        feedback = [r.feedback_score for r in mine if r.feedback_score is not None]
        assert arm.requests == len(mine)
        assert (arm.completed, arm.failed, arm.cancelled, arm.skipped) == (
            len(done),
            len(failed),
            len(cancelled),
            len(skipped),
        )
        assert arm.unpriced == len(not_skipped) - len(known)
        assert arm.total_cost == pytest.approx(sum(known))
        assert arm.cost_per_request == pytest.approx(sum(known) / len(known))
        assert arm.latency_p50_ms == pytest.approx(statistics.median(latency))
        assert arm.latency_p95_ms == pytest.approx(p(latency, 95))
        assert arm.failure_rate == pytest.approx(len(failed) / len(not_skipped))
        assert arm.cancelled_rate == pytest.approx(len(cancelled) / len(not_skipped))
        assert arm.degraded_rate == pytest.approx(sum(r.degraded for r in done) / len(done))
        assert arm.cached_share == pytest.approx(sum(r.cached for r in done) / len(done))
        assert arm.feedback_count == len(feedback)
        if feedback:
            assert arm.feedback_mean == pytest.approx(sum(feedback) / len(feedback))
        else:
            assert arm.feedback_mean is None and arm.shadow
        assert arm.rubric is None  # no grader configured
    # The shadow arm really has skipped rows, and the data has unknown costs and feedback to check.
    vote = report.arm("vote")
    assert vote is not None and vote.skipped > 0 and vote.feedback_count == 0
    assert all(a.unpriced > 0 for a in report.arms)

    # Differences: arm − control, on each metric with observations on both sides.
    control = [r for r in rows if r.arm == "single"]
    for d in report.differences:
        mine = [r for r in rows if r.arm == d.arm]
        if d.metric == "cost_per_request":
            a = [r.cost for r in mine if r.status != "skipped" and r.cost is not None]
            c = [r.cost for r in control if r.cost is not None]
            expected = sum(a) / len(a) - sum(c) / len(c)
        elif d.metric == "latency_p50_ms":
            a = [float(r.latency_ms) for r in mine if r.status == "completed"]
            c = [float(r.latency_ms) for r in control if r.status == "completed"]
            expected = statistics.median(a) - statistics.median(c)
        elif d.metric == "failure_rate":
            a = [r for r in mine if r.status != "skipped"]
            c = control
            expected = sum(r.status == "failed" for r in a) / len(a) - sum(r.status == "failed" for r in c) / len(c)
        else:
            assert d.metric == "feedback_mean"
            a = [r.feedback_score for r in mine if r.feedback_score is not None]
            c = [r.feedback_score for r in control if r.feedback_score is not None]
            expected = sum(a) / len(a) - sum(c) / len(c)
        assert d.difference == pytest.approx(expected), d
        assert d.difference == pytest.approx(d.value - d.control)
        assert (d.n, d.n_control) == (len(a), len(c))
    assert {(d.arm, d.metric) for d in report.differences} == {
        ("vote", "cost_per_request"),
        ("vote", "latency_p50_ms"),
        ("vote", "failure_rate"),  # a shadow has no feedback: nothing to compare
        ("fusion", "cost_per_request"),
        ("fusion", "latency_p50_ms"),
        ("fusion", "failure_rate"),
        ("fusion", "feedback_mean"),
    }


def _row(rid: str, arm: str, status: str, cost: float | None, latency: int, **kw: object) -> ExperimentRequest:
    return ExperimentRequest(
        rid, NAME, arm, arm == "vote", "u", None, T0 + timedelta(minutes=len(rid)), latency, status, cost=cost, **kw
    )


def test_the_rates_follow_their_definitions_on_a_small_case() -> None:
    rows = [
        _row("a1", "single", "completed", 0.01, 100, feedback_score=1.0),
        _row("a2", "single", "completed", 0.03, 300, degraded=True, cached=True),
        _row("a3", "single", "completed", None, 200),
        _row("a4", "single", "failed", 0.005, 50),
        _row("a5", "single", "cancelled", 0.002, 10),
        _row("s1", "vote", "completed", 0.05, 700),
        _row("s2", "vote", "skipped", None, 0),
        _row("s3", "vote", "skipped", None, 0),
        _row("s4", "vote", "failed", 0.01, 40),
    ]
    report = build_report(NAME, SPEC, rows, monthly_requests=1000)
    single, vote, fusion = (report.arm(n) for n in ("single", "vote", "fusion"))
    assert single is not None and vote is not None and fusion is not None
    assert single.failure_rate == pytest.approx(1 / 5)  # failed / not skipped (the cancelled one counts)
    assert single.cancelled_rate == pytest.approx(1 / 5)
    assert single.degraded_rate == pytest.approx(1 / 3) and single.cached_share == pytest.approx(1 / 3)
    assert single.cost_per_request == pytest.approx(0.047 / 4) and single.unpriced == 1
    assert single.latency_p50_ms == 200 and single.latency_p95_ms == pytest.approx(290)
    assert single.monthly_cost == pytest.approx(0.047 / 4 * 1000)
    assert vote.requests == 4 and vote.skipped == 2
    assert vote.failure_rate == pytest.approx(1 / 2)  # the skipped shadows are not in the denominator
    assert vote.cost_per_request == pytest.approx(0.03) and vote.unpriced == 0
    assert fusion.requests == 0 and fusion.cost_per_request is None and fusion.failure_rate is None


def test_bootstrap_intervals_are_seeded_contain_the_estimate_and_separate_clear_differences() -> None:
    rows = make_rows(n=200)
    first = build_report(NAME, SPEC, rows, seed=3)
    assert first.differences == build_report(NAME, SPEC, rows, seed=3).differences
    other = build_report(NAME, SPEC, rows, seed=4)
    assert [(d.ci_low, d.ci_high) for d in first.differences] != [(d.ci_low, d.ci_high) for d in other.differences]
    for d in first.differences:
        assert d.ci_low <= d.difference <= d.ci_high, d
    by = {(d.arm, d.metric): d for d in first.differences}
    # A fusion costs about 20 times a single call and takes seconds instead of hundreds of ms.
    for metric in ("cost_per_request", "latency_p50_ms"):
        d = by[("fusion", metric)]
        assert d.excludes_zero and d.ci_low > 0, d
    # The same rows relabelled: no difference, and an interval across 0.
    twin = [replace(r, arm="fusion", id=r.id + "-twin") for r in rows if r.arm == "single"]
    same = build_report(NAME, SPEC, [r for r in rows if r.arm == "single"] + twin, seed=3)
    for d in same.differences:
        assert d.difference == pytest.approx(0) and d.ci_low <= 0 <= d.ci_high and not d.excludes_zero


@pytest.mark.parametrize("vectorised", [False, True], ids=["python", "numpy"])
@pytest.mark.parametrize("statistic", ["mean", "median"])
def test_bootstrap_difference_is_seeded_and_as_wide_as_theory_says(vectorised: bool, statistic: str) -> None:
    rng = random.Random(1)
    a = [rng.gauss(10, 2) for _ in range(300)]
    b = [rng.gauss(11, 2) for _ in range(250)]
    ci = bootstrap_difference(a, b, statistic, seed=5, vectorised=vectorised)
    assert ci == bootstrap_difference(a, b, statistic, seed=5, vectorised=vectorised)
    assert ci != bootstrap_difference(a, b, statistic, seed=6, vectorised=vectorised)
    of = statistics.fmean if statistic == "mean" else statistics.median
    assert ci.mean == pytest.approx(of(b) - of(a))
    assert ci.low <= ci.mean <= ci.high and ci.low > 0  # a clear difference: 0 is outside
    if statistic == "mean":  # the normal approximation's half-width, 1.96 standard errors
        se = (statistics.variance(a) / len(a) + statistics.variance(b) / len(b)) ** 0.5
        assert (ci.high - ci.low) / 2 == pytest.approx(1.96 * se, rel=0.15)


def test_the_monthly_cost_is_projected_at_each_volume_source() -> None:
    rows = make_rows(n=61, gap_s=60.0)  # the primary requests: one a minute for an hour
    cost = {a.arm: a.cost_per_request for a in build_report(NAME, SPEC, rows).arms}

    asked = build_report(NAME, SPEC, rows, monthly_requests=250_000)
    assert asked.volume.source == "option" and asked.volume.monthly_requests == 250_000
    for a in asked.arms:
        assert a.monthly_cost == pytest.approx(cost[a.arm] * 250_000)

    declared = ExperimentSpec.model_validate({**DEFINITION, "monthly_requests": 90_000})
    spec = build_report(NAME, declared, rows)
    assert spec.volume.source == "spec" and spec.volume.monthly_requests == 90_000
    assert build_report(NAME, declared, rows, monthly_requests=5).volume.source == "option"  # the caller's wins

    observed = build_report(NAME, SPEC, rows)
    assert observed.volume.source == "observed"
    assert observed.volume.monthly_requests == pytest.approx(30 * 24 * 60)  # one a minute, over 30 days
    assert "extrapolated to 30 days" in observed.volume.note
    for a, m in zip(observed.arms, observed.monthly, strict=True):
        assert a.monthly_cost == pytest.approx(cost[a.arm] * 30 * 24 * 60) and m.monthly_cost == a.monthly_cost
    # Against the control: the cost/request difference (and its interval) times the volume.
    fusion = next(m for m in observed.monthly if m.arm == "fusion")
    diff = next(d for d in observed.differences if d.arm == "fusion" and d.metric == "cost_per_request")
    assert fusion.difference == pytest.approx(diff.difference * 43_200)
    assert fusion.ci_low == pytest.approx(diff.ci_low * 43_200)
    assert fusion.ci_high == pytest.approx(diff.ci_high * 43_200)

    lonely = build_report(NAME, SPEC, rows[:2])  # one primary request: no rate to extrapolate
    assert lonely.volume.source == "none" and lonely.volume.monthly_requests is None
    assert all(a.monthly_cost is None for a in lonely.arms)


def test_an_arm_no_longer_defined_is_reported_after_the_definitions_arms() -> None:
    rows = [_row("a1", "single", "completed", 0.01, 100), _row("x1", "retired", "completed", 0.02, 100)]
    report = build_report(NAME, SPEC, rows)
    assert [(a.arm, a.role) for a in report.arms][-1] == ("retired", "removed")


def test_the_plot_draws_an_interval_that_leaves_out_its_estimate() -> None:
    """A percentile interval of a median difference may not hold the point estimate (discrete
    medians: seen on the README's walkthrough); the plot still draws it."""
    pytest.importorskip("matplotlib")
    from panelfuse.evals.experiment_render import plot_png

    report = build_report(NAME, SPEC, make_rows(), seed=3)
    first = report.differences[0]
    odd = replace(first, ci_low=first.difference + 1.0, ci_high=first.difference + 2.0)
    png = plot_png(replace(report, differences=[odd, *report.differences[1:]]))
    assert png.startswith(b"\x89PNG")
