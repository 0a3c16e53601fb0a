"""The grading sample of an experiment: which completed answers of each arm are graded against the
experiment's rubric, grading them with the evals' grader (one call per criterion), and each answer's
score from the stored grades.

Grades live in the evals' `eval_grades` table under the eval name `experiment:NAME`, the arm as the
configuration label and the request id as the task, so a rerun grades nothing twice. A criterion's id
is a hash of its text: changing the rubric's wording grades the new criterion, never reuses a grade
given to another. A grade counts only when the grader model and prompt version match the current ones.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from panelfuse.evals.grading import Grader
from panelfuse.evals.prompts import GRADER_PROMPT_VERSION
from panelfuse.evals.scoring import CriterionVerdict, as_verdict, score_pass
from panelfuse.evals.store import EvalStore, GradeKey, GradeRow
from panelfuse.evals.tasks import Criterion, Task
from panelfuse.experiment_spec import ExperimentSpec
from panelfuse.store.database import Database
from panelfuse.store.experiments import ExperimentRequest

SECTION = "rubric"
PASS = 0  # one grading per answer


def eval_name(experiment: str) -> str:
    return f"experiment:{experiment}"


def criterion_id(requirement: str) -> str:
    return "c-" + hashlib.sha256(requirement.encode()).hexdigest()[:16]


def criteria(rubric: Sequence[str]) -> tuple[Criterion, ...]:
    """The rubric's items as criteria: each a requirement of weight 1, so an answer's score is the
    share of the items it meets (DRACO's normalised score)."""
    return tuple(Criterion(criterion_id(text), SECTION, 1.0, text) for text in rubric)


def _rank(experiment: str, row_id: str) -> str:
    return hashlib.sha256(f"{experiment}\0{row_id}".encode()).hexdigest()


def sample(experiment: str, rows: Sequence[ExperimentRequest], arm: str, size: int) -> list[ExperimentRequest]:
    """The arm's completed answers with text, the `size` lowest by a hash of their id: the same rows on
    every run, and a row stays in the sample unless a newer one ranks below it."""
    eligible = [r for r in rows if r.arm == arm and r.status == "completed" and r.answer]
    return sorted(eligible, key=lambda r: _rank(experiment, r.id))[:size]


def arm_names(spec: ExperimentSpec, rows: Sequence[ExperimentRequest]) -> list[str]:
    """The definition's arms, then any arm that recorded requests and is no longer defined."""
    return list(dict.fromkeys([a.name for a in spec.arms] + [r.arm for r in rows]))


def usable(grade: GradeRow | None, grader_model: str) -> bool:
    """A stored grade that stands: the same grader and prompt version, and a verdict."""
    return (
        grade is not None
        and grade.verdict is not None
        and grade.grader_model == grader_model
        and grade.grader_version == GRADER_PROMPT_VERSION
    )


def answer_score(
    row: ExperimentRequest, rubric: Sequence[Criterion], grades: Mapping[GradeKey, GradeRow], grader_model: str
) -> float | None:
    """The answer's score once every criterion has a usable grade; None before."""
    verdicts = []
    for c in rubric:
        grade = grades.get((row.arm, row.id, PASS, c.id))
        verdict = as_verdict(grade.verdict) if grade is not None and usable(grade, grader_model) else None
        if verdict is None:
            return None
        verdicts.append(CriterionVerdict(c.id, c.section, c.weight, verdict))
    return score_pass(verdicts).score


@dataclass(frozen=True)
class ArmScores:
    """Per arm: the sample's size and the scores of its graded answers."""

    samples: dict[str, int]
    scores: dict[str, list[float]]


def arm_scores(
    experiment: str,
    spec: ExperimentSpec,
    rows: Sequence[ExperimentRequest],
    grades: Mapping[GradeKey, GradeRow],
    grader_model: str,
) -> ArmScores:
    assert spec.grader is not None
    rubric = criteria(spec.grader.rubric)
    samples: dict[str, int] = {}
    scores: dict[str, list[float]] = {}
    for arm in arm_names(spec, rows):
        chosen = sample(experiment, rows, arm, spec.grader.sample)
        samples[arm] = len(chosen)
        scores[arm] = [s for r in chosen if (s := answer_score(r, rubric, grades, grader_model)) is not None]
    return ArmScores(samples, scores)


async def stored_scores(
    database: Database, experiment: str, spec: ExperimentSpec, rows: Sequence[ExperimentRequest], grader_model: str
) -> ArmScores:
    """The scores the stored grades give (no grader call)."""
    grades = await EvalStore(database).grades(eval_name(experiment))
    return arm_scores(experiment, spec, rows, grades, grader_model)


@dataclass(frozen=True)
class GradingRun:
    calls: int  # criteria graded now (each one grader request, more with retries)
    failures: int  # criteria the grader could not settle (retried on the next run)
    cost: float | None


async def grade_sample(
    database: Database,
    grader: Grader,
    experiment: str,
    spec: ExperimentSpec,
    rows: Sequence[ExperimentRequest],
    *,
    concurrency: int = 4,
) -> GradingRun:
    """Grade what the sample lacks: each (answer, criterion) without a usable stored grade, each grade
    stored as soon as it exists (an interruption loses only the calls in flight)."""
    if spec.grader is None:
        return GradingRun(0, 0, None)
    store = EvalStore(database)
    name = eval_name(experiment)
    grades = await store.grades(name)
    rubric = criteria(spec.grader.rubric)
    todo = [
        (row, c)
        for arm in arm_names(spec, rows)
        for row in sample(experiment, rows, arm, spec.grader.sample)
        for c in rubric
        if not usable(grades.get((row.arm, row.id, PASS, c.id)), grader.qualified)
    ]
    gate = asyncio.Semaphore(max(1, concurrency))
    costs: list[float] = []
    failures = 0

    async def one(row: ExperimentRequest, criterion: Criterion) -> None:
        nonlocal failures
        task = Task(row.id, "experiment", row.question or "", rubric, ((SECTION, "Rubric"),))
        async with gate:
            out = await grader.grade(task, row.answer or "", criterion)
        await store.put_grade(
            name,
            GradeRow(
                config_label=row.arm,
                task_id=row.id,
                pass_index=PASS,
                criterion_id=criterion.id,
                verdict=out.verdict,
                explanation=out.explanation,
                grader_model=out.grader,
                grader_version=out.version,
                attempts=out.attempts,
                error=out.error,
                prompt_tokens=out.usage.prompt_tokens,
                completion_tokens=out.usage.completion_tokens,
                cost=out.cost,
                latency_ms=out.latency_ms,
            ),
        )
        if out.cost is not None:
            costs.append(out.cost)
        if out.verdict is None:
            failures += 1

    await asyncio.gather(*(one(row, c) for row, c in todo))
    return GradingRun(len(todo), failures, sum(costs) if costs else None)
