"""cli/quiet_server.py: uvicorn's server that wakes once a second when idle, not ten times, and
still stops at once when told to."""

from __future__ import annotations

import asyncio
import os
import signal

import httpx
import pytest
import uvicorn

from panelfuse.cli import quiet_server
from panelfuse.cli.quiet_server import QuietServer
from serve_helpers import free_port


async def hello(scope, receive, send):  # the smallest ASGI app: 200 "ok"
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": b"ok"})


async def started(server: QuietServer) -> asyncio.Task[None]:
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()  # raises what stopped it
        await asyncio.sleep(0.01)
    return task


def quiet(port: int) -> QuietServer:
    return QuietServer(uvicorn.Config(hello, host="127.0.0.1", port=port, log_level="warning", lifespan="on"))


async def test_an_idle_server_ticks_once_a_second_and_still_sends_a_date(monkeypatch: pytest.MonkeyPatch):
    ticks: list[int] = []
    original = QuietServer.on_tick

    async def counted(self: QuietServer, counter: int) -> bool:
        ticks.append(counter)
        return await original(self, counter)

    monkeypatch.setattr(QuietServer, "on_tick", counted)
    port = free_port()
    server = quiet(port)
    task = await started(server)
    try:
        ticks.clear()
        await asyncio.sleep(2.5)  # uvicorn's own loop ticks 25 times in this
        assert 1 <= len(ticks) <= 4, ticks
        # Every tick refreshes the Date header (uvicorn does so on every tenth of its 0.1 s ticks).
        assert all(c % 10 == 0 for c in ticks)
        async with httpx.AsyncClient() as client:
            reply = await client.get(f"http://127.0.0.1:{port}/")
        assert reply.status_code == 200 and reply.text == "ok"
        assert reply.headers["date"].endswith(" GMT")
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)


async def test_an_exit_signal_stops_it_without_waiting_for_the_next_tick(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(quiet_server, "TICK_S", 3600.0)  # only the wake can end the wait in time
    heard: list[int] = []
    previous = signal.signal(signal.SIGTERM, lambda sig, frame: heard.append(sig))
    try:
        server = quiet(free_port())
        task = await started(server)
        await asyncio.sleep(0.05)  # the main loop is waiting on its tick
        os.kill(os.getpid(), signal.SIGTERM)
        await asyncio.wait_for(task, 10)
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert server.should_exit
    assert heard == [signal.SIGTERM]  # uvicorn hands the signal on to the handler it replaced


def test_one_worker_runs_the_quiet_server_and_several_run_uvicorns(monkeypatch: pytest.MonkeyPatch):
    ran: list[str] = []
    monkeypatch.setattr(QuietServer, "run", lambda self, sockets=None: ran.append("quiet"))
    monkeypatch.setattr(uvicorn, "run", lambda app, **options: ran.append(f"uvicorn workers={options['workers']}"))
    with pytest.raises(SystemExit) as exited:  # the stub never starts: reported as uvicorn.run reports it
        quiet_server.run_uvicorn("panelfuse.server.app:app_factory", factory=True, workers=1)
    assert exited.value.code == quiet_server.STARTUP_FAILURE
    quiet_server.run_uvicorn("panelfuse.server.app:app_factory", factory=True, workers=3)
    assert ran == ["quiet", "uvicorn workers=3"]
