"""Seeded percentile bootstrap of a mean and of a difference between two groups, and percentiles. Pure
Python: no numpy needed."""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from statistics import fmean


@dataclass(frozen=True)
class Interval:
    mean: float
    low: float
    high: float
    confidence: float = 0.95


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0–100) with linear interpolation between order statistics (numpy's
    default method). Raises ValueError on an empty sequence."""
    if not values:
        raise ValueError("percentile of no values")
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def bootstrap_mean(
    values: Sequence[float], *, confidence: float = 0.95, resamples: int = 2000, seed: int = 0
) -> Interval:
    """Mean and percentile-bootstrap interval of the mean: resample the values (tasks) with
    replacement `resamples` times. Same values and seed → same interval, on every machine."""
    if not values:
        raise ValueError("bootstrap of no values")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be between 0 and 1, not {confidence}")
    data = list(values)
    n = len(data)
    rng = random.Random(seed)
    means = [sum(data[rng.randrange(n)] for _ in range(n)) / n for _ in range(resamples)]
    tail = (1 - confidence) / 2 * 100
    return Interval(fmean(data), percentile(means, tail), percentile(means, 100 - tail), confidence)


def bootstrap_difference(
    control: Sequence[float],
    treatment: Sequence[float],
    statistic: Callable[[Sequence[float]], float],
    *,
    confidence: float = 0.95,
    resamples: int = 2000,
    seed: int = 0,
) -> Interval:
    """statistic(treatment) − statistic(control), with a percentile-bootstrap interval: each group is
    resampled on its own (independent samples, as two arms of an experiment are), `resamples` times.
    `mean` of the result is the observed difference. Same values and seed → same interval."""
    if not control or not treatment:
        raise ValueError("bootstrap of no values")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be between 0 and 1, not {confidence}")
    a, b = list(control), list(treatment)
    rng = random.Random(seed)
    # rng.choices draws a whole resample in one call: several times faster than a randrange loop.
    diffs = [statistic(rng.choices(b, k=len(b))) - statistic(rng.choices(a, k=len(a))) for _ in range(resamples)]
    tail = (1 - confidence) / 2 * 100
    return Interval(statistic(b) - statistic(a), percentile(diffs, tail), percentile(diffs, 100 - tail), confidence)
