"""`escalate`: a cheap first stage (the first 1 or 2 members); the rest of the panel, the analysis and
the synthesizer only when the first stage disagrees or is unsure (the rules: pipeline/escalation.py).

Not escalated: the first member's answer is the answer, verbatim, and no synthesis call is made (with
rule "judge" on two answers, the judge's analysis of them is the run's analysis). Escalated: the rest
of the panel answers (the first stage's answers are kept, not asked again), then the judge and the
synthesizer run over every answer as in `synthesize`. The plan and its worst case count that full path.
A re-synthesis (a stored panel, reused whole) goes straight to the full path.
"""

from __future__ import annotations

from collections.abc import Sequence

from panelfuse.pipeline.context import RunContext, RunFailure
from panelfuse.pipeline.escalation import Decision, EscalationDecision, by_analysis, by_rule, by_verdict
from panelfuse.pipeline.estimate import worst_case_of
from panelfuse.pipeline.events import EscalationDecided
from panelfuse.pipeline.judge import run_analysis
from panelfuse.pipeline.judge_readings import run_verdict
from panelfuse.pipeline.modes.base import GateCall
from panelfuse.pipeline.modes.synthesize import Synthesize
from panelfuse.pipeline.panel import QuorumError, run_panel
from panelfuse.pipeline.result import MemberResult, answer_finish
from panelfuse.spec import FusionSpec

VERDICT_MAX_TOKENS = 200  # a word and a sentence
# Shares of the run's deadline (see ModeStrategy), cumulative: first stage, decision, the rest of the
# panel (calls as long as the first stage's: as much time), the analysis; the synthesizer has the rest.
FIRST_STAGE_SHARE, GATE_SHARE, REST_SHARE = 0.35, 0.45, 0.7


class Escalate(Synthesize):
    name = "escalate"
    expects_analysis = False  # until the run escalates: then the full path's analysis is expected
    panel_share = FIRST_STAGE_SHARE
    judge_share = 0.85

    def first_stage(self, spec: FusionSpec) -> int:
        return spec.escalation.first_stage

    def answer_model(self, spec: FusionSpec) -> str:
        return spec.members[0].model  # the answer when the run does not escalate (the common case, hopefully)

    def gate_call(self, spec: FusionSpec) -> GateCall | None:
        esc = spec.escalation
        if esc.rule != "judge":
            return None
        if esc.first_stage == 1:
            return GateCall(1, min(VERDICT_MAX_TOKENS, spec.max_tokens), repair_retry=False)
        return GateCall(2, spec.max_tokens, repair_retry=True)

    async def answer(self, run: RunContext, ok: Sequence[MemberResult]) -> None:
        result, plan = run.result, run.plan
        if plan.reuse_panel is not None:
            result.expects_analysis = True
            await super().answer(run, ok)
            return
        first = tuple(m.label for m in plan.first_stage())
        decision = await self._decide(run, ok, len(first))
        esc = plan.spec.escalation
        result.escalation = EscalationDecision(decision.escalate, esc.rule, decision.reason, first, decision.score)
        run.log.emit(
            EscalationDecided(
                escalated=decision.escalate,
                rule=esc.rule,
                reason=decision.reason,
                first_stage=list(first),
                score=decision.score,
            )
        )
        if not decision.escalate:
            run.answer_verbatim(ok[0])  # every first-stage member answered: ok[0] is the first member
            result.finish_reason = answer_finish(ok[0].finish_reason)
            return
        result.expects_analysis = True
        if result.gate is not None and result.analysis is not None:
            result.analysis = None  # the first stage's analysis: the full panel's replaces it
        rest = plan.later_stage()
        if rest:
            run.calls.stage_share = REST_SHARE
            later = worst_case_of(plan.estimate, lambda c: c.stage == "synthesis" or c.who == "judge")
            run.calls.guard.later_stages = later
            try:
                # The run's quorum counts every answer: the first stage's already count.
                await run_panel(run, into=result.panel, members=rest, quorum=max(0, plan.quorum - len(ok)))
            except QuorumError as exc:
                raise RunFailure(str(exc)) from exc
        answered = [m for m in result.panel if m.status == "ok"]
        if not answered:
            raise RunFailure("no member of the panel answered")
        await super().answer(run, answered)

    async def _decide(self, run: RunContext, ok: Sequence[MemberResult], asked: int) -> Decision:
        if len(ok) < asked:
            return Decision(True, f"{asked - len(ok)} of the {asked} first-stage member(s) did not answer")
        esc = run.plan.spec.escalation
        if esc.rule != "judge":
            return by_rule(esc.rule, [m.content for m in ok], esc.overlap_threshold)
        gate_done = {m.member for m in ok} | {"retrieval", "gate"}
        run.calls.stage_share = GATE_SHARE
        run.calls.guard.later_stages = worst_case_of(run.plan.estimate, lambda c: c.who not in gate_done)
        gate = self.gate_call(run.plan.spec)
        assert gate is not None
        if asked == 1:
            verdict = await run_verdict(run, ok[0], gate.max_tokens)
            run.result.gate = verdict.stage
            return by_verdict(verdict.value, verdict.stage.error)
        outcome = await run_analysis(run, ok)
        run.result.gate = outcome.stage
        run.result.analysis, run.result.analysis_repaired = outcome.analysis, outcome.repaired
        return by_analysis(outcome.analysis, outcome.stage.error)
