"""`panelfuse serve` as a real process: several workers sharing one store; graceful shutdown."""

from __future__ import annotations

import asyncio
import json
import signal
import threading
import time

import httpx

from panelfuse.store import RunStore
from panelfuse.testing import Script
from pipeline_helpers import script_panel
from serve_helpers import start_server, stop


def test_two_workers_share_one_store(tmp_path, fake):
    script_panel(fake, m1=Script(text="one", latency=0.2))
    proc, url = start_server(tmp_path, fake, "--workers", "2")
    try:

        async def many():
            async with httpx.AsyncClient(timeout=60) as http:
                body = {"model": "panelfuse/fusion", "messages": [{"role": "user", "content": "q"}]}
                return await asyncio.gather(*(http.post(f"{url}/v1/chat/completions", json=body) for _ in range(8)))

        responses = asyncio.run(many())
        assert [r.status_code for r in responses] == [200] * 8
        run_ids = {r.json()["fusion"]["run_id"] for r in responses}
        listed = httpx.get(f"{url}/v1/fusion/runs", params={"limit": 50}).json()["data"]
        assert {r["id"] for r in listed} == run_ids
        assert all(r["status"] == "completed" for r in listed)
        # every run is readable through any worker: fetch each one several times
        for rid in run_ids:
            for _ in range(3):
                assert httpx.get(f"{url}/v1/fusion/runs/{rid}").json()["status"] == "completed"
        pids = {httpx.get(f"{url}/healthz", headers={"Connection": "close"}).json()["pid"] for _ in range(40)}
        assert proc.pid not in pids and len(pids) >= 1
    finally:
        stop(proc)
    assert proc.returncode is not None


def test_graceful_shutdown_records_the_run(tmp_path, fake):
    script_panel(
        fake, m1=Script(text="x", latency=60), m2=Script(text="x", latency=60), m3=Script(text="x", latency=60)
    )
    proc, url = start_server(tmp_path, fake, "--shutdown-grace", "1")

    def stop_soon():
        time.sleep(1.0)  # the request is in flight when the server is told to stop
        proc.send_signal(signal.SIGTERM)

    threading.Thread(target=stop_soon, daemon=True).start()
    try:
        r = httpx.post(
            f"{url}/v1/chat/completions",
            timeout=60,
            json={"model": "panelfuse/fusion", "messages": [{"role": "user", "content": "q"}]},
        )
        assert r.status_code == 503
        assert r.json()["error"]["metadata"]["error_code"] == "shutting_down"
        proc.wait(timeout=30)
    finally:
        stop(proc)

    async def read_runs():
        store = await RunStore.open(f"sqlite:///{tmp_path}/runs.db")
        try:
            return (await store.list_runs(limit=5)).items
        finally:
            await store.close()

    runs = asyncio.run(read_runs())
    assert len(runs) == 1
    assert runs[0].status == "cancelled"
    assert "shut down" in (runs[0].error or "")
    assert fake.wait_idle(10)


def test_sigterm_ends_a_streaming_fusion_with_an_error_chunk_not_a_dropped_connection(tmp_path, fake):
    script_panel(
        fake, m1=Script(text="x", latency=60), m2=Script(text="x", latency=60), m3=Script(text="x", latency=60)
    )
    proc, url = start_server(tmp_path, fake, "--shutdown-grace", "1")
    body = {"model": "panelfuse/fusion", "stream": True, "messages": [{"role": "user", "content": "q"}]}
    frames = []
    try:
        with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=60) as r:
            for line in r.iter_lines():
                if line.startswith("data: "):
                    frames.append(line[6:])
                    if len(frames) == 1:  # the stream is open and the panel is thinking: stop the server
                        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    finally:
        stop(proc)
    last = json.loads(frames[-1])
    assert last["error"]["metadata"]["error_code"] == "shutting_down"
    assert last["choices"][0]["finish_reason"] == "error"

    async def read_runs():
        async with await RunStore.open(f"sqlite:///{tmp_path}/runs.db") as store:
            return (await store.list_runs(limit=5)).items

    runs = asyncio.run(read_runs())
    assert [r.status for r in runs] == ["cancelled"]
    assert runs[0].error == "the gateway shut down before the run finished"
