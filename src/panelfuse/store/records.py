"""Typed records returned by RunStore, and the list_runs paging cursor."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from panelfuse.store.errors import InvalidCursorError

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_CURSOR = re.compile(r"^(\d{1,20}):(.+)$")


@dataclass(frozen=True, slots=True)
class RunRecord:
    id: str
    status: str
    created_at: datetime
    updated_at: datetime
    preset: str | None
    mode: str
    request_model: str
    spec: dict[str, Any]
    request: dict[str, Any]
    result: dict[str, Any] | None
    content: str
    usage: dict[str, Any] | None
    cost: float | None
    degraded: bool
    error: str | None
    latency_ms: int
    prompt_version: str
    key_id: str | None
    background: bool
    parent_run_id: str | None
    feedback_score: float | None
    feedback_comment: str | None
    owner_pid: int | None
    host: str | None
    purged_at: datetime | None  # set when purge_content blanked request/result/content

    def to_dict(self) -> dict[str, Any]:
        """JSON-able: timestamps as ISO 8601 UTC strings. Which process drove the run (pid, host name)
        is the store's own crash-recovery bookkeeping, never shown to callers."""
        out = asdict(self)
        del out["owner_pid"], out["host"]
        for key in ("created_at", "updated_at", "purged_at"):
            if out[key] is not None:
                out[key] = out[key].isoformat()
        return out


@dataclass(frozen=True, slots=True)
class EventRecord:
    run_id: str
    seq: int
    type: str
    stage: str
    data: dict[str, Any]
    ts: float

    def to_dict(self) -> dict[str, Any]:
        """The event as streamed (same shape as pipeline Event.to_dict(), plus ts)."""
        return {
            "run_id": self.run_id,
            "seq": self.seq,
            "type": self.type,
            "stage": self.stage,
            "ts": self.ts,
            **self.data,
        }


@dataclass(frozen=True, slots=True)
class RunPage:
    items: list[RunRecord] = field(default_factory=list)
    next_cursor: str | None = None  # pass as list_runs(before=...) for the next (older) page

    @property
    def has_more(self) -> bool:
        return self.next_cursor is not None

    def to_dict(self) -> dict[str, Any]:
        return {"items": [r.to_dict() for r in self.items], "next_cursor": self.next_cursor, "has_more": self.has_more}


def encode_cursor(created_at: datetime, run_id: str) -> str:
    """`<microseconds since epoch>:<run id>` — exact (no float), URL-safe, readable in logs."""
    micros = (created_at.astimezone(UTC) - _EPOCH) // timedelta(microseconds=1)
    return f"{micros}:{run_id}"


def decode_cursor(cursor: str) -> tuple[datetime, str] | None:
    """(created_at, run id) of a cursor; None when `cursor` is not one (then it may be a bare run id)."""
    m = _CURSOR.match(cursor)
    if not m:
        return None
    try:
        return _EPOCH + timedelta(microseconds=int(m[1])), m[2]
    except OverflowError:
        raise InvalidCursorError(f"invalid cursor {cursor!r}") from None
