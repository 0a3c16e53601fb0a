"""The gateway's store paths on a real PostgreSQL (skips on a machine without one; fails under CI=true)."""

from __future__ import annotations

import asyncio
import uuid

import httpx
import openai
import pytest

from conftest import require_service
from gateway_helpers import Gateway
from pipeline_helpers import script_panel

PG_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/test"


@pytest.fixture
def pg_gateway(fake):
    require_service(5432, "PostgreSQL")
    schema = f"pf_gw_{uuid.uuid4().hex[:10]}"
    gw = Gateway(fake, PG_URL, db_schema=schema).start()
    yield gw
    gw.stop()

    async def drop():
        import asyncpg

        conn = await asyncpg.connect("postgresql://postgres@127.0.0.1:5432/test")
        try:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        finally:
            await conn.close()

    asyncio.run(drop())


def test_runs_round_trip_on_postgres(fake, pg_gateway):
    script_panel(fake)
    with openai.OpenAI(base_url=f"{pg_gateway.url}/v1", api_key="x", max_retries=0) as client:
        r = client.chat.completions.create(model="panelfuse/fusion", messages=[{"role": "user", "content": "q"}])
    run_id = r.model_extra["fusion"]["run_id"]
    url = pg_gateway.url
    run = httpx.get(f"{url}/v1/fusion/runs/{run_id}").json()
    assert run["status"] == "completed" and run["content"] == r.choices[0].message.content
    assert run["result"]["analysis"]["consensus"] == ["the sky scatters blue light"]
    assert [x["id"] for x in httpx.get(f"{url}/v1/fusion/runs").json()["data"]] == [run_id]
    with httpx.stream("GET", f"{url}/v1/fusion/runs/{run_id}/events", params={"after": 0}) as resp:
        seqs = [int(ln[4:]) for ln in resp.iter_lines() if ln.startswith("id: ")]
    assert seqs == list(range(1, len(seqs) + 1)) and len(seqs) > 8
    assert httpx.post(f"{url}/v1/fusion/runs/{run_id}/feedback", json={"score": -1}).status_code == 200
    assert httpx.delete(f"{url}/v1/fusion/runs/{run_id}").status_code == 200
    assert httpx.get(f"{url}/v1/fusion/runs/{run_id}").status_code == 404
