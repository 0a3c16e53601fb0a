"""kill -9 of `panelfuse serve` mid-run, then a restart at once: the runs it left become
`interrupted` (not `running` forever), followers' streams end, reservations are settled, and the
SQLite file is intact. Real processes over loopback (issue 15)."""

from __future__ import annotations

import asyncio
import signal
import sqlite3

import httpx

from panelfuse.store import RunStore
from panelfuse.testing import Script
from pipeline_helpers import script_panel
from serve_helpers import start_server, stop

PRICES = "[prices]\n" + "".join(
    f'"fake/{m}" = {{ input = 1.0, output = 2.0 }}\n' for m in ("m1", "m2", "m3", "judge", "synth")
)


async def _create_key(db: str):
    async with await RunStore.open(db) as store:
        return await store.keys.create("crash", budget_usd=100.0)


async def _key_and_runs(db: str, key_id: str):
    async with await RunStore.open(db) as store:
        return await store.keys.get(key_id), (await store.list_runs(limit=50)).items


def test_kill_9_then_restart_interrupts_the_runs_it_left(tmp_path, fake):
    db = f"sqlite:///{tmp_path}/runs.db"
    key = asyncio.run(_create_key(db))
    slow = Script(text="x", latency=60)
    script_panel(fake, m1=slow, m2=slow, m3=slow)
    proc, url = start_server(tmp_path, fake, db=db, config_extra=PRICES)
    headers = {"Authorization": f"Bearer {key.secret}"}
    body = {
        "model": "panelfuse/fusion",
        "messages": [{"role": "user", "content": "q"}],
        "stream": True,
        "plugins": [{"id": "fusion", "background": True}],
    }
    run_ids = []
    try:
        for _ in range(3):
            # A background run outlives its request: the client reads the headers and leaves.
            with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, headers=headers, timeout=30) as r:
                assert r.status_code == 200
                run_ids.append(r.headers["X-Panelfuse-Run-Id"])
        before, _ = asyncio.run(_key_and_runs(db, key.key.id))
        assert before is not None and before.reserved_usd > 0
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        stop(proc)
    fake.reset()
    # At once: well inside the heartbeat's stale window.
    proc, url = start_server(tmp_path, fake, db=db, config_extra=PRICES)
    try:
        after, runs = asyncio.run(_key_and_runs(db, key.key.id))
        status = {r.id: r for r in runs}
        assert {status[i].status for i in run_ids} == {"interrupted"}
        assert after is not None and after.reserved_usd == 0.0
        assert after.spent_usd == sum(status[i].cost or 0.0 for i in run_ids)  # charged at the reservation
        with httpx.stream("GET", f"{url}/v1/fusion/runs/{run_ids[0]}/events", headers=headers, timeout=30) as r:
            types = [line[7:] for line in r.iter_lines() if line.startswith("event: ")]
        assert types[-1] == "run.failed"  # the follower's stream ends, saying why
    finally:
        stop(proc)
    with sqlite3.connect(f"{tmp_path}/runs.db") as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
