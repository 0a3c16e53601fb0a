"""Progress events: one vocabulary for the Python API, CLI, SSE and chatroom (docs/architecture.md).

Each event is a typed payload (one class per event type, below: the catalog) numbered by the run's
EventLog with a monotonic seq and its stage; consumers can replay after any seq. `Event.data` is the
payload's wire form (the dict sent in SSE and stored), computed from the payload.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, Protocol

Stage = Literal["panel", "analysis", "synthesis", "run"]


@dataclass(frozen=True, slots=True)
class Payload:
    TYPE: ClassVar[str]
    # Wire names that differ from the field names (`from` is a keyword).
    RENAMED: ClassVar[dict[str, str]] = {}

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value is None and f.metadata.get("omit_none"):
                continue
            out[self.RENAMED.get(f.name, f.name)] = value
        return out


def _optional() -> Any:
    """A field left out of the wire form when None (it was absent before it was typed)."""
    return field(default=None, metadata={"omit_none": True})


# ---- the catalog ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RunStarted(Payload):
    TYPE = "run.started"
    spec: dict[str, Any]
    prompt_version: str


@dataclass(frozen=True, slots=True)
class PanelStarted(Payload):
    TYPE = "panel.started"
    member: str
    model: str


@dataclass(frozen=True, slots=True)
class PanelDelta(Payload):
    TYPE = "panel.delta"
    member: str
    text: str


@dataclass(frozen=True, slots=True)
class ToolCalled(Payload):
    TYPE = "tool.called"
    member: str  # a member's label, or "judge"
    tool: str
    args: Any
    refused: str | None = _optional()


@dataclass(frozen=True, slots=True)
class PanelCompleted(Payload):
    TYPE = "panel.completed"
    member: str
    model: str
    content: str
    usage: dict[str, Any]
    cost: float | None
    latency_ms: int


@dataclass(frozen=True, slots=True)
class PanelCut(Payload):
    TYPE = "panel.cut"
    member: str
    model: str


@dataclass(frozen=True, slots=True)
class PanelHedged(Payload):
    """A member's first call had not answered `after_ms` after it started: a duplicate call to `to`
    races it (pipeline/hedge.py). The member's text keeps coming from `from` meanwhile."""

    TYPE = "panel.hedged"
    RENAMED: ClassVar[dict[str, str]] = {"from_model": "from", "to_model": "to"}
    member: str
    from_model: str
    to_model: str
    after_ms: int


@dataclass(frozen=True, slots=True)
class PanelHedgeWon(Payload):
    """The duplicate answered first and `from` was cancelled: the member's text so far is replaced by
    the duplicate's, which follows in full (as after a `panel.fallback`)."""

    TYPE = "panel.hedge_won"
    RENAMED: ClassVar[dict[str, str]] = {"from_model": "from", "to_model": "to"}
    member: str
    from_model: str
    to_model: str


@dataclass(frozen=True, slots=True)
class Fallback(Payload):
    """A call in a chain failed and the next model takes over (every stage: one shape)."""

    RENAMED: ClassVar[dict[str, str]] = {"from_model": "from", "to_model": "to"}
    from_model: str
    to_model: str
    reason: str
    member: str | None = _optional()


@dataclass(frozen=True, slots=True)
class Failed(Payload):
    """The last model of a chain failed: the stage has no result from it (every stage: one shape)."""

    error: str
    model: str | None = _optional()
    status: str | None = _optional()
    member: str | None = _optional()


@dataclass(frozen=True, slots=True)
class PanelFallback(Fallback):
    TYPE = "panel.fallback"


@dataclass(frozen=True, slots=True)
class PanelFailed(Failed):
    TYPE = "panel.failed"


@dataclass(frozen=True, slots=True)
class AnalysisStarted(Payload):
    TYPE = "analysis.started"
    model: str


@dataclass(frozen=True, slots=True)
class AnalysisFallback(Fallback):
    TYPE = "analysis.fallback"


@dataclass(frozen=True, slots=True)
class AnalysisCompleted(Payload):
    TYPE = "analysis.completed"
    analysis: dict[str, Any]
    usage: dict[str, Any]
    cost: float | None


@dataclass(frozen=True, slots=True)
class AnalysisFailed(Failed):
    TYPE = "analysis.failed"


@dataclass(frozen=True, slots=True)
class EscalationDecided(Payload):
    """`escalate`: whether the first stage's answers were enough (escalated=False: the first member's
    answer is the answer) or the rest of the panel, the analysis and the synthesizer run."""

    TYPE = "escalation.decided"
    escalated: bool
    rule: str
    reason: str
    first_stage: list[str]  # the labels of the members asked first
    score: float | None = _optional()  # rule "overlap": the similarity


@dataclass(frozen=True, slots=True)
class VoteTallied(Payload):
    """`vote`: the samples grouped by answer, the winner and whether the tie-break chose it."""

    TYPE = "vote.tallied"
    reading: str
    winner: str
    tie: bool
    groups: list[dict[str, Any]]


