"""What the run store reads from an event, and the run_events row it writes for one.

The store does not import the pipeline: events are anything with the StoredEvent fields (the
pipeline's `Event`, an `EventRecord`) or plain mappings.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import orjson
import sqlalchemy as sa

from panelfuse.store.engine import json_dumps


class StoredEvent(Protocol):
    """What append_events reads from an event object (pipeline `Event` and `EventRecord` both fit)."""

    @property
    def run_id(self) -> str: ...
    @property
    def seq(self) -> int: ...
    @property
    def type(self) -> str: ...
    @property
    def stage(self) -> str: ...
    @property
    def data(self) -> Mapping[str, Any]: ...
    @property
    def ts(self) -> float: ...


def event_row(run_id: str, ev: StoredEvent | Mapping[str, Any]) -> dict[str, Any]:
    """The run_events row of one event; ValueError if it is malformed or names another run."""
    get = ev.get if isinstance(ev, Mapping) else (lambda k, d=None: getattr(ev, k, d))
    ev_run = get("run_id")
    if ev_run is not None and ev_run != run_id:
        raise ValueError(f"event for run {ev_run!r} appended to run {run_id!r}")
    etype = get("type")
    seq = get("seq")
    if not isinstance(etype, str) or not isinstance(seq, int):
        raise ValueError(f"event needs an int seq and a str type, got seq={seq!r} type={etype!r}")
    ts = get("ts")
    return {
        "run_id": run_id,
        "seq": seq,
        "type": etype,
        "stage": get("stage") or _stage_of(etype),
        "data": dict(get("data") or {}),
        "ts": float(ts) if ts is not None else time.time(),
    }


# On SQLite a batch of rows is one statement: the rows travel as one JSON array, which json_each
# expands. sqlite3's executemany steps once per row and lets go of the GIL around each step; in the
# writer thread, beside a busy event loop, each step then waited up to the 5 ms switch interval to
# get it back: 500 rows took 5 s beside a spinning thread, against 35 ms as one statement
# (docs/performance.md, item 15). `data` travels as its JSON text, stored as it is.
SQLITE_INSERT_EVENTS = sa.text(
    "INSERT INTO run_events (run_id, seq, type, stage, data, ts) "
    "SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]'), json_extract(value, '$[2]'), "
    "json_extract(value, '$[3]'), json_extract(value, '$[4]'), json_extract(value, '$[5]') "
    "FROM json_each(:rows) WHERE true "  # WHERE: SQLite's rule for an upsert on a SELECT
    "ON CONFLICT (run_id, seq) DO NOTHING"
)


def sqlite_event_batch(rows: Sequence[Mapping[str, Any]]) -> dict[str, str]:
    """The parameters of SQLITE_INSERT_EVENTS for `rows` (event_row's)."""
    batch = [[r["run_id"], r["seq"], r["type"], r["stage"], json_dumps(r["data"]), r["ts"]] for r in rows]
    return {"rows": orjson.dumps(batch).decode()}


# The stage of a type, for mappings that omit it (event objects name their own). A copy of the
# pipeline's rule, by the type's prefix, because the store does not import the pipeline.
_STAGE_BY_PREFIX = {
    "panel": "panel",
    "tool": "panel",
    "analysis": "analysis",
    "final": "synthesis",
    "synthesis": "synthesis",
}


def _stage_of(event_type: str) -> str:
    return _STAGE_BY_PREFIX.get(event_type.split(".", 1)[0], "run")
