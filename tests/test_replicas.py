"""Two `panelfuse serve` replicas on one PostgreSQL and one Redis behave as one service: a background
run started through one is followed live, and resumed after a disconnect, through the other; a key's
concurrency limit holds across both. (Budgets across replicas: tests/test_access_multiprocess.py.)"""

from __future__ import annotations

import asyncio
import json
import uuid

import httpx

from conftest import require_service
from panelfuse.testing import Script
from pipeline_helpers import script_panel
from serve_helpers import start_server, stop
from test_access_multiprocess import PG, PRICES_TOML, _drop, _in_schema

REDIS = "redis://127.0.0.1:6379/0"


def _replicas(tmp_path, fake, schema: str):
    env = {"PANELFUSE_DB_SCHEMA": schema}
    return [start_server(tmp_path, fake, "--redis", REDIS, db=PG, env=env, config_extra=PRICES_TOML) for _ in range(2)]


def _events(url: str, run_id: str, headers: dict[str, str], after: int, stop_after: int | None = None):
    """(seq, type) of the run's events after `after`, read live; leaves after `stop_after` of them."""
    seen = []
    with httpx.stream(
        "GET", f"{url}/v1/fusion/runs/{run_id}/events", headers={**headers, "Last-Event-ID": str(after)}, timeout=60
    ) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if line.startswith("data: "):
                ev = json.loads(line[6:])
                seen.append((ev["seq"], ev["type"]))
                if stop_after is not None and len(seen) == stop_after:
                    break  # the follower's connection drops midway
    return seen


def test_a_background_run_is_followed_and_resumed_through_the_other_replica(tmp_path, fake):
    require_service(5432, "PostgreSQL")
    require_service(6379, "Redis")
    # A member slow enough that the run is still going while the other replica follows it.
    script_panel(fake, m1=Script(text="one two three four five six seven eight nine ten", token_rate=8))
    schema = f"pf_replica_{uuid.uuid4().hex[:8]}"
    key = asyncio.run(_in_schema(schema, lambda s: s.keys.create("team", budget_usd=100.0)))
    headers = {"Authorization": f"Bearer {key.secret}"}
    (a, url_a), (b, url_b) = _replicas(tmp_path, fake, schema)
    try:
        body = {
            "model": "panelfuse/fusion",
            "stream": True,
            "plugins": [{"id": "fusion", "background": True}],
            "messages": [{"role": "user", "content": "q"}],
        }
        with httpx.stream("POST", f"{url_a}/v1/chat/completions", json=body, headers=headers, timeout=60) as r:
            run_id = r.headers["x-panelfuse-run-id"]  # started on A; the client leaves at once
        first = _events(url_b, run_id, headers, after=0, stop_after=3)
        assert [seq for seq, _ in first] == [1, 2, 3]
        rest = _events(url_b, run_id, headers, after=first[-1][0])  # resumed where it dropped
        seqs = [seq for seq, _ in first + rest]
        assert seqs == list(range(1, len(seqs) + 1))  # nothing lost, nothing twice
        assert rest[-1][1] == "run.completed"
        assert any(t == "panel.delta" for _, t in rest)  # it was followed while it ran, not after
        run = httpx.get(f"{url_b}/v1/fusion/runs/{run_id}", headers=headers, timeout=10).json()
        assert run["status"] == "completed" and run["background"] is True
    finally:
        stop(a)
        stop(b)
        asyncio.run(_drop(schema))


def test_a_concurrency_limit_holds_across_replicas(tmp_path, fake):
    require_service(5432, "PostgreSQL")
    require_service(6379, "Redis")
    script_panel(fake, m1=Script(text="slow " * 40, token_rate=20))
    schema = f"pf_replica_{uuid.uuid4().hex[:8]}"
    key = asyncio.run(_in_schema(schema, lambda s: s.keys.create("one-at-a-time", max_concurrent=1)))
    headers = {"Authorization": f"Bearer {key.secret}"}
    (a, url_a), (b, url_b) = _replicas(tmp_path, fake, schema)
    body = {"model": "panelfuse/fusion", "stream": True, "messages": [{"role": "user", "content": "q"}]}
    try:
        with httpx.stream("POST", f"{url_a}/v1/chat/completions", json=body, headers=headers, timeout=60) as held:
            assert held.status_code == 200
            other = httpx.post(f"{url_b}/v1/chat/completions", json=body, headers=headers, timeout=60)
            assert other.status_code == 429
            assert other.json()["error"]["metadata"]["error_code"] == "rate_limited"
            assert "data: [DONE]" in list(held.iter_lines())  # the first run went on to its end
        again = httpx.post(f"{url_b}/v1/chat/completions", json={**body, "stream": False}, headers=headers, timeout=60)
        assert again.status_code == 200  # the slot came back once the first run ended
    finally:
        stop(a)
        stop(b)
        asyncio.run(_drop(schema))
