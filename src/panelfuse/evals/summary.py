"""From stored answers and grades to per-configuration numbers: scores with a bootstrap interval,
section scores, cost, tokens, latency, failures, coverage, and pairwise win/tie/loss. Pure."""

from __future__ import annotations

from dataclasses import dataclass, field
from statistics import fmean

from panelfuse.evals.bootstrap import bootstrap_mean, percentile
from panelfuse.evals.configs import EvalConfig
from panelfuse.evals.runner import EvalData
from panelfuse.evals.scoring import (
    CriterionVerdict,
    TaskScore,
    as_verdict,
    average_passes,
    failed_answer,
    score_pass,
    win_tie_loss,
)
from panelfuse.evals.tasks import Task


@dataclass
class ConfigSummary:
    label: str
    description: str
    mean: float | None  # mean over tasks of the task score (itself the mean over passes)
    ci_low: float | None
    ci_high: float | None
    pass_rate: float | None
    sections: dict[str, float]
    cost_per_task: float | None  # mean answer cost (USD) of one task, one pass; None: no price known
    unpriced_answers: int
    tokens_per_task: float | None
    latency_p50_ms: float | None
    latency_p90_ms: float | None
    answers: int  # answers stored (of tasks × passes)
    failures: int  # failed answers
    graded: int
    criteria: int  # criteria asked about, over the successful answers
    grader_failures: int
    grading_cost: float | None
    task_scores: dict[str, TaskScore] = field(default_factory=dict)

    @property
    def coverage(self) -> float:
        return self.graded / self.criteria if self.criteria else 0.0

    @property
    def scored_tasks(self) -> dict[str, float]:
        return {t: s.score for t, s in self.task_scores.items() if s.score is not None}


@dataclass
class EvalSummary:
    name: str
    grader: str
    passes: int
    tasks: int
    sections: list[str]  # section ids in first-seen order
    configs: list[ConfigSummary]
    pairwise: dict[tuple[str, str], tuple[int, int, int]]  # (a, b) → a's wins, ties, losses against b
    confidence: float = 0.95
    seed: int = 0


def _task_score(data: EvalData, config: EvalConfig, task: Task) -> TaskScore | None:
    per_pass: list[TaskScore] = []
    for p in range(data.passes):
        answer = data.answers.get((config.label, task.id, p))
        if answer is None:
            continue  # not answered (yet): the eval was interrupted
        if answer.status != "ok":
            per_pass.append(failed_answer([(c.section, c.weight) for c in task.criteria]))
            continue
        verdicts = []
        for c in task.criteria:
            g = data.grades.get((config.label, task.id, p, c.id))
            verdict = as_verdict(g.verdict) if g is not None else None
            verdicts.append(CriterionVerdict(c.id, c.section, c.weight, verdict))
        per_pass.append(score_pass(verdicts))
    return average_passes(per_pass) if per_pass else None


def summarize_config(data: EvalData, config: EvalConfig, *, seed: int = 0, confidence: float = 0.95) -> ConfigSummary:
    task_scores = {t.id: s for t in data.tasks if (s := _task_score(data, config, t)) is not None}
    scored = [s.score for s in task_scores.values() if s.score is not None]
    interval = bootstrap_mean(scored, seed=seed, confidence=confidence) if scored else None
    rates = [s.pass_rate for s in task_scores.values() if s.pass_rate is not None]
    sections: dict[str, list[float]] = {}
    for s in task_scores.values():
        for key, value in s.sections.items():
            sections.setdefault(key, []).append(value)

    task_ids = {t.id for t in data.tasks}
    answers = [
        a
        for a in data.answers.values()
        if a.config_label == config.label and a.task_id in task_ids and a.pass_index < data.passes
    ]
    ok = [a for a in answers if a.status == "ok"]
    costs = [a.cost for a in answers if a.cost is not None]
    criteria_of = {t.id: {c.id for c in t.criteria} for t in data.tasks}
    grades = [
        g
        for g in data.grades.values()
        if g.config_label == config.label
        and g.task_id in task_ids
        and g.criterion_id in criteria_of[g.task_id]
        and g.pass_index < data.passes
    ]
    grading_costs = [g.cost for g in grades if g.cost is not None]
    latencies = [float(a.latency_ms) for a in ok]
    ok_keys = {(a.task_id, a.pass_index) for a in ok}
    asked = sum(len(criteria_of[t]) for t, _ in ok_keys)
    return ConfigSummary(
        label=config.label,
        description=config.description,
        mean=interval.mean if interval else None,
        ci_low=interval.low if interval else None,
        ci_high=interval.high if interval else None,
        pass_rate=fmean(rates) if rates else None,
        sections={k: fmean(v) for k, v in sections.items()},
        cost_per_task=fmean(costs) if costs else None,
        unpriced_answers=sum(1 for a in ok if a.cost is None),  # a failed call's cost is often unknown: not counted
        tokens_per_task=fmean(a.prompt_tokens + a.completion_tokens for a in answers) if answers else None,
        latency_p50_ms=percentile(latencies, 50) if latencies else None,
        latency_p90_ms=percentile(latencies, 90) if latencies else None,
        answers=len(answers),
        failures=len(answers) - len(ok),
        graded=sum(1 for g in grades if g.verdict is not None and (g.task_id, g.pass_index) in ok_keys),
        criteria=asked,
        grader_failures=sum(1 for g in grades if g.verdict is None),
        grading_cost=sum(grading_costs) if grading_costs else None,
        task_scores=task_scores,
    )


def summarize(data: EvalData, *, seed: int = 0, confidence: float = 0.95) -> EvalSummary:
    configs = [summarize_config(data, c, seed=seed, confidence=confidence) for c in data.configs]
    pairwise = {
        (a.label, b.label): win_tie_loss(a.scored_tasks, b.scored_tasks)
        for a in configs
        for b in configs
        if a.label != b.label
    }
    sections = list(dict.fromkeys(c.section for t in data.tasks for c in t.criteria))
    return EvalSummary(
        data.name, data.grader, data.passes, len(data.tasks), sections, configs, pairwise, confidence, seed
    )
