"""`judge-writes`: one judge call writes the analysis, then the answer."""

from __future__ import annotations

from collections.abc import Sequence

from panelfuse.pipeline.context import RunContext, RunFailure
from panelfuse.pipeline.judge import run_judge_writes
from panelfuse.pipeline.modes.base import ModeStrategy
from panelfuse.pipeline.result import MemberResult, answer_finish
from panelfuse.spec import FusionSpec


class JudgeWrites(ModeStrategy):
    name = "judge-writes"
    expects_analysis = True
    panel_share = 0.5

    def judge_max_tokens(self, spec: FusionSpec) -> int:
        return spec.max_tokens + spec.answer_max_tokens  # the analysis, then the answer, in one call

    async def answer(self, run: RunContext, ok: Sequence[MemberResult]) -> None:
        result = run.result
        run.calls.guard.later_stages = 0.0
        run.calls.stage_share = self.judge_share
        outcome = await run_judge_writes(run, ok, sources=result.citations(list(ok)))
        result.judge, result.analysis, result.analysis_repaired = outcome.stage, outcome.analysis, outcome.repaired
        answer = outcome.answer or ""
        if not answer.strip():
            raise RunFailure(f"the judge wrote no answer: {outcome.stage.error or 'empty output'}")
        result.content, result.model = answer, outcome.stage.model
        result.finish_reason = answer_finish(outcome.stage.finish_reason)
        result.annotate(list(ok))
