"""A stored answer served again as a run (the response cache, docs/cache.md): the result rebuilt from
the run that paid for it, and a stream that replays it as a fusion's events without calling anyone.

The replayed run's events are those of a fusion's last stage (run.started, the answer as final.delta,
final.completed, run.completed with cost 0), so every reader of a live run (the chat stream, the
Responses and Messages translations, MCP's progress) takes it unchanged.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from panelfuse.pipeline.analysis import Analysis
from panelfuse.pipeline.escalation import EscalationDecision
from panelfuse.pipeline.events import FinalCompleted, FinalDelta, RunCompleted, RunStarted
from panelfuse.pipeline.modes import mode_for
from panelfuse.pipeline.plan import RunPlan
from panelfuse.pipeline.prompts import PROMPT_VERSION
from panelfuse.pipeline.result import BestOfChoice, FusionResult, MemberResult, StageResult
from panelfuse.pipeline.run import Fusion, FusionStream
from panelfuse.pipeline.tally import VoteGroup, VoteTally
from panelfuse.spec import FusionSpec


def replayed_result(
    stored: Mapping[str, Any], *, run_id: str, spec: FusionSpec, source_run_id: str, finish_reason: str = "stop"
) -> FusionResult:
    """The result of a cache hit: the stored run's answer, panel answers, analysis and choice, with no
    calls (so no usage and cost 0), marked `cached` and naming the run it came from; `running` until
    its ReplayStream has emitted it. Pure."""
    analysis = None
    if isinstance(stored.get("analysis"), Mapping):
        try:
            analysis = Analysis.model_validate(stored["analysis"])
        except ValidationError:
            analysis = None  # written by an older version: the answer stands without it
    return FusionResult(
        run_id=run_id,
        preset=spec.preset,
        mode=spec.mode,
        prompt_version=PROMPT_VERSION,
        content=str(stored.get("content") or ""),
        model=str(stored.get("model") or ""),
        finish_reason=finish_reason,
        panel=[MemberResult.from_dict(dict(m)) for m in stored.get("panel") or [] if isinstance(m, Mapping)],
        analysis=analysis,
        analysis_repaired=bool(stored.get("analysis_repaired")),
        # The stored run was complete (only such runs are cached): a hit is not degraded for lack of a part.
        expects_analysis=analysis is not None and mode_for(spec.mode).expects_analysis,
        judge=_stage(stored.get("judge")),
        synthesizer=_stage(stored.get("synthesizer")),
        best_of=_best_of(stored.get("best_of")),
        annotations=list(stored.get("annotations") or []),
        gate=_stage(stored.get("gate")),
        escalation=_escalation(stored.get("escalation")),
        vote=_vote(stored.get("vote")),
        cached=True,
        cached_from=source_run_id,
    )


def _stage(stored: Any) -> StageResult | None:
    if not isinstance(stored, Mapping) or not stored.get("model"):
        return None
    return StageResult(model=str(stored["model"]))


def _best_of(stored: Any) -> BestOfChoice | None:
    if not isinstance(stored, Mapping):
        return None
    return BestOfChoice(str(stored.get("member", "")), str(stored.get("model", "")), str(stored.get("reason", "")))


def _escalation(stored: Any) -> EscalationDecision | None:
    if not isinstance(stored, Mapping):
        return None
    try:
        return EscalationDecision(
            escalated=bool(stored["escalated"]),
            rule=str(stored["rule"]),
            reason=str(stored["reason"]),
            first_stage=tuple(stored.get("first_stage") or ()),
            score=stored.get("score"),
        )
    except (KeyError, TypeError):
        return None  # written by another version: the answer stands without it


def _vote(stored: Any) -> VoteTally | None:
    if not isinstance(stored, Mapping):
        return None
    try:
        groups = tuple(
            VoteGroup(answer=str(g["answer"]), members=tuple(g["members"]), weight=float(g["weight"]))
            for g in stored["groups"]
        )
        return VoteTally(reading=str(stored["reading"]), groups=groups, tie=bool(stored["tie"])) if groups else None
    except (KeyError, TypeError, ValueError):
        return None


class ReplayStream(FusionStream):
    """A run whose outcome is known before it starts: `result` (from `replayed_result`) is emitted as
    a completed fusion's last events. Nothing is called; cancelling it is as for any stream."""

    def __init__(self, fusion: Fusion, plan: RunPlan, answer: FusionResult, *, hold_deltas: bool = False) -> None:
        super().__init__(fusion, plan, answer.run_id, None, hold_deltas=hold_deltas)
        self.result = answer

    async def _execute(self) -> None:
        result, log = self.result, self.log
        started = time.monotonic()
        log.emit(RunStarted(spec=self.spec.model_dump(mode="json"), prompt_version=PROMPT_VERSION))
        if result.content:
            log.emit(FinalDelta(text=result.content))
        result.status = "completed"
        result.latency_ms = int((time.monotonic() - started) * 1000)
        log.emit(FinalCompleted(content=result.content, annotations=result.annotations))
        log.emit(RunCompleted(usage=result.usage_dict(), cost=result.cost, degraded=result.degraded))
