"""The response cache is the database's, not a process's: two `panelfuse serve` processes on one
database (PostgreSQL, and a SQLite file), the first answers, the second serves the same question again
without calling anyone."""

from __future__ import annotations

import asyncio
import uuid

import httpx
import pytest

from conftest import require_service
from panelfuse.testing import FakeUpstream
from pipeline_helpers import script_panel
from serve_helpers import start_server, stop
from test_access_multiprocess import PG, PRICES_TOML, _drop

QUESTION = {"model": "panelfuse/fusion", "messages": [{"role": "user", "content": "Shared across replicas?"}]}


def upstream_calls(fake: FakeUpstream) -> int:
    return sum(1 for r in list(fake.requests) if r.method == "POST")


@pytest.mark.parametrize("backend", ["postgresql", "sqlite"])
def test_two_processes_share_one_cache(tmp_path, fake, backend):
    env = {"PANELFUSE_CACHE_TTL_S": "600"}  # the gateway default: the preset sets no TTL
    schema = None
    if backend == "postgresql":
        require_service(5432, "PostgreSQL")
        schema = f"pf_cache_{uuid.uuid4().hex[:8]}"
        env["PANELFUSE_DB_SCHEMA"] = schema
        db = PG
    else:
        db = f"sqlite:///{tmp_path}/runs.db"
    script_panel(fake)
    a, url_a = start_server(tmp_path, fake, db=db, env=env, config_extra=PRICES_TOML)
    try:
        b, url_b = start_server(tmp_path, fake, db=db, env=env, config_extra=PRICES_TOML)
        try:
            first = httpx.post(f"{url_a}/v1/chat/completions", json=QUESTION, timeout=60)
            assert first.status_code == 200 and first.headers["x-panelfuse-cache"] == "miss"
            paid = first.json()
            assert paid["usage"]["cost"] > 0
            calls = upstream_calls(fake)

            second = httpx.post(f"{url_b}/v1/chat/completions", json=QUESTION, timeout=60)
            assert second.status_code == 200 and second.headers["x-panelfuse-cache"] == "hit"
            assert upstream_calls(fake) == calls  # B called nobody
            hit = second.json()
            assert hit["choices"][0]["message"]["content"] == paid["choices"][0]["message"]["content"]
            assert hit["usage"]["cost"] == 0 and hit["fusion"]["cached"] is True
            assert hit["fusion"]["cached_from"] == paid["fusion"]["run_id"]
            # the hit is a run in the shared store: A reads it
            run = httpx.get(f"{url_a}/v1/fusion/runs/{hit['fusion']['run_id']}", timeout=10).json()
            assert run["status"] == "completed" and run["cost"] == 0 and run["result"]["cached"] is True
        finally:
            stop(b)
    finally:
        stop(a)
        if schema is not None:
            asyncio.run(_drop(schema))
