"""`panelfuse serve` builds ServerSettings from its options and the environment, and hands the workers
exactly that through their environment (uvicorn replaced by a recorder: no server starts)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from typer.testing import CliRunner

from panelfuse.cli import app, quiet_server
from panelfuse.settings import ServerSettings

GOOD = 'default_provider = "fake"\n[providers.fake]\nkind = "openai_compat"\nbase_url = "http://127.0.0.1:9"\n'


@pytest.fixture
def launched(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[dict[str, Any]]]:
    """run_uvicorn's keyword arguments, per call; PANELFUSE_* cleared and the environment restored."""
    calls: list[dict[str, Any]] = []
    monkeypatch.setattr(quiet_server, "run_uvicorn", lambda *args, **kwargs: calls.append(kwargs))
    with mock.patch.dict(os.environ):
        for name in [n for n in os.environ if n.upper().startswith("PANELFUSE_")]:
            del os.environ[name]
        yield calls


@pytest.fixture
def config(tmp_path: Path) -> str:
    path = tmp_path / "gw.toml"
    path.write_text(GOOD)
    return str(path)


def test_options_reach_the_workers_environment(launched: list[dict[str, Any]], config: str) -> None:
    os.environ["PANELFUSE_DB_SCHEMA"] = "tenant_a"  # no option for it: passes through to the workers
    os.environ["PANELFUSE_ADMIN_KEY"] = "sk-admin"
    argv = ["--config", config, "serve", "--db", "sqlite:///x.db", "--no-auth", "--redis", "redis://r"]
    argv += ["--retain-days", "3", "--shutdown-grace", "2.5", "--host", "0.0.0.0", "--workers", "2"]
    result = CliRunner().invoke(app, argv)
    assert result.exit_code == 0, result.output
    (call,) = launched
    assert call["workers"] == 2 and call["timeout_graceful_shutdown"] == 2 + 5 and call["factory"] is True
    worker = ServerSettings()  # what app_factory() builds in each worker
    assert worker == ServerSettings(
        config_path=config,
        db_url="sqlite:///x.db",
        db_schema="tenant_a",
        shutdown_grace_s=2.5,
        host="0.0.0.0",
        auth=False,
        admin_key="sk-admin",
        redis_url="redis://r",
        retain_days=3.0,
    )


def test_unset_options_leave_the_environment_in_charge(launched: list[dict[str, Any]], config: str) -> None:
    os.environ.update({"PANELFUSE_AUTH": "1", "PANELFUSE_PASSTHROUGH_KEYS": "1", "PANELFUSE_DB": "sqlite:///e.db"})
    result = CliRunner().invoke(app, ["serve", "--config", config])
    assert result.exit_code == 0, result.output
    worker = ServerSettings()
    assert (worker.auth, worker.passthrough_keys, worker.db_url, worker.config_path) == (
        True,
        True,
        "sqlite:///e.db",
        config,
    )


def test_bad_environment_value_fails_before_any_worker_starts(launched: list[dict[str, Any]], config: str) -> None:
    os.environ["PANELFUSE_MAX_BODY_BYTES"] = "lots"
    result = CliRunner().invoke(app, ["serve", "--config", config])
    assert result.exit_code == 2
    assert "PANELFUSE_MAX_BODY_BYTES='lots'" in result.output and "valid integer" in result.output
    assert launched == []
