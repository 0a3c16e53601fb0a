"""An experiment's report, as arithmetic: its definition and the requests it recorded in, typed figures
out (per arm, differences against the control arm with bootstrap intervals, the projected monthly cost).
Pure: no store, no clock, no I/O; `experiment_report.py` gathers the inputs, `experiment_render.py`
writes them out.

Definitions (docs/experiments-report.md says them for users):

- requests: every request recorded for the arm, whatever its status.
- failure rate = failed / (requests − skipped); cancelled (the client left) is counted apart, as its
  own rate over the same denominator, and is not a failure.
- degraded rate = degraded / completed; cached share = cached / completed.
- cost per request: the mean cost of the requests not skipped whose cost is known (those without a
  price are counted in `unpriced`); total cost: the sum of the known costs.
- latency p50/p95: over completed requests (a failure's latency says little about the arm).
- feedback: the scores given, count and mean; rubric score: the mean over the graded sample.
- differences: arm − control, each arm resampled on its own (seeded percentile bootstrap).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from statistics import fmean
from typing import Literal

from panelfuse.evals.bootstrap import Statistic, bootstrap_difference, bootstrap_mean, percentile, statistic_value
from panelfuse.experiment_spec import ExperimentSpec
from panelfuse.store.experiments import ExperimentRequest

Role = Literal["control", "primary", "shadow", "removed"]
Metric = Literal["cost_per_request", "latency_p50_ms", "failure_rate", "feedback_mean", "rubric_score"]
VolumeSource = Literal["option", "spec", "observed", "none"]
METRICS: tuple[Metric, ...] = ("cost_per_request", "latency_p50_ms", "failure_rate", "feedback_mean", "rubric_score")
METRIC_LABELS: dict[Metric, str] = {
    "cost_per_request": "cost/request (USD)",
    "latency_p50_ms": "latency p50 (ms)",
    "failure_rate": "failure rate",
    "feedback_mean": "feedback mean",
    "rubric_score": "rubric score",
}
DAYS_PER_MONTH = 30
SECONDS_PER_MONTH = DAYS_PER_MONTH * 86_400


@dataclass(frozen=True)
class RubricScore:
    """The graded sample of one arm's completed answers."""

    sample: int  # answers in the sample (at most the grader's `sample`)
    graded: int  # answers of the sample with a score
    mean: float | None
    ci_low: float | None
    ci_high: float | None


@dataclass(frozen=True)
class ArmStats:
    arm: str
    role: Role
    model: str | None  # the arm's model id in the definition (None: an arm no longer defined)
    requests: int
    completed: int
    failed: int
    cancelled: int
    skipped: int
    degraded: int
    cached: int
    unpriced: int  # requests not skipped whose cost is unknown
    total_cost: float
    cost_per_request: float | None
    latency_p50_ms: float | None
    latency_p95_ms: float | None
    failure_rate: float | None
    cancelled_rate: float | None
    degraded_rate: float | None
    cached_share: float | None
    feedback_count: int
    feedback_mean: float | None
    rubric: RubricScore | None
    monthly_cost: float | None  # cost_per_request × the volume: what the arm would cost with all the traffic

    @property
    def shadow(self) -> bool:
        return self.role == "shadow"


@dataclass(frozen=True)
class Difference:
    """One metric of one arm against the control: `difference` = value − control."""

    arm: str
    metric: Metric
    value: float
    control: float
    difference: float
    ci_low: float
    ci_high: float
    n: int  # the arm's observations
    n_control: int
    excludes_zero: bool  # the interval lies wholly on one side of 0


@dataclass(frozen=True)
class Volume:
    monthly_requests: float | None
    source: VolumeSource  # option: the caller's; spec: the definition's monthly_requests; observed: the rate
    note: str


@dataclass(frozen=True)
class MonthlyCost:
    arm: str
    cost_per_request: float | None
    monthly_cost: float | None
    difference: float | None  # against the control's monthly cost, with the cost difference's interval
    ci_low: float | None
    ci_high: float | None


@dataclass(frozen=True)
class ExperimentReport:
    name: str
    status: str | None  # running | stopped (None: only in the config, not yet in the store)
    chosen_arm: str | None
    paused_arms: list[str]
    models: list[str]
    control: str
    requests: int  # primary requests: the experiment's traffic
    first_at: datetime | None
    last_at: datetime | None
    arms: list[ArmStats]
    differences: list[Difference]
    volume: Volume
    monthly: list[MonthlyCost]
    grader_model: str | None
    rubric: list[str]
    seed: int
    confidence: float
    resamples: int

    def arm(self, name: str) -> ArmStats | None:
        return next((a for a in self.arms if a.arm == name), None)


