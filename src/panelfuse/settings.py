"""The gateway's settings: one typed object, read from `PANELFUSE_*` environment variables.

`panelfuse serve` builds it from its options and renders it back to the environment (`to_env`), because
uvicorn's workers are separate processes that can only be told their settings that way; each worker's
`app_factory()` then reads it again. The variable names come from the fields, so the two sides cannot drift.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import AliasChoices, Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from panelfuse.spec import MAX_CACHE_TTL_S

ENV_PREFIX = "PANELFUSE_"


class SettingsError(ValueError):
    """A setting's value cannot be used; the message names the environment variable."""


class ServerSettings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        # `PANELFUSE_DB=` (set but empty) means "not set", as it always has.
        env_ignore_empty=True,
        # Code and tests pass field names (db_url=...); the environment uses the aliases (PANELFUSE_DB).
        validate_by_name=True,
        validate_by_alias=True,
    )

    # The older, shorter names are kept where they differ from the field's name: users' scripts set them.
    config_path: str | None = Field(None, validation_alias=AliasChoices("PANELFUSE_CONFIG"))
    db_url: str | None = Field(None, validation_alias=AliasChoices("PANELFUSE_DB"))  # None: SQLite in the data dir
    db_schema: str | None = None  # PostgreSQL only: keep the tables in this schema (tests, tenants)
    max_body_bytes: int = 8 * 1024 * 1024
    keepalive_s: float = 5.0
    shutdown_grace_s: float = 20.0
    # Runs still 'running' whose row has not been refreshed for this long belong to a dead process.
    stale_after_s: float = 60.0
    host: str = "127.0.0.1"  # where the server listens: off loopback, auth defaults to on
    auth: bool | None = None  # None: on when a key exists (or off loopback); True/False: --auth/--no-auth
    admin_key: str | None = Field(None, repr=False)  # a secret: kept out of reprs and logs
    passthrough_keys: bool = False
    # With auth off, only requests whose Host names this machine (or one of these, comma-separated) are
    # served: a web page cannot reach the gateway through DNS rebinding (docs/security.md).
    allowed_hosts: str | None = None
    redis_url: str | None = Field(None, validation_alias=AliasChoices("PANELFUSE_REDIS"))  # limits across processes
    retain_days: float | None = None  # purge the content of older runs
    # MCP (server/mcp_server.py): a `fusion` tool call still running after this many seconds returns its
    # run id instead (MCP clients give up on a tool call after about 60 s); the run goes on.
    mcp_wait_s: float = Field(45.0, gt=0)
    # A looping agent cannot spend without bound: fusions one MCP session may start, in all and per minute.
    mcp_max_fusions_per_session: int = Field(20, ge=0)
    mcp_max_fusions_per_minute: int = Field(10, ge=0)
    # The response cache (docs/cache.md): the TTL of specs that set none (None or 0: off), and whether
    # each key has its own cache ("key") or all keys share one ("gateway").
    cache_ttl_s: int | None = Field(None, ge=0, le=MAX_CACHE_TTL_S)
    cache_scope: Literal["key", "gateway"] = "key"

    @classmethod
    def load(cls, **overrides: Any) -> ServerSettings:
        """From the environment, `overrides` winning; a bad value raises SettingsError naming its variable
        (pydantic's own message would name the field, which is not what the user set)."""
        try:
            return cls(**overrides)
        except ValidationError as exc:
            raise SettingsError("; ".join(_describe(cls, e) for e in exc.errors())) from None

    @classmethod
    def env_name(cls, field: str) -> str:
        """The environment variable a field is read from: its alias, else the prefix and its name."""
        alias = cls.model_fields[field].validation_alias
        if isinstance(alias, AliasChoices) and isinstance(alias.choices[0], str):
            return alias.choices[0]
        if isinstance(alias, str):
            return alias
        return f"{ENV_PREFIX}{field}".upper()

    def to_env(self) -> dict[str, str]:
        """The environment that makes `ServerSettings()` in another process equal this object. Unset
        (None) fields are left out, so they stay unset there too."""
        env: dict[str, str] = {}
        for field in type(self).model_fields:
            value = getattr(self, field)
            if value is None:
                continue
            # "1"/"0": the spelling PANELFUSE_AUTH and PANELFUSE_PASSTHROUGH_KEYS have always used.
            env[self.env_name(field)] = ("1" if value else "0") if isinstance(value, bool) else str(value)
        return env


def _describe(cls: type[ServerSettings], error: Any) -> str:
    loc = error.get("loc") or ()
    key = str(loc[0]) if loc else "?"
    name = cls.env_name(key) if key in cls.model_fields else key.upper()  # aliases arrive as the env name
    return f"{name}={error.get('input')!r}: {error.get('msg')}"
