"""`escalate`'s decision: the rules that read the first stage's answers, as pure functions, and the
decision's typed record (in the result and the `escalation.decided` event).

Rules (spec.EscalationSpec.rule):

- "judge": a judge call on the first stage. Two answers: the judge's analysis (the usual prompt and
  schema); escalate when it lists any contradiction. One answer: a strict verdict
  (prompts.VERDICT_SYSTEM, verdicts.parse_verdict); escalate unless it is "sure".
- "overlap": escalate when agreement.overlap (token-set Jaccard of content words) of the two answers
  is below the threshold (default 0.5). No model call.
- "final-answer": escalate when the two answers' final_answer readings differ. No model call.

Whatever the rule, the run escalates when the first stage gave fewer answers than it asked for (a
member failed: nothing to compare, or a sign of trouble) or when the judge's reading failed (its
chain ended without a readable output): when in doubt, run the full panel.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from panelfuse.pipeline.agreement import overlap
from panelfuse.pipeline.analysis import Analysis
from panelfuse.pipeline.final_answer import final_answer
from panelfuse.pipeline.verdicts import Verdict


@dataclass(frozen=True)
class Decision:
    escalate: bool
    reason: str
    score: float | None = None


@dataclass(frozen=True)
class EscalationDecision:
    escalated: bool
    rule: str
    reason: str
    first_stage: tuple[str, ...]  # labels of the members asked first
    score: float | None = None  # rule "overlap": the similarity

    def to_dict(self) -> dict[str, Any]:
        return {
            "escalated": self.escalated,
            "rule": self.rule,
            "reason": self.reason,
            "first_stage": list(self.first_stage),
            "score": self.score,
        }


def by_overlap(a: str, b: str, threshold: float) -> Decision:
    score = overlap(a, b)
    if score < threshold:
        return Decision(True, f"the answers overlap {score:.2f} < threshold {threshold:g}", score)
    return Decision(False, f"the answers overlap {score:.2f} >= threshold {threshold:g}", score)


def by_final_answer(a: str, b: str) -> Decision:
    ra, rb = final_answer(a), final_answer(b)
    shown_a, shown_b = (str(r) if r else "(none)" for r in (ra, rb))
    if ra is None or rb is None or ra != rb:
        return Decision(True, f"the final answers differ: {shown_a!r} vs {shown_b!r}")
    return Decision(False, f"the final answers agree: {shown_a!r}")


def by_analysis(analysis: Analysis | None, error: str | None) -> Decision:
    if analysis is None:
        return Decision(True, f"the judge's analysis failed ({error or 'no output'})")
    if analysis.contradictions:
        topics = "; ".join(c.topic for c in analysis.contradictions[:3])
        return Decision(True, f"the judge found {len(analysis.contradictions)} contradiction(s): {topics}")
    return Decision(False, "the judge found no contradiction")


def by_verdict(verdict: Verdict | None, error: str | None) -> Decision:
    if verdict is None:
        return Decision(True, f"the judge's verdict failed ({error or 'no output'})")
    if not verdict.sure:
        return Decision(True, f"the judge is unsure: {verdict.reason}".rstrip(": "))
    return Decision(False, f"the judge is sure: {verdict.reason}".rstrip(": "))


def by_rule(rule: str, answers: Sequence[str], threshold: float) -> Decision:
    """The rules that need no model call, on the first stage's two answers."""
    a, b = answers
    return by_overlap(a, b, threshold) if rule == "overlap" else by_final_answer(a, b)
