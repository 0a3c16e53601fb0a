"""DRACO's scoring arithmetic, pure: verdicts in, scores out.

For one task and pass, over the criteria the grader answered (a grader failure is excluded and
shows in the coverage):

    score = clamp(Σ_{MET} w / Σ_{w>0} w, 0, 1)          a MET negative criterion subtracts
    score = clamp(1 + Σ_{MET} w / Σ |w|, 0, 1)          when the rubric has no positive weight
    pass rate = share of criteria where a positive one is MET or a negative one is UNMET

Section scores use the same formula over the section's criteria. Passes are averaged. This is the
aggregation of the `rubric` package's PerCriterionGrader (normalize=True), which the DRACO paper
uses; tests/test_evals_scoring.py feeds the same verdicts to both and requires equal scores.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from statistics import fmean
from typing import Literal

Verdict = Literal["MET", "UNMET"]


def as_verdict(value: object) -> Verdict | None:
    """`value` if it is exactly one of the two verdicts, else None."""
    if value == "MET":
        return "MET"
    if value == "UNMET":
        return "UNMET"
    return None


@dataclass(frozen=True)
class CriterionVerdict:
    criterion_id: str
    section: str
    weight: float
    verdict: Verdict | None  # None: the grader failed on this criterion (excluded from the score)


@dataclass
class TaskScore:
    """One task's result: for one pass, or averaged over passes (then `passes` > 1)."""

    score: float | None  # None: nothing was graded
    pass_rate: float | None
    sections: dict[str, float] = field(default_factory=dict)
    graded: int = 0  # criteria with a verdict
    criteria: int = 0  # criteria asked about
    passes: int = 1
    answer_failed: int = 0  # passes whose answer failed (scored 0)

    @property
    def coverage(self) -> float:
        return self.graded / self.criteria if self.criteria else 0.0


def _clamp(x: float) -> float:
    return max(0.0, min(1.0, x))


def rubric_score(items: Iterable[tuple[float, bool]]) -> float | None:
    """Normalised score of (weight, met) pairs; None when there are none."""
    pairs = list(items)
    if not pairs:
        return None
    positive = sum(w for w, _ in pairs if w > 0)
    negative = sum(-w for w, _ in pairs if w < 0)
    raw = sum(w for w, met in pairs if met)
    if positive > 0:
        return _clamp(raw / positive)
    if negative > 0:
        # Only penalties: start from 1 and let each MET penalty take its share away.
        return _clamp(1.0 + raw / negative)
    return 0.0  # only zero weights: nothing to earn (as the rubric package does)


def pass_rate(items: Iterable[tuple[float, bool]]) -> float | None:
    """Share of criteria passed: positive MET or negative UNMET. None when there are none."""
    pairs = list(items)
    if not pairs:
        return None
    passed = sum(1 for w, met in pairs if (w > 0 and met) or (w < 0 and not met))
    return passed / len(pairs)


def score_pass(verdicts: Sequence[CriterionVerdict]) -> TaskScore:
    """Score one pass of one task from its criterion verdicts (None verdicts excluded)."""
    graded = [v for v in verdicts if v.verdict is not None]
    pairs = [(v.weight, v.verdict == "MET") for v in graded]
    sections: dict[str, float] = {}
    for section in dict.fromkeys(v.section for v in graded):
        s = rubric_score((v.weight, v.verdict == "MET") for v in graded if v.section == section)
        if s is not None:
            sections[section] = s
    return TaskScore(rubric_score(pairs), pass_rate(pairs), sections, len(graded), len(verdicts))


def failed_answer(criteria: Sequence[tuple[str, float]]) -> TaskScore:
    """A pass whose answer failed: 0 on everything (so a failing configuration is not flattered)."""
    sections = {s: 0.0 for s in dict.fromkeys(sec for sec, _ in criteria)}
    return TaskScore(0.0, 0.0, sections, 0, len(criteria), 1, 1)


def average_passes(scores: Sequence[TaskScore]) -> TaskScore:
    """The mean over passes of each score that exists; counts summed."""
    if not scores:
        return TaskScore(None, None, passes=0)
    values = [s.score for s in scores if s.score is not None]
    rates = [s.pass_rate for s in scores if s.pass_rate is not None]
    sections: dict[str, list[float]] = {}
    for s in scores:
        for key, value in s.sections.items():
            sections.setdefault(key, []).append(value)
    return TaskScore(
        fmean(values) if values else None,
        fmean(rates) if rates else None,
        {k: fmean(v) for k, v in sections.items()},
        sum(s.graded for s in scores),
        sum(s.criteria for s in scores),
        sum(s.passes for s in scores),
        sum(s.answer_failed for s in scores),
    )


def win_tie_loss(a: dict[str, float], b: dict[str, float], margin: float = 1e-9) -> tuple[int, int, int]:
    """Per-task comparison of two configurations' task scores, over the tasks both have.
    A difference within `margin` is a tie."""
    wins = ties = losses = 0
    for task_id in a.keys() & b.keys():
        diff = a[task_id] - b[task_id]
        if diff > margin:
            wins += 1
        elif diff < -margin:
            losses += 1
        else:
            ties += 1
    return wins, ties, losses
