"""The event log's held deltas: a run nobody reads live logs its text joined, not one event per read."""

from __future__ import annotations

from panelfuse.pipeline.events import AnalysisStarted, EventLog, FinalDelta, PanelCompleted, PanelDelta, PanelStarted


def test_held_deltas_are_logged_joined_before_the_next_other_event():
    seen = []
    log = EventLog("run_x", listener=seen.append, hold_deltas=True)
    log.emit(PanelStarted(member="A", model="m"))
    for piece in ("a", "b", "c"):
        log.emit(PanelDelta(member="A", text=piece))
        log.emit(PanelDelta(member="B", text=piece.upper()))
    assert [e.type for e in log.events] == ["panel.started"]  # nothing yet
    log.emit(PanelCompleted(member="A", model="m", content="abc", usage={}, cost=0.0, latency_ms=1))
    log.emit(FinalDelta(text="answer"))
    log.emit(AnalysisStarted(model="j"))  # names no member: everything held is logged first
    assert [(e.type, e.data.get("member"), e.data.get("text")) for e in log.events] == [
        ("panel.started", "A", None),
        ("panel.delta", "A", "abc"),  # only A's: B's text waits for B's next event
        ("panel.completed", "A", None),
        ("panel.delta", "B", "ABC"),
        ("final.delta", None, "answer"),
        ("analysis.started", None, None),
    ]
    assert [e.seq for e in log.events] == [1, 2, 3, 4, 5, 6] and seen == log.events


def test_release_logs_what_was_held_then_every_delta_as_it_comes():
    log = EventLog("run_x", hold_deltas=True)
    log.emit(FinalDelta(text="Hel"))
    log.emit(FinalDelta(text="lo"))
    log.release()
    log.emit(FinalDelta(text=" world"))
    assert [e.data["text"] for e in log.events] == ["Hello", " world"]


def test_without_holding_every_delta_is_its_own_event():
    log = EventLog("run_x")
    log.emit(FinalDelta(text="a"))
    log.emit(FinalDelta(text="b"))
    assert [e.data["text"] for e in log.events] == ["a", "b"]
