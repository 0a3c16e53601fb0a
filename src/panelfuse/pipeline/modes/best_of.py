"""`best-of`: the judge picks one member's answer, which is returned verbatim."""

from __future__ import annotations

from collections.abc import Sequence

from panelfuse.pipeline.context import RunContext
from panelfuse.pipeline.judge import run_best_of
from panelfuse.pipeline.modes.base import ModeStrategy
from panelfuse.pipeline.result import MemberResult
from panelfuse.spec import FusionSpec

BEST_OF_MAX_TOKENS = 200  # a label and a short reason


class BestOf(ModeStrategy):
    name = "best-of"
    judge_gets_tools = False
    panel_share = 0.7  # the judge only names a label

    def judge_max_tokens(self, spec: FusionSpec) -> int:
        return min(BEST_OF_MAX_TOKENS, spec.max_tokens)

    async def answer(self, run: RunContext, ok: Sequence[MemberResult]) -> None:
        run.calls.guard.later_stages = 0.0
        run.calls.stage_share = self.judge_share
        run.result.judge, run.result.best_of = await run_best_of(run, ok)
        winner = next(m for m in ok if m.member == run.result.best_of.member)
        run.answer_verbatim(winner)
