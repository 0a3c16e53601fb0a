"""Progress events: one vocabulary for the Python API, CLI, SSE and chatroom (DESIGN.md).

Each event carries run_id, a monotonic seq and its stage; consumers can replay after any seq.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

Stage = Literal["panel", "analysis", "synthesis", "run"]

EVENT_TYPES = (
    "run.started",
    "panel.started",
    "panel.delta",
    "tool.called",
    "panel.fallback",
    "panel.completed",
    "panel.failed",
    "panel.cut",
    "analysis.started",
    "analysis.fallback",
    "analysis.completed",
    "analysis.failed",
    "final.delta",
    "final.completed",
    "run.completed",
    "run.failed",
    "run.cancelled",
)


def stage_of(event_type: str) -> Stage:
    head = event_type.split(".", 1)[0]
    if head in ("panel", "tool"):
        return "panel"
    if head == "analysis":
        return "analysis"
    if head == "final":
        return "synthesis"
    return "run"


@dataclass(frozen=True)
class Event:
    run_id: str
    seq: int
    type: str
    data: dict[str, Any]
    stage: Stage
    ts: float = field(default_factory=time.time)

    def to_dict(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "seq": self.seq, "type": self.type, "stage": self.stage, **self.data}


class EventLog:
    """Numbers and keeps a run's events; every consumer (stream, store, CLI) reads from here."""

    def __init__(self, run_id: str, listener: Callable[[Event], None] | None = None) -> None:
        self.run_id = run_id
        self.events: list[Event] = []
        self.listener = listener

    def emit(self, event_type: str, **data: Any) -> Event:
        if event_type not in EVENT_TYPES:
            raise ValueError(f"unknown event type {event_type}")
        stage = stage_of(event_type)
        if event_type == "tool.called" and data.get("member") == "judge":
            stage = "analysis"  # the judge's own tool calls belong to the analysis stage
        ev = Event(self.run_id, len(self.events) + 1, event_type, data, stage)
        self.events.append(ev)
        if self.listener is not None:
            self.listener(ev)
        return ev
