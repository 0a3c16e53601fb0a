"""Typed results of a fusion run (the `fusion` object of a response: server/shapes.py)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from panelfuse.pipeline.analysis import Analysis
from panelfuse.pipeline.escalation import EscalationDecision
from panelfuse.pipeline.tally import VoteTally
from panelfuse.providers.base import Usage
from panelfuse.tools.records import Citation, ToolUsage, dedupe_citations, url_annotations

MemberStatus = Literal["ok", "failed", "timeout", "refused", "empty", "cut", "cancelled"]
RunStatus = Literal["running", "completed", "failed", "cancelled"]
DEGRADING = ("failed", "timeout", "refused", "empty")


@dataclass
class CallRecord:
    """One upstream call as it was billed."""

    model: str
    usage: Usage = field(default_factory=Usage)
    cost: float | None = 0.0
    latency_ms: int = 0
    cost_estimated: bool = False  # cut or cancelled: cost reckoned from what streamed


@dataclass
class HedgeRecord:
    """A member's hedged first call (pipeline/hedge.py): a duplicate to `model` started `after_ms` after
    the first call; `won` when its answer is the member's. Both calls are in the member's `calls`."""

    model: str
    after_ms: int
    won: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "after_ms": self.after_ms, "won": self.won}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> HedgeRecord:
        return cls(model=d["model"], after_ms=d.get("after_ms") or 0, won=bool(d.get("won")))


class Billed:
    """What a member or a stage cost: the sum of its calls, plus its search requests."""

    calls: list[CallRecord]
    tools: ToolUsage

    @property
    def usage(self) -> Usage:
        return sum_usage(c.usage for c in self.calls)

    @property
    def cost(self) -> float | None:
        return with_tool_cost(sum_costs(c.cost for c in self.calls), self.tools)


@dataclass
class MemberResult(Billed):
    member: str  # label
    model: str  # the model that answered (a fallback's id when one was used)
    status: MemberStatus = "ok"
    content: str = ""
    requested_model: str = ""
    weight: float | None = None
    error: str | None = None
    status_code: int | None = None
    latency_ms: int = 0
    calls: list[CallRecord] = field(default_factory=list)
    tools: ToolUsage = field(default_factory=ToolUsage)  # every attempt's tool use (all of it is billed)
    citations: list[Citation] = field(default_factory=list)  # sources behind the answer that succeeded
    finish_reason: str | None = None  # of the call that gave the answer (not part of the wire form)
    hedge: HedgeRecord | None = None  # its first call was hedged (FusionSpec.hedge_ms)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> MemberResult:
        """A stored member (to_dict's shape) back as a result, without its calls (not re-billed)."""
        return cls(
            member=d["member"],
            model=d["model"],
            status=d.get("status", "ok"),
            content=d.get("content") or "",
            weight=d.get("weight"),
            error=d.get("error"),
            latency_ms=d.get("latency_ms") or 0,
            citations=[Citation.from_dict(c) for c in d.get("citations") or [] if c.get("url")],
            hedge=HedgeRecord.from_dict(d["hedge"]) if d.get("hedge") else None,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "member": self.member,
            "model": self.model,
            "status": self.status,
            "content": self.content,
            "usage": self.usage.to_dict(),
            "cost": self.cost,
            "cost_estimated": any(c.cost_estimated for c in self.calls),
            "latency_ms": self.latency_ms,
            "error": self.error,
            "weight": self.weight,
            "tools": self.tools.to_dict(),
            "citations": [c.to_dict() for c in self.citations],
            "hedge": self.hedge.to_dict() if self.hedge else None,
        }


@dataclass
class StageResult(Billed):
    """The judge's or synthesizer's part: possibly several calls (fallbacks, a repair retry)."""

    model: str
    content: str = ""
    error: str | None = None
    calls: list[CallRecord] = field(default_factory=list)
    tools: ToolUsage = field(default_factory=ToolUsage)  # the judge's tool use (judge_tools)
    citations: list[Citation] = field(default_factory=list)
    finish_reason: str | None = None  # of the call that succeeded (not part of the wire form)

    @property
    def latency_ms(self) -> int:
        return sum(c.latency_ms for c in self.calls)

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "usage": self.usage.to_dict(),
            "cost": self.cost,
            "latency_ms": self.latency_ms,
            "error": self.error,
            "tools": self.tools.to_dict(),
        }


