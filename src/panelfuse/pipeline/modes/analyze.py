"""`analyze`: panel and analysis only, no answer (what the fusion server tool hands its outer model)."""

from __future__ import annotations

from collections.abc import Sequence

from panelfuse.pipeline.context import RunContext
from panelfuse.pipeline.judge import run_analysis
from panelfuse.pipeline.modes.base import ModeStrategy
from panelfuse.pipeline.result import MemberResult


class Analyze(ModeStrategy):
    name = "analyze"
    judge_repair_retry = True
    expects_analysis = True
    panel_share = 0.6

    async def answer(self, run: RunContext, ok: Sequence[MemberResult]) -> None:
        run.calls.guard.later_stages = 0.0
        run.calls.stage_share = self.judge_share
        outcome = await run_analysis(run, ok)
        run.result.judge, run.result.analysis = outcome.stage, outcome.analysis
        run.result.analysis_repaired = outcome.repaired
        run.result.model = outcome.stage.model
