"""`single`: the first member only; its answer, streamed as it comes, is the answer."""

from __future__ import annotations

from collections.abc import Sequence

from panelfuse.pipeline.context import RunContext
from panelfuse.pipeline.modes.base import ModeStrategy
from panelfuse.pipeline.result import MemberResult, answer_finish
from panelfuse.spec import FusionSpec


class Single(ModeStrategy):
    name = "single"
    first_member_only = True
    uses_judge = False
    judge_gets_tools = False

    def answer_model(self, spec: FusionSpec) -> str:
        return spec.members[0].model

    def quorum(self, spec: FusionSpec) -> int:
        return 1

    def member_max_tokens(self, spec: FusionSpec) -> int:
        return spec.answer_max_tokens

    async def answer(self, run: RunContext, ok: Sequence[MemberResult]) -> None:
        # The member's text already streamed as the answer (see panel.run_member).
        run.result.content, run.result.model = ok[0].content, ok[0].model
        run.result.finish_reason = answer_finish(ok[0].finish_reason)
        run.result.annotate(list(ok[:1]))
