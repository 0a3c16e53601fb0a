"""Generations: the stats of one answered completion, fetched later by its response id (OpenRouter's
`GET /api/v1/generation?id=`).

Entry points call `record` once a completion is answered (the proxy, the Responses API, the server
tool); `get` reads it back, scoped to the caller's key. A fusion chat completion needs no record of
its own: its id is `chatcmpl-<hex>` for the run `run_<hex>` (`server/shapes.py::completion_id`), and
`get` falls back to that run's stored cost, usage and latency.
"""

from __future__ import annotations

import logging
import re

from panelfuse.store import GenerationRecord, GenerationStore, RunRecord, RunStore

log = logging.getLogger("panelfuse.generations")

_FUSION_COMPLETION_ID = re.compile(r"^chatcmpl-([0-9a-f]{8,64})$")


# One type for a generation, stored or read back: the store's record.
Generation = GenerationRecord


async def record(store: RunStore, gen: Generation) -> None:
    """Store `gen`. Never raises: a lost record must not fail the answer it describes (it is logged).
    Recording an id already stored changes nothing."""
    try:
        await GenerationStore(store.database).insert(gen)
    except Exception:
        log.exception("could not record generation %s", gen.id)


async def get(store: RunStore, gen_id: str, *, key_id: str | None) -> Generation | None:
    """The generation `gen_id`, or None. With `key_id`, another key's generation is None too (no
    probing for ids); the admin, or a gateway without auth, passes None. A fusion completion id with no
    record of its own is answered from its run once the run has finished."""
    stored = await GenerationStore(store.database).get(gen_id, key_id=key_id)
    if stored is not None:
        return stored
    m = _FUSION_COMPLETION_ID.match(gen_id)
    if m is None:
        return None
    run = await store.get_run(f"run_{m[1]}", key_id=key_id)
    if run is None or run.status == "running":
        return None
    return from_run(gen_id, run)


def from_run(gen_id: str, run: RunRecord) -> Generation:
    """A finished fusion run seen as the generation of its chat completion."""
    usage = run.usage or {}
    result = run.result or {}
    if run.status == "completed":
        finish: str | None = str(result.get("finish_reason") or "stop")
    else:
        finish = "error" if run.status == "failed" else run.status  # cancelled | interrupted
    return Generation(
        id=gen_id,
        kind="chat",
        model=str(result.get("model") or run.request_model),
        key_id=run.key_id,
        created_at=run.created_at,
        latency_ms=run.latency_ms,
        prompt_tokens=int(usage.get("prompt_tokens") or 0),
        completion_tokens=int(usage.get("completion_tokens") or 0),
        cost=run.cost,
        finish_reason=finish,
        streamed=bool(run.request.get("stream", False)),
        run_id=run.id,
    )
