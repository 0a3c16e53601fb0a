"""`panelfuse serve` as a real subprocess, pointed at the fake upstream; and a one-off aiohttp app on loopback."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
from aiohttp import web

from panelfuse.testing import FakeUpstream


@asynccontextmanager
async def serving(app: web.Application, host: str = "127.0.0.1") -> AsyncIterator[str]:
    """`app` served on a free loopback port while inside; yields its base URL (`host` names it)."""
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield f"http://{host}:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_config(tmp_path, fake: FakeUpstream, extra: str = "") -> str:
    path = tmp_path / "gw.toml"
    path.write_text(
        'default_provider = "fake"\ndefault_preset = "test"\n'
        f'[providers.fake]\nkind = "openai_compat"\nbase_url = "{fake.openai_base_url}"\napi_key = "k"\n'
        '[presets.test]\nmembers = ["fake/m1", "fake/m2", "fake/m3"]\njudge = "fake/judge"\n'
        'synthesizer = { model = "fake/synth" }\ndeadline_ms = 60000\nmax_tokens = 100\n' + extra
    )
    return str(path)


def start_server(
    tmp_path,
    fake: FakeUpstream,
    *args: str,
    db: str | None = None,
    env: dict[str, str] | None = None,
    config_extra: str = "",
) -> tuple[subprocess.Popen, str]:
    port = free_port()
    db = db or f"sqlite:///{tmp_path}/runs.db"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "panelfuse.cli",
            "serve",
            "--port",
            str(port),
            "--db",
            db,
            "--config",
            write_config(tmp_path, fake, config_extra),
            "--log-level",
            "warning",
            *args,
        ],
        env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
    )
    url = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            raise RuntimeError("serve exited early")
        time.sleep(0.1)
    proc.kill()
    raise RuntimeError("serve did not come up")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
