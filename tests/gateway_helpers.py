"""A real gateway on loopback (uvicorn in a thread) wired to the fake upstream, for the gateway tests."""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

import uvicorn

from panelfuse.config import Config, ProviderConfig
from panelfuse.server.app import create_app
from panelfuse.server.state import ServerSettings
from panelfuse.testing import FakeUpstream

PRICES = {
    "fake/m1": {"input": 1.0, "output": 2.0},
    "fake/m2": {"input": 1.0, "output": 2.0},
    "fake/m3": {"input": 1.0, "output": 2.0},
    "fake/judge": {"input": 3.0, "output": 6.0},
    "fake/synth": {"input": 3.0, "output": 6.0},
}

TEST_PRESET = {
    "members": ["fake/m1", "fake/m2", "fake/m3"],
    "judge": "fake/judge",
    "synthesizer": {"model": "fake/synth"},
    "deadline_ms": 10_000,
    "max_tokens": 100,
}


def gateway_config(fake: FakeUpstream) -> Config:
    return Config(
        default_provider="fake",
        default_preset="test",
        providers={
            "fake": ProviderConfig(kind="openai_compat", base_url=fake.openai_base_url, api_key="upstream-key"),
        },
        presets={"test": TEST_PRESET},
        prices=PRICES,
    )


class Gateway:
    def __init__(self, fake: FakeUpstream, db_url: str, config: Config | None = None, **settings: Any) -> None:
        self.settings = ServerSettings(db_url=db_url, keepalive_s=settings.pop("keepalive_s", 0.2), **settings)
        self.app = create_app(self.settings, config=config or gateway_config(fake))
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.server = uvicorn.Server(uvicorn.Config(self.app, log_level="warning", lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def state(self) -> Any:
        return self.app.state.gateway

    def start(self) -> Gateway:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the gateway did not start")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
        self.sock.close()
