"""What the stages of one run share: its plan, the call context, the event log and the result."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from panelfuse.pipeline.calls import CallContext, SharedRetrieval
from panelfuse.pipeline.events import EventLog, FinalDelta
from panelfuse.pipeline.result import FusionResult, MemberResult

if TYPE_CHECKING:
    from panelfuse.pipeline.plan import RunPlan


class RunFailure(Exception):
    """The run failed for a reason the caller is told (quorum lost, no answer, max_cost…)."""


@dataclass
class RunContext:
    plan: RunPlan
    calls: CallContext
    log: EventLog
    result: FusionResult
    retrieval: SharedRetrieval | None = None  # the panel's pre-retrieval, made once per run

    def answer_verbatim(self, member: MemberResult) -> None:
        """A member's own answer is the final answer (best-of, or a failed synthesis)."""
        self.result.content, self.result.model = member.content, member.model
        self.result.annotate([member])
        self.log.emit(FinalDelta(text=member.content))
