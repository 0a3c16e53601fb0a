"""What a mode is: the facts the plan and estimate read, and what runs after the panel."""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from panelfuse.spec import FusionSpec

if TYPE_CHECKING:
    from panelfuse.pipeline.context import RunContext
    from panelfuse.pipeline.result import MemberResult


@dataclass(frozen=True)
class GateCall:
    """A judge call a mode may make before its main stages (`escalate`'s decision): the estimate counts
    it. `answers`: how many answers it reads."""

    answers: int
    max_tokens: int
    repair_retry: bool


class ModeStrategy(abc.ABC):
    """One mode of a fusion run. Subclasses set the class facts and implement `answer`."""

    name: ClassVar[str]
    first_member_only: ClassVar[bool] = False  # only the first member runs (its answer is the answer)
    uses_judge: ClassVar[bool] = True
    judge_gets_tools: ClassVar[bool] = True  # the spec's judge_tools are offered to the judge
    judge_repair_retry: ClassVar[bool] = False  # an unreadable analysis gets one repair retry
    uses_synthesizer: ClassVar[bool] = False
    expects_analysis: ClassVar[bool] = False  # a run without the analysis is degraded
    # How far into the run's deadline (deadline_ms) each stage may go, from the run's start: the panel
    # ends by `panel_share` of it, the judge by `judge_share`, the synthesizer by the whole of it. A
    # stage that finishes early leaves its time to the next.
    panel_share: ClassVar[float] = 1.0
    judge_share: ClassVar[float] = 1.0

    def judge_max_tokens(self, spec: FusionSpec) -> int:
        return spec.max_tokens

    def judge_wanted(self, spec: FusionSpec) -> bool:
        """Whether this spec's runs may call the judge (the plan resolves its chain only then)."""
        return self.uses_judge

    def first_stage(self, spec: FusionSpec) -> int | None:
        """How many members (the first ones) answer before `answer` runs; None: the whole panel. A mode
        with a first stage runs the others itself (panel.run_panel) when it decides to."""
        return None

    def gate_call(self, spec: FusionSpec) -> GateCall | None:
        return None

    def member_max_tokens(self, spec: FusionSpec) -> int:
        """Each member call's limit (the answer's limit where a member's answer is the answer)."""
        return spec.max_tokens

    def answer_model(self, spec: FusionSpec) -> str:
        """The model expected to write the answer (for stream chunks sent before it is known)."""
        return spec.judge.model

    def quorum(self, spec: FusionSpec) -> int:
        """The members that must answer: the spec's `quorum`, else one (as on OpenRouter, where one
        successful panelist is enough; a run with failed members is still `degraded`)."""
        return spec.quorum if spec.quorum is not None else 1

    @abc.abstractmethod
    async def answer(self, run: RunContext, ok: Sequence[MemberResult]) -> None:
        """After the panel: fill `run.result` (content, model, analysis…) from the members that
        answered, or raise RunFailure with the reason."""