def _rate(part: int, whole: int) -> float | None:
    return part / whole if whole else None


# The statistic each difference compares (of the observations `metric_samples` lists).
STATISTICS: dict[Metric, Statistic] = {
    "cost_per_request": "mean",
    "latency_p50_ms": "median",
    "failure_rate": "mean",
    "feedback_mean": "mean",
    "rubric_score": "mean",
}


def metric_samples(rows: Sequence[ExperimentRequest], rubric_scores: Sequence[float] = ()) -> dict[Metric, list[float]]:
    """The observations behind each compared metric, for one arm's rows."""
    started = [r for r in rows if r.status != "skipped"]
    return {
        "cost_per_request": [r.cost for r in started if r.cost is not None],
        "latency_p50_ms": [float(r.latency_ms) for r in rows if r.status == "completed"],
        "failure_rate": [1.0 if r.status == "failed" else 0.0 for r in started],
        "feedback_mean": [r.feedback_score for r in rows if r.feedback_score is not None],
        "rubric_score": list(rubric_scores),
    }


def rubric_result(scores: Sequence[float], sample: int, *, seed: int, confidence: float, resamples: int) -> RubricScore:
    if not scores:
        return RubricScore(sample, 0, None, None, None)
    ci = bootstrap_mean(scores, confidence=confidence, resamples=resamples, seed=seed)
    return RubricScore(sample, len(scores), ci.mean, ci.low, ci.high)


def arm_stats(
    arm: str,
    role: Role,
    model: str | None,
    rows: Sequence[ExperimentRequest],
    rubric: RubricScore | None,
    monthly_requests: float | None,
) -> ArmStats:
    samples = metric_samples(rows)  # the same observations the differences resample
    completed = [r for r in rows if r.status == "completed"]
    failed = sum(1 for r in rows if r.status == "failed")
    cancelled = sum(1 for r in rows if r.status == "cancelled")
    skipped = sum(1 for r in rows if r.status == "skipped")
    started = len(rows) - skipped
    costs = samples["cost_per_request"]
    latencies = samples["latency_p50_ms"]
    feedback = samples["feedback_mean"]
    degraded = sum(1 for r in completed if r.degraded)
    cached = sum(1 for r in completed if r.cached)
    cost_per_request = fmean(costs) if costs else None
    monthly = None if cost_per_request is None or monthly_requests is None else cost_per_request * monthly_requests
    return ArmStats(
        arm=arm,
        role=role,
        model=model,
        requests=len(rows),
        completed=len(completed),
        failed=failed,
        cancelled=cancelled,
        skipped=skipped,
        degraded=degraded,
        cached=cached,
        unpriced=started - len(costs),
        total_cost=sum(costs),
        cost_per_request=cost_per_request,
        latency_p50_ms=percentile(latencies, 50) if latencies else None,
        latency_p95_ms=percentile(latencies, 95) if latencies else None,
        failure_rate=_rate(failed, started),
        cancelled_rate=_rate(cancelled, started),
        degraded_rate=_rate(degraded, len(completed)),
        cached_share=_rate(cached, len(completed)),
        feedback_count=len(feedback),
        feedback_mean=fmean(feedback) if feedback else None,
        rubric=rubric,
        monthly_cost=monthly,
    )


def volume(spec: ExperimentSpec, rows: Sequence[ExperimentRequest], monthly_requests: int | None = None) -> Volume:
    """The monthly volume to project at: the caller's, else the definition's, else the primary
    requests' observed rate (n − 1 gaps over the time from the first to the last) over 30 days."""
    if monthly_requests is not None:
        return Volume(float(monthly_requests), "option", f"{monthly_requests:,} requests a month, as asked")
    if spec.monthly_requests is not None:
        return Volume(float(spec.monthly_requests), "spec", f"{spec.monthly_requests:,} requests a month (definition)")
    times = sorted(r.created_at for r in rows if not r.shadow)
    span = (times[-1] - times[0]).total_seconds() if len(times) >= 2 else 0.0
    if span <= 0:
        return Volume(None, "none", "no volume: give monthly_requests (too few requests to extrapolate a rate)")
    monthly = (len(times) - 1) / span * SECONDS_PER_MONTH
    return Volume(
        monthly,
        "observed",
        f"{monthly:,.0f} requests a month: the observed rate ({len(times)} requests over "
        f"{span / 3600:.1f} h) extrapolated to {DAYS_PER_MONTH} days",
    )