@dataclass(frozen=True)
class FailedModel:
    """A member that did not answer, and why (cut members are not failures)."""

    member: str
    model: str
    status: MemberStatus
    error: str | None
    status_code: int | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "member": self.member,
            "model": self.model,
            "status": self.status,
            "error": self.error,
            "status_code": self.status_code,
        }


@dataclass(frozen=True)
class BestOfChoice:
    """The member whose answer best-of mode returned verbatim, and the judge's reason."""

    member: str
    model: str
    reason: str

    def to_dict(self) -> dict[str, str]:
        return {"member": self.member, "model": self.model, "reason": self.reason}


def answer_finish(reason: str | None) -> str:
    """The finish_reason of a fusion's answer from the call that wrote it: "length" when max_tokens cut
    it, "stop" otherwise (a completed answer: tool calls and the like stay inside the pipeline)."""
    return "length" if reason in ("length", "max_tokens") else "stop"


def sum_usage(usages: Any) -> Usage:
    total = Usage(cost=None)
    for u in usages:
        total.prompt_tokens += u.prompt_tokens
        total.completion_tokens += u.completion_tokens
    return total


def sum_costs(costs: Any) -> float | None:
    """Sum of known costs; None only when every cost is unknown."""
    known = [c for c in costs if c is not None]
    return sum(known) if known else None


def with_tool_cost(cost: float | None, tools: ToolUsage) -> float | None:
    """A model-call cost plus the search requests' (a zero tool cost leaves an unknown cost unknown)."""
    return sum_costs([cost, tools.cost]) if tools.cost else cost


