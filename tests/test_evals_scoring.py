"""DRACO scoring arithmetic, equality with the `rubric` package's own aggregation, the bootstrap."""

from __future__ import annotations

import pytest

from panelfuse.evals.bootstrap import bootstrap_mean, percentile
from panelfuse.evals.scoring import (
    CriterionVerdict,
    average_passes,
    failed_answer,
    pass_rate,
    rubric_score,
    score_pass,
    win_tie_loss,
)


def verdicts(*items: tuple[float, str | None], section: str = "s") -> list[CriterionVerdict]:
    return [CriterionVerdict(f"c{i}", section, w, v) for i, (w, v) in enumerate(items)]  # type: ignore[arg-type]


def test_mixed_rubric_score_and_pass_rate() -> None:
    # +2 MET, +1 UNMET, +1 MET, −2 MET: (2 + 1 − 2) / 4 = 0.25; passed: c0, c2 → 0.5
    s = score_pass(verdicts((2, "MET"), (1, "UNMET"), (1, "MET"), (-2, "MET")))
    assert s.score == pytest.approx(0.25)
    assert s.pass_rate == pytest.approx(0.5)
    assert (s.graded, s.criteria, s.coverage) == (4, 4, 1.0)


def test_all_negatives_met_score_zero_and_clamped() -> None:
    assert rubric_score([(2, False), (-1, True), (-3, True)]) == 0.0  # −4 / 2 clamps to 0
    assert pass_rate([(2, False), (-1, True), (-3, True)]) == 0.0


def test_no_positive_weight_rule() -> None:
    # clamp(1 + Σ MET weights / Σ |weights|): −1 MET of −1, −3 → 1 − 1/4
    assert rubric_score([(-1, True), (-3, False)]) == pytest.approx(0.75)
    assert rubric_score([(-1, False), (-3, False)]) == 1.0
    assert rubric_score([(-1, True), (-3, True)]) == 0.0
    assert pass_rate([(-1, True), (-3, False)]) == 0.5


def test_edge_cases() -> None:
    assert rubric_score([]) is None and pass_rate([]) is None
    assert rubric_score([(0, True)]) == 0.0
    assert rubric_score([(1, True), (1, True)]) == 1.0


def test_grader_failures_are_excluded_and_shown_in_coverage() -> None:
    s = score_pass(verdicts((2, "MET"), (2, None), (-1, "UNMET")))
    assert s.score == pytest.approx(1.0)  # the failed criterion drops out of both sums
    assert (s.graded, s.criteria) == (2, 3)
    assert s.coverage == pytest.approx(2 / 3)
    assert score_pass(verdicts((1, None))).score is None


def test_section_scores_use_the_same_formula() -> None:
    vs = [
        CriterionVerdict("a", "factual-accuracy", 3, "MET"),
        CriterionVerdict("b", "factual-accuracy", 1, "UNMET"),
        CriterionVerdict("c", "factual-accuracy", -2, "MET"),
        CriterionVerdict("d", "citation-quality", -1, "UNMET"),  # a section of penalties only
        CriterionVerdict("e", "presentation-quality", 1, "MET"),
    ]
    s = score_pass(vs)
    assert s.sections == pytest.approx({"factual-accuracy": 0.25, "citation-quality": 1.0, "presentation-quality": 1.0})
    assert s.score == pytest.approx((3 - 2 + 1) / 5)


def test_passes_are_averaged_and_failed_answers_score_zero() -> None:
    p1 = score_pass(verdicts((1, "MET"), (1, "MET")))
    p2 = score_pass(verdicts((1, "MET"), (1, "UNMET")))
    p3 = failed_answer([("s", 1), ("s", 1)])
    avg = average_passes([p1, p2, p3])
    assert avg.score == pytest.approx((1 + 0.5 + 0) / 3)
    assert avg.sections == pytest.approx({"s": 0.5})
    assert (avg.passes, avg.answer_failed, avg.graded, avg.criteria) == (3, 1, 4, 6)


def test_win_tie_loss_over_common_tasks() -> None:
    a = {"t1": 0.5, "t2": 0.5, "t3": 0.1, "only-a": 1.0}
    b = {"t1": 0.4, "t2": 0.5, "t3": 0.2, "only-b": 0.0}
    assert win_tie_loss(a, b) == (1, 1, 1)
    assert win_tie_loss(b, a) == (1, 1, 1)


# ---- the rubric package (DRACO's grading framework) ------------------------------------------

CASES = [
    [(2, "MET"), (1, "UNMET"), (1, "MET"), (-2, "MET")],
    [(5, "MET"), (3, "MET"), (-10, "MET")],
    [(5, "MET"), (3, "MET"), (-1, "UNMET")],
    [(4, "UNMET"), (2, "UNMET"), (-3, "MET")],
    [(-2, "MET"), (-1, "UNMET"), (-5, "UNMET")],
    [(-2, "MET"), (-1, "MET")],
    [(-2, "UNMET"), (-1, "UNMET")],
    [(1, "MET")],
    [(3, "MET"), (2, "UNMET"), (2, "MET"), (1, "UNMET"), (-1, "MET"), (-4, "UNMET"), (2, "MET")],
]