def _roles(spec: ExperimentSpec, rows: Sequence[ExperimentRequest]) -> list[tuple[str, Role, str | None]]:
    """The arms in the definition's order (the first primary arm is the control), then any arm that
    recorded requests but is no longer defined."""
    control = spec.primary_arms[0].name
    out: list[tuple[str, Role, str | None]] = [
        (a.name, "control" if a.name == control else "shadow" if a.shadow else "primary", a.model) for a in spec.arms
    ]
    known = {a.name for a in spec.arms}
    for name in dict.fromkeys(r.arm for r in rows):
        if name not in known:
            out.append((name, "removed", None))
    return out


def build_report(
    name: str,
    spec: ExperimentSpec,
    rows: Sequence[ExperimentRequest],
    *,
    rubric_scores: Mapping[str, Sequence[float]] | None = None,
    rubric_samples: Mapping[str, int] | None = None,
    monthly_requests: int | None = None,
    status: str | None = None,
    chosen_arm: str | None = None,
    paused_arms: Sequence[str] = (),
    seed: int = 0,
    confidence: float = 0.95,
    resamples: int = 2000,
) -> ExperimentReport:
    """The report of `rows` (one experiment's) under `spec`. `rubric_scores`: each arm's graded
    answers' scores (the grading sample's), when the experiment has a grader."""
    by_arm: dict[str, list[ExperimentRequest]] = {}
    for r in rows:
        by_arm.setdefault(r.arm, []).append(r)
    graded = spec.grader is not None and rubric_scores is not None
    scores = rubric_scores or {}
    vol = volume(spec, rows, monthly_requests)
    arms: list[ArmStats] = []
    for arm, role, model in _roles(spec, rows):
        rubric = None
        if graded:
            rubric = rubric_result(
                scores.get(arm, ()),
                (rubric_samples or {}).get(arm, len(scores.get(arm, ()))),
                seed=seed,
                confidence=confidence,
                resamples=resamples,
            )
        arms.append(arm_stats(arm, role, model, by_arm.get(arm, []), rubric, vol.monthly_requests))
    control = spec.primary_arms[0].name
    samples = {a.arm: metric_samples(by_arm.get(a.arm, []), scores.get(a.arm, ())) for a in arms}
    differences = [
        d
        for a in arms
        if a.arm != control
        for m in METRICS
        if (d := difference(a.arm, m, samples[control][m], samples[a.arm][m], seed, confidence, resamples))
    ]
    return ExperimentReport(
        name=name,
        status=status,
        chosen_arm=chosen_arm,
        paused_arms=list(paused_arms),
        models=list(spec.models),
        control=control,
        requests=sum(1 for r in rows if not r.shadow),
        first_at=min((r.created_at for r in rows), default=None),
        last_at=max((r.created_at for r in rows), default=None),
        arms=arms,
        differences=differences,
        volume=vol,
        monthly=monthly_costs(arms, differences, vol),
        grader_model=spec.grader.model if spec.grader else None,
        rubric=list(spec.grader.rubric) if spec.grader else [],
        seed=seed,
        confidence=confidence,
        resamples=resamples,
    )


def difference(
    arm: str,
    metric: Metric,
    control: Sequence[float],
    treatment: Sequence[float],
    seed: int,
    confidence: float,
    resamples: int,
) -> Difference | None:
    """The arm against the control on one metric; None when either has no observation."""
    if not control or not treatment:
        return None
    statistic = STATISTICS[metric]
    ci = bootstrap_difference(control, treatment, statistic, confidence=confidence, resamples=resamples, seed=seed)
    return Difference(
        arm=arm,
        metric=metric,
        value=statistic_value(treatment, statistic),
        control=statistic_value(control, statistic),
        difference=ci.mean,
        ci_low=ci.low,
        ci_high=ci.high,
        n=len(treatment),
        n_control=len(control),
        excludes_zero=ci.low > 0 or ci.high < 0,
    )


def monthly_costs(arms: Sequence[ArmStats], differences: Sequence[Difference], vol: Volume) -> list[MonthlyCost]:
    """Each arm's cost at the volume, and its difference from the control's (the cost/request
    difference and its interval, times the volume)."""
    cost_diff = {d.arm: d for d in differences if d.metric == "cost_per_request"}
    out = []
    for a in arms:
        d = cost_diff.get(a.arm)
        scale = vol.monthly_requests
        out.append(
            MonthlyCost(
                arm=a.arm,
                cost_per_request=a.cost_per_request,
                monthly_cost=a.monthly_cost,
                difference=None if d is None or scale is None else d.difference * scale,
                ci_low=None if d is None or scale is None else d.ci_low * scale,
                ci_high=None if d is None or scale is None else d.ci_high * scale,
            )
        )
    return out
