"""ServerSettings: one typed object read from PANELFUSE_* variables and rendered back for worker processes."""

from __future__ import annotations

import os
from collections.abc import Iterator
from unittest import mock

import pytest

from panelfuse.settings import ServerSettings, SettingsError

# The names users' scripts and deployments set; changing one breaks them, so they are pinned here.
ENV_NAMES = {
    "config_path": "PANELFUSE_CONFIG",
    "db_url": "PANELFUSE_DB",
    "db_schema": "PANELFUSE_DB_SCHEMA",
    "max_body_bytes": "PANELFUSE_MAX_BODY_BYTES",
    "keepalive_s": "PANELFUSE_KEEPALIVE_S",
    "shutdown_grace_s": "PANELFUSE_SHUTDOWN_GRACE_S",
    "stale_after_s": "PANELFUSE_STALE_AFTER_S",
    "host": "PANELFUSE_HOST",
    "auth": "PANELFUSE_AUTH",
    "admin_key": "PANELFUSE_ADMIN_KEY",
    "passthrough_keys": "PANELFUSE_PASSTHROUGH_KEYS",
    "allowed_hosts": "PANELFUSE_ALLOWED_HOSTS",
    "redis_url": "PANELFUSE_REDIS",
    "retain_days": "PANELFUSE_RETAIN_DAYS",
    "mcp_wait_s": "PANELFUSE_MCP_WAIT_S",
    "mcp_max_fusions_per_session": "PANELFUSE_MCP_MAX_FUSIONS_PER_SESSION",
    "mcp_max_fusions_per_minute": "PANELFUSE_MCP_MAX_FUSIONS_PER_MINUTE",
    "cache_ttl_s": "PANELFUSE_CACHE_TTL_S",
    "cache_scope": "PANELFUSE_CACHE_SCOPE",
}


@pytest.fixture
def clean_env() -> Iterator[None]:
    """No PANELFUSE_* from the machine; the whole environment is restored afterwards."""
    with mock.patch.dict(os.environ):
        for name in [n for n in os.environ if n.upper().startswith("PANELFUSE_")]:
            del os.environ[name]
        yield


def test_env_names_are_the_documented_ones() -> None:
    assert {f: ServerSettings.env_name(f) for f in ServerSettings.model_fields} == ENV_NAMES


def test_defaults(clean_env: None) -> None:
    s = ServerSettings()
    assert (s.config_path, s.db_url, s.db_schema, s.admin_key, s.redis_url, s.retain_days, s.auth) == (None,) * 7
    assert s.max_body_bytes == 8 * 1024 * 1024
    assert (s.keepalive_s, s.shutdown_grace_s, s.stale_after_s) == (5.0, 20.0, 60.0)
    assert s.host == "127.0.0.1" and s.passthrough_keys is False
    assert s.to_env() == {
        "PANELFUSE_MAX_BODY_BYTES": "8388608",
        "PANELFUSE_KEEPALIVE_S": "5.0",
        "PANELFUSE_SHUTDOWN_GRACE_S": "20.0",
        "PANELFUSE_STALE_AFTER_S": "60.0",
        "PANELFUSE_HOST": "127.0.0.1",
        "PANELFUSE_PASSTHROUGH_KEYS": "0",
        "PANELFUSE_MCP_WAIT_S": "45.0",
        "PANELFUSE_MCP_MAX_FUSIONS_PER_SESSION": "20",
        "PANELFUSE_MCP_MAX_FUSIONS_PER_MINUTE": "10",
        "PANELFUSE_CACHE_SCOPE": "key",
    }


@pytest.mark.parametrize(
    "settings",
    [
        ServerSettings(),
        ServerSettings(
            config_path="/etc/panelfuse.toml",
            db_url="postgresql://u@h/db",
            db_schema="tenant_a",
            max_body_bytes=1000,
            keepalive_s=0.25,
            shutdown_grace_s=1.5,
            stale_after_s=7.0,
            host="0.0.0.0",
            auth=True,
            admin_key="sk-admin",
            passthrough_keys=True,
            redis_url="redis://127.0.0.1:6379/1",
            retain_days=0.1,
            cache_ttl_s=600,
            cache_scope="gateway",
        ),
        ServerSettings(auth=False, retain_days=0.0),
    ],
)
def test_round_trip_through_the_environment(clean_env: None, settings: ServerSettings) -> None:
    os.environ.update(settings.to_env())
    assert ServerSettings() == settings


def test_reads_the_environment(clean_env: None) -> None:
    os.environ.update(
        {
            "PANELFUSE_CONFIG": "/c.toml",
            "PANELFUSE_DB": "sqlite:///x.db",
            "PANELFUSE_REDIS": "redis://r",
            "PANELFUSE_AUTH": "0",
            "PANELFUSE_PASSTHROUGH_KEYS": "1",
            "PANELFUSE_RETAIN_DAYS": "2",
            "PANELFUSE_ADMIN_KEY": "sk-admin",
        }
    )
    s = ServerSettings()
    assert (s.config_path, s.db_url, s.redis_url, s.auth, s.passthrough_keys) == (
        "/c.toml",
        "sqlite:///x.db",
        "redis://r",
        False,
        True,
    )
    assert s.retain_days == 2.0 and s.admin_key == "sk-admin"
    assert "sk-admin" not in repr(s)  # a secret stays out of logs
    assert ServerSettings(db_url="sqlite:///y.db").db_url == "sqlite:///y.db"  # arguments win over the env


def test_empty_variables_count_as_unset(clean_env: None) -> None:
    os.environ.update({"PANELFUSE_DB": "", "PANELFUSE_AUTH": "", "PANELFUSE_RETAIN_DAYS": ""})
    s = ServerSettings()
    assert (s.db_url, s.auth, s.retain_days) == (None, None, None)


def test_bad_value_names_the_variable(clean_env: None) -> None:
    os.environ.update({"PANELFUSE_RETAIN_DAYS": "a week", "PANELFUSE_AUTH": "maybe"})
    with pytest.raises(SettingsError) as caught:
        ServerSettings.load()
    message = str(caught.value)
    assert "PANELFUSE_RETAIN_DAYS='a week'" in message and "valid number" in message
    assert "PANELFUSE_AUTH='maybe'" in message and "valid boolean" in message


def test_unknown_field_is_refused(clean_env: None) -> None:
    with pytest.raises(SettingsError, match="DB_PATH"):
        ServerSettings.load(db_path="x")  # a typo is an error, not silently ignored