async def test_equal_to_the_rubric_package_aggregation() -> None:
    pytest.importorskip("rubric")
    from rubric import CriterionReport
    from rubric.autograders import PerCriterionGrader

    async def never(system_prompt: str, user_prompt: str, **kw):  # aggregation only: no call is made
        raise AssertionError("not called")

    grader = PerCriterionGrader(generate_fn=never)
    for case in CASES:
        reports = [
            CriterionReport(weight=w, requirement=f"r{i}", verdict=v, reason="")  # type: ignore[arg-type]
            for i, (w, v) in enumerate(case)
        ]
        theirs = await grader.aggregate(reports, normalize=True)
        ours = score_pass(verdicts(*case))
        assert ours.score == pytest.approx(theirs.score, abs=1e-12), case


async def test_equal_to_the_rubric_package_end_to_end() -> None:
    """Through rubric's own Rubric.grade with a scripted generate_fn: its protocol also keeps the
    weight out of the grader's prompt, and the scores agree with ours."""
    pytest.importorskip("rubric")
    from rubric import PerCriterionOutput, Rubric
    from rubric.autograders import PerCriterionGrader

    case = CASES[-1]
    verdict_of = {f"requirement number {i}": v for i, (_, v) in enumerate(case)}
    prompts: list[str] = []

    async def scripted(system_prompt: str, user_prompt: str, **kw) -> PerCriterionOutput:
        prompts.append(user_prompt)
        key = next(k for k in verdict_of if k in user_prompt)
        return PerCriterionOutput(criterion_status=verdict_of[key], explanation="scripted")  # type: ignore[arg-type]

    rubric = Rubric.from_dict(
        [{"weight": w, "requirement": f"requirement number {i}"} for i, (w, _) in enumerate(case)]
    )
    report = await rubric.grade("an answer", autograder=PerCriterionGrader(generate_fn=scripted), query="q")
    assert len(prompts) == len(case)
    assert score_pass(verdicts(*case)).score == pytest.approx(report.score, abs=1e-12)
    # DRACO's pass rate (the paper's definition, computed on rubric's per-criterion report)
    passed = sum(
        1
        for c in report.report or []
        if (c.weight > 0 and c.verdict == "MET") or (c.weight < 0 and c.verdict == "UNMET")
    )
    assert pass_rate([(w, v == "MET") for w, v in case]) == pytest.approx(passed / len(case))


# ---- bootstrap --------------------------------------------------------------------------------


def test_bootstrap_interval_is_seeded_and_brackets_the_mean() -> None:
    values = [0.1, 0.4, 0.35, 0.8, 0.55, 0.6, 0.2, 0.9, 0.45, 0.5]
    a = bootstrap_mean(values, seed=7)
    b = bootstrap_mean(values, seed=7)
    c = bootstrap_mean(values, seed=8)
    assert a == b
    assert (c.low, c.high) != (a.low, a.high)
    assert a.mean == pytest.approx(0.485)
    assert a.low < a.mean < a.high
    assert 0.3 < a.low < 0.45 and 0.52 < a.high < 0.66
    wider = bootstrap_mean(values, seed=7, confidence=0.99)
    assert wider.low <= a.low and wider.high >= a.high


def test_bootstrap_regression_values_for_a_fixed_seed() -> None:
    # Pinned: a change of resampling code would silently change every published interval.
    iv = bootstrap_mean([0.0, 0.25, 0.5, 0.75, 1.0], seed=0, resamples=1000)
    assert (round(iv.low, 4), round(iv.high, 4)) == (0.2, 0.8)


def test_bootstrap_of_constant_values_and_errors() -> None:
    iv = bootstrap_mean([0.5, 0.5, 0.5], seed=1)
    assert (iv.low, iv.mean, iv.high) == (0.5, 0.5, 0.5)
    with pytest.raises(ValueError):
        bootstrap_mean([])
    with pytest.raises(ValueError):
        bootstrap_mean([1.0], confidence=1.5)


def test_percentile_matches_linear_interpolation() -> None:
    assert percentile([1, 2, 3, 4], 50) == 2.5
    assert percentile([10, 20, 30, 40, 50], 90) == pytest.approx(46.0)
    assert percentile([7], 90) == 7
    np = pytest.importorskip("numpy")
    data = [0.3, 0.9, 0.1, 0.75, 0.5, 0.42, 0.66]
    for q in (2.5, 50, 90, 97.5):
        assert percentile(data, q) == pytest.approx(float(np.percentile(data, q)))
