"""A run's end is recorded whatever way its readers leave: the races and leaks an independent probe
found (issue 15), each as a regression test."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from gateway_helpers import Gateway
from panelfuse.service import metrics
from panelfuse.service.runs import RunManager
from panelfuse.store import RunStore
from panelfuse.testing import Failure, Script
from pipeline_helpers import fusion, script_panel, spec
from test_fusion_tool import CALL_FUSION, FUSION_TOOL


async def test_a_reader_that_leaves_on_the_terminal_event_does_not_leave_the_run_active(fake, tmp_path):
    # The chat route's clean-up cancels a run whose `done` is not set yet; the terminal event is
    # published just before that, so a reader leaving on it used to cancel the run's own clean-up.
    script_panel(fake)
    store = await RunStore.open(f"sqlite+aiosqlite:///{tmp_path}/runs.db")
    manager = RunManager(store)
    active_before = metrics.RUNS_ACTIVE._value.get()
    try:
        s = spec()
        f = fusion(fake, s)
        run = await manager.start(
            f, f.plan("why is the sky blue?"), run_id="run_leaver", request={}, request_model="m", background=False
        )
        async for ev in run.follow():
            if ev.type == "run.completed":
                break
        run.cancel("the client disconnected")  # what server/chat.py::fusion_chunks does on its way out
        await asyncio.wait_for(run.done.wait(), 10)
        assert "run_leaver" not in manager.active
        assert metrics.RUNS_ACTIVE._value.get() == active_before
        stored = await store.get_run("run_leaver")
        assert stored is not None and stored.status == "completed"
    finally:
        await store.close()


def test_a_non_streamed_server_tool_request_stops_when_its_client_leaves(fake, gateway):
    # Nobody reads the answer any more: the fusion and its upstream calls stop (no more billing),
    # and the stored run says it was cancelled.
    script_panel(fake, m1=Script(text="slow", latency=30), m2=Script(text="slow", latency=30))
    fake.script("outer", CALL_FUSION, Script(text="never asked"))
    body = {"model": "fake/outer", "messages": [{"role": "user", "content": "q"}], "tools": [FUSION_TOOL]}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{gateway.url}/v1/chat/completions", json=body, timeout=1.5)
    runs = _wait_for(lambda: _finished_runs(gateway), lambda rows: len(rows) == 1)
    assert runs[0]["status"] == "cancelled"
    assert fake.wait_idle(10)  # both slow panelists' calls were cut
    assert len(fake.requests_for("outer")) == 1  # the outer model was not asked again


def _finished_runs(gateway) -> list[dict]:
    listed = httpx.get(f"{gateway.url}/v1/fusion/runs", timeout=10).json()["data"]
    return [r for r in listed if r["status"] != "running"]


def _wait_for(read, ok, attempts: int = 100):
    for _ in range(attempts):  # polls until the gateway noticed; asserts no duration
        value = read()
        if ok(value):
            return value
        time.sleep(0.1)
    return read()


def test_replaying_a_long_finished_run_sends_every_event_and_its_end(fake, tmp_path):
    db = f"sqlite+aiosqlite:///{tmp_path}/runs.db"

    async def stored_long_run() -> None:
        async with await RunStore.open(db) as store:
            await store.create_run(
                "run_long", spec={}, request={}, request_model="m", preset=None, mode="fusion", prompt_version="t"
            )
            deltas = [{"seq": i, "type": "panel.delta", "data": {"member": 0, "text": "x"}} for i in range(1, 3611)]
            done = {"seq": 3611, "type": "run.completed", "data": {"usage": {}, "cost": 0.0, "degraded": False}}
            await store.finish_run(
                "run_long",
                status="completed",
                result=None,
                content="x",
                usage=None,
                cost=0.0,
                degraded=False,
                error=None,
                latency_ms=1,
                events=[*deltas, done],
            )

    asyncio.run(stored_long_run())
    gw = Gateway(fake, db).start()
    try:
        with httpx.stream("GET", f"{gw.url}/v1/fusion/runs/run_long/events", timeout=30) as r:
            seqs = [int(line[4:]) for line in r.iter_lines() if line.startswith("id: ")]
        assert seqs == list(range(1, 3612))  # the last one is run.completed
    finally:
        gw.stop()


async def test_a_run_cancelled_before_it_began_stores_its_cancelled_event(fake, tmp_path):
    script_panel(fake)
    async with await RunStore.open(f"sqlite+aiosqlite:///{tmp_path}/runs.db") as store:
        manager = RunManager(store)
        f = fusion(fake, spec())
        run = await manager.start(f, f.plan("q"), run_id="run_early", request={}, request_model="m", background=False)
        run.cancel("the client disconnected")  # before the run's task had a turn
        await asyncio.wait_for(run.done.wait(), 10)
        events = await store.events_after("run_early")
        assert events[-1].type == "run.cancelled"
        assert events[-1].data["reason"] == "the client disconnected"
        stored = await store.get_run("run_early")
        assert stored is not None and stored.status == "cancelled"


async def test_a_run_whose_outcome_fails_to_store_once_is_stored_on_the_next_try(fake, tmp_path):
    script_panel(fake)
    async with await RunStore.open(f"sqlite+aiosqlite:///{tmp_path}/runs.db") as store:
        real, failures = store.finish_run, []

        async def flaky(*args, **kwargs):
            if not failures:
                failures.append("disk I/O error (injected)")
                raise OSError(failures[0])
            return await real(*args, **kwargs)

        store.finish_run = flaky  # type: ignore[method-assign]
        manager = RunManager(store)
        f = fusion(fake, spec())
        run = await manager.start(f, f.plan("q"), run_id="run_flaky", request={}, request_model="m", background=False)
        await asyncio.wait_for(run.done.wait(), 30)
        stored = await store.get_run("run_flaky")
        assert failures and stored is not None and stored.status == "completed"  # as the client was told


async def test_a_reader_still_catching_up_when_the_run_ends_gets_the_terminal_event(fake, tmp_path):
    # follow() yields the events already published, then the live ones. A run that ended while its
    # reader was still on the published ones used to end the reader there, without the terminal event
    # (seen as a streamed failed fusion missing its response.failed when the outcome was stored fast).
    script_panel(fake, **{m: Script(failure=Failure.HTTP, status_code=400) for m in ("m1", "m2", "m3")})
    async with await RunStore.open(f"sqlite+aiosqlite:///{tmp_path}/runs.db") as store:
        manager = RunManager(store)
        f = fusion(fake, spec())
        run = await manager.start(f, f.plan("q"), run_id="run_fast", request={}, request_model="m", background=False)
        published: asyncio.Queue = asyncio.Queue()
        run.subscribers.add(published)
        await asyncio.wait_for(published.get(), 10)
        await asyncio.wait_for(published.get(), 10)  # two events are out, the run has not ended
        run.subscribers.discard(published)
        assert not run.done.is_set()
        reader = run.follow()
        first = await anext(reader)  # the reader has its catch-up list now
        await asyncio.wait_for(run.done.wait(), 10)  # the run ends while the reader is mid-way
        rest = [ev async for ev in reader]
        seen = [first, *rest]
        assert [ev.seq for ev in seen] == list(range(1, len(run.stream.log.events) + 1))
        assert seen[-1].type == "run.failed"
