"""`synthesize` (the default): panel → analysis → a synthesizer writes the answer from both."""

from __future__ import annotations

from collections.abc import Sequence

from panelfuse.pipeline.context import RunContext, RunFailure
from panelfuse.pipeline.judge import run_analysis
from panelfuse.pipeline.modes.base import ModeStrategy
from panelfuse.pipeline.result import MemberResult, answer_finish
from panelfuse.pipeline.synthesis import run_synthesis
from panelfuse.spec import FusionSpec


class Synthesize(ModeStrategy):
    name = "synthesize"
    judge_repair_retry = True
    uses_synthesizer = True
    expects_analysis = True
    panel_share = 0.5
    judge_share = 0.75

    def answer_model(self, spec: FusionSpec) -> str:
        return spec.synthesizer_model

    async def answer(self, run: RunContext, ok: Sequence[MemberResult]) -> None:
        result, guard = run.result, run.calls.guard
        guard.later_stages = run.plan.estimate.by_stage().get("synthesis", 0.0)
        run.calls.stage_share = self.judge_share
        outcome = await run_analysis(run, ok)
        result.judge, result.analysis, result.analysis_repaired = outcome.stage, outcome.analysis, outcome.repaired
        guard.later_stages = 0.0
        run.calls.stage_share = 1.0
        synth = await run_synthesis(run, ok, result.analysis, sources=result.citations(list(ok)))
        result.synthesizer = synth
        if synth.error is None:
            result.content, result.model = synth.content, synth.model
            result.finish_reason = answer_finish(synth.finish_reason)
            result.annotate(list(ok))
            return
        if synth.content or any(c.cost_estimated for c in synth.calls):
            raise RunFailure(f"the synthesizer failed mid-answer: {synth.error}")
        # Nothing streamed: answer with the most trusted member's own answer, and say so.
        chosen = max(ok, key=lambda m: m.weight or 1.0)
        result.stopped_by_max_cost = "max_cost" in synth.error
        result.error = f"synthesis failed ({synth.error}); the answer is member {chosen.member}'s, verbatim"
        run.answer_verbatim(chosen)