@dataclass(frozen=True, slots=True)
class SynthesisFallback(Fallback):
    TYPE = "synthesis.fallback"


@dataclass(frozen=True, slots=True)
class SynthesisFailed(Failed):
    TYPE = "synthesis.failed"


@dataclass(frozen=True, slots=True)
class FinalDelta(Payload):
    TYPE = "final.delta"
    text: str


@dataclass(frozen=True, slots=True)
class FinalCompleted(Payload):
    TYPE = "final.completed"
    content: str
    annotations: list[dict[str, Any]]


@dataclass(frozen=True, slots=True)
class RunCompleted(Payload):
    TYPE = "run.completed"
    usage: dict[str, Any]
    cost: float | None
    degraded: bool


@dataclass(frozen=True, slots=True)
class RunFailed(Payload):
    TYPE = "run.failed"
    error: str
    failed_models: list[dict[str, Any]]


@dataclass(frozen=True, slots=True)
class RunCancelled(Payload):
    TYPE = "run.cancelled"
    reason: str


CATALOG: dict[str, type[Payload]] = {
    cls.TYPE: cls
    for cls in (
        RunStarted,
        PanelStarted,
        PanelDelta,
        ToolCalled,
        PanelFallback,
        PanelCompleted,
        PanelFailed,
        PanelCut,
        PanelHedged,
        PanelHedgeWon,
        AnalysisStarted,
        AnalysisFallback,
        AnalysisCompleted,
        AnalysisFailed,
        EscalationDecided,
        VoteTallied,
        SynthesisFallback,
        SynthesisFailed,
        FinalDelta,
        FinalCompleted,
        RunCompleted,
        RunFailed,
        RunCancelled,
    )
}
EVENT_TYPES = tuple(CATALOG)
TERMINAL = ("run.completed", "run.failed", "run.cancelled")


def stage_of(event_type: str) -> Stage:
    head = event_type.split(".", 1)[0]
    if head in ("panel", "tool"):
        return "panel"
    if head in ("analysis", "escalation", "vote"):  # the decisions made from the answers, by rule or judge
        return "analysis"
    if head in ("final", "synthesis"):
        return "synthesis"
    return "run"


@dataclass(frozen=True, slots=True)
class Event:
    run_id: str
    seq: int
    payload: Payload
    stage: Stage
    ts: float = field(default_factory=time.time)
    # The payload's wire form, computed once: the stream, the store and the metrics all read it.
    data: dict[str, Any] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "data", self.payload.to_dict())

    @property
    def type(self) -> str:
        return self.payload.TYPE

    def to_dict(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "seq": self.seq, "type": self.type, "stage": self.stage, **self.data}


class Emitter(Protocol):
    """What takes events: the run's EventLog, or a hedged call's lane that may hold them back."""

    def emit(self, payload: Payload) -> None: ...


class EventLog:
    """Numbers and keeps one run's events: the one list every consumer (stream, store, CLI) reads.

    With `hold_deltas` (nobody reads the run live: a client that did not ask for a stream, and no
    follower), the text deltas of each member and of the answer are kept back and joined, then logged
    as one event just before that member's next event (or, for the answer and at stage ends, the next
    event that names no member): the log still holds every piece of text, in order, in one event per
    member instead of one per read. `release()` (a follower arrives) logs what was held and stops
    holding."""

    def __init__(
        self, run_id: str, listener: Callable[[Event], None] | None = None, *, hold_deltas: bool = False
    ) -> None:
        self.run_id = run_id
        self.events: list[Event] = []
        self.listener = listener
        self.hold_deltas = hold_deltas
        self._held: dict[tuple[str, str], list[str]] = {}  # (type, member) → text pieces, in arrival order

    def emit(self, payload: Payload) -> None:
        if isinstance(payload, PanelDelta | FinalDelta):
            if self.hold_deltas:
                key = (payload.TYPE, payload.member if isinstance(payload, PanelDelta) else "")
                self._held.setdefault(key, []).append(payload.text)
                return
        elif self._held:
            member = getattr(payload, "member", None)
            self._log_held(None if member is None else (PanelDelta.TYPE, member))
        self._log(payload)

    def release(self) -> None:
        """Log the held deltas now, and every later one as it comes."""
        self.hold_deltas = False
        self._log_held()

    def _log_held(self, only: tuple[str, str] | None = None) -> None:
        """Log the held text: all of it, or only that of the key `only`."""
        if only is None:
            held, self._held = self._held, {}
        else:
            held = {only: self._held.pop(only)} if only in self._held else {}
        for (kind, member), pieces in held.items():
            text = "".join(pieces)
            self._log(PanelDelta(member=member, text=text) if kind == PanelDelta.TYPE else FinalDelta(text=text))

    def _log(self, payload: Payload) -> None:
        stage = stage_of(payload.TYPE)
        if isinstance(payload, ToolCalled) and payload.member == "judge":
            stage = "analysis"  # the judge's own tool calls belong to the analysis stage
        ev = Event(self.run_id, len(self.events) + 1, payload, stage)
        self.events.append(ev)
        if self.listener is not None:
            self.listener(ev)