@dataclass
class FusionResult:
    run_id: str
    preset: str | None
    mode: str
    prompt_version: str
    status: RunStatus = "running"
    content: str = ""
    model: str = ""  # the concrete model that wrote the final answer
    finish_reason: str = "stop"  # why the answer ended: "stop", or "length" when it was cut by max_tokens
    panel: list[MemberResult] = field(default_factory=list)
    analysis: Analysis | None = None
    analysis_repaired: bool = False
    expects_analysis: bool = True  # the mode's: a run without its analysis is degraded
    judge: StageResult | None = None
    synthesizer: StageResult | None = None
    best_of: BestOfChoice | None = None
    error: str | None = None
    stopped_by_max_cost: bool = False
    estimate: float | None = None
    latency_ms: int = 0
    annotations: list[dict[str, Any]] = field(default_factory=list)
    # Mode facts: `escalate`'s decision and the judge call that made it (rule "judge"); `vote`'s tally.
    gate: StageResult | None = None
    escalation: EscalationDecision | None = None
    vote: VoteTally | None = None
    # Served from the response cache (docs/cache.md): no call was made; `cached_from` is the run that paid.
    cached: bool = False
    cached_from: str | None = None

    @property
    def escalated(self) -> bool | None:
        """`escalate`: whether the full panel ran; None in the other modes."""
        return self.escalation.escalated if self.escalation else None

    @property
    def calls(self) -> int:
        """Upstream model calls the run made: every member, fallback, repair retry, tool-loop round,
        judge and synthesizer call (a provider's own retries of one call count once)."""
        return len(self._all_calls())

    @property
    def degraded(self) -> bool:
        member_failed = any(m.status in DEGRADING for m in self.panel)
        analysis_missing = self.expects_analysis and self.analysis is None
        # A completed run that carries an error answered by a fallback path (e.g. synthesis failed).
        return member_failed or analysis_missing or self.stopped_by_max_cost or self.error is not None

    @property
    def failed_models(self) -> list[FailedModel]:
        return [
            FailedModel(m.member, m.model, m.status, m.error, m.status_code)
            for m in self.panel
            if m.status not in ("ok", "cut")  # cancelled members appear when the run itself stopped
        ]

    def _all_calls(self) -> list[tuple[str, str, CallRecord]]:
        calls = [("panel", m.member, c) for m in self.panel for c in m.calls]
        if self.gate:
            calls += [("analysis", "gate", c) for c in self.gate.calls]
        if self.judge:
            calls += [("analysis", "judge", c) for c in self.judge.calls]
        if self.synthesizer:
            calls += [("synthesis", "synthesizer", c) for c in self.synthesizer.calls]
        return calls

    @property
    def usage(self) -> Usage:
        return sum_usage(c.usage for _, _, c in self._all_calls())

    @property
    def tool_usage(self) -> ToolUsage:
        """Tool calls and search requests of the whole run (members and judge)."""
        judges = [s.tools for s in (self.gate, self.judge) if s]
        return ToolUsage.total([*(m.tools for m in self.panel), *judges])

    @property
    def cost(self) -> float | None:
        return self._cost(self.tool_usage)

    def _cost(self, tools: ToolUsage) -> float | None:
        if self.cached:
            return 0.0  # the stored answer's calls were billed to the run that made them
        return with_tool_cost(sum_costs(c.cost for _, _, c in self._all_calls()), tools)

    def cost_details(self, tools: ToolUsage | None = None) -> dict[str, Any]:
        # Stage figures include their search costs (so they sum to `cost`); `tools` says how much of them.
        gate = {"gate": self.gate.cost} if self.gate else {}  # escalate's judge call, when it made one
        return {
            **gate,
            "panel": {m.member: m.cost for m in self.panel},
            "analysis": self.judge.cost if self.judge else None,
            "synthesis": self.synthesizer.cost if self.synthesizer else None,
            "estimated": any(c.cost_estimated for _, _, c in self._all_calls()),
            "tools": {
                "panel": {m.member: m.tools.cost for m in self.panel},
                "analysis": self.judge.tools.cost if self.judge else 0.0,
                "total": (tools or self.tool_usage).cost,
            },
        }

    def usage_dict(self) -> dict[str, Any]:
        tools = self.tool_usage  # summed once for the three figures that show it
        out = self.usage.to_dict()
        out["cost"] = self._cost(tools)
        out["cost_details"] = self.cost_details(tools)
        out["tools"] = tools.to_dict()
        return out

    def citations(self, members: list[MemberResult] | None = None) -> list[Citation]:
        """Sources behind the answer: those of `members` (default: every member that answered) and the
        judge's, each URL once."""
        chosen = [m for m in self.panel if m.status == "ok"] if members is None else members
        judge = self.judge.citations if self.judge else []
        return dedupe_citations([*(c for m in chosen for c in m.citations), *judge])

    def annotate(self, members: list[MemberResult] | None = None) -> None:
        """Set `annotations` (url_citation) from the sources, located in the final content where cited."""
        self.annotations = url_annotations(self.content, self.citations(members))

    def to_dict(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "status": self.status,
            "preset": self.preset,
            "mode": self.mode,
            "prompt_version": self.prompt_version,
            "model": self.model,
            "content": self.content,
            "panel": [m.to_dict() for m in self.panel],
            "analysis": self.analysis.to_dict() if self.analysis else None,
            "analysis_repaired": self.analysis_repaired,
            "judge": self.judge.to_dict() if self.judge else None,
            "synthesizer": self.synthesizer.to_dict() if self.synthesizer else None,
            "best_of": self.best_of.to_dict() if self.best_of else None,
            "failed_models": [f.to_dict() for f in self.failed_models],
            "degraded": self.degraded,
            "stopped_by_max_cost": self.stopped_by_max_cost,
            "usage": self.usage_dict(),
            "estimate": self.estimate,
            "latency_ms": self.latency_ms,
            "error": self.error,
            "annotations": self.annotations,
            "calls": self.calls,
            "escalated": self.escalated,
            "escalation": self.escalation.to_dict() if self.escalation else None,
            "gate": self.gate.to_dict() if self.gate else None,
            "vote": self.vote.to_dict() if self.vote else None,
            "cached": self.cached,
            "cached_from": self.cached_from,
        }
