"""`vote` (self-consistency): the members are samples (the same model may sit on the panel several
times, with its own seed and temperature); the answer is the majority's, returned verbatim, with no
synthesis call.

Answers are grouped by the final-answer normaliser's reading (pipeline/final_answer.py), or, with
`vote.reading = "judge"`, by one judge call that groups equivalent answers (strict JSON; should it
fail, the normaliser's reading is used and the run says so in `error`). Ranking and the tie-break:
pipeline/tally.py (score = summed weights, then votes, then the earliest member in panel order).
"""

from __future__ import annotations

from collections.abc import Sequence

from panelfuse.pipeline.context import RunContext
from panelfuse.pipeline.events import VoteTallied
from panelfuse.pipeline.final_answer import final_answer
from panelfuse.pipeline.judge_readings import run_grouping
from panelfuse.pipeline.modes.base import ModeStrategy
from panelfuse.pipeline.result import MemberResult, answer_finish
from panelfuse.pipeline.tally import group_by_reading, tally
from panelfuse.spec import FusionSpec

GROUPS_MAX_TOKENS = 200  # at most eight labels in a few lists


class Vote(ModeStrategy):
    name = "vote"
    judge_gets_tools = False
    panel_share = 0.8  # the judge, when it reads, only groups labels

    def judge_wanted(self, spec: FusionSpec) -> bool:
        return spec.vote.reading == "judge"

    def judge_max_tokens(self, spec: FusionSpec) -> int:
        return min(GROUPS_MAX_TOKENS, spec.max_tokens)

    def answer_model(self, spec: FusionSpec) -> str:
        return spec.members[0].model

    async def answer(self, run: RunContext, ok: Sequence[MemberResult]) -> None:
        result, spec = run.result, run.plan.spec
        order = [m.member for m in ok]
        readings = {m.member: str(final_answer(m.content) or "") for m in ok}
        groups, reading = group_by_reading(readings, order), "normalise"
        if spec.vote.reading == "judge" and len(ok) > 1:  # one answer needs no grouping
            run.calls.guard.later_stages = 0.0
            run.calls.stage_share = self.judge_share
            judged = await run_grouping(run, ok, self.judge_max_tokens(spec))
            result.judge = judged.stage
            if judged.value is None:
                result.error = f"the judge's grouping failed ({judged.stage.error}); the normaliser's reading was used"
            else:
                groups, reading = judged.value, "judge"
        counted = tally(groups, readings, order, {m.member: m.weight for m in ok}, reading)
        result.vote = counted
        run.log.emit(
            VoteTallied(
                reading=reading, winner=counted.winner, tie=counted.tie, groups=[g.to_dict() for g in counted.groups]
            )
        )
        winner = next(m for m in ok if m.member == counted.winner)
        run.answer_verbatim(winner)
        result.finish_reason = answer_finish(winner.finish_reason)
