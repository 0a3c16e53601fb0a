"""`panelfuse serve`: the gateway under uvicorn, in one or several worker processes."""

from __future__ import annotations

import os
from typing import Annotated, Any

import typer

from panelfuse.cli.common import ConfigOpt, fail, load_config_or_exit
from panelfuse.cli.context import CliContext
from panelfuse.settings import ServerSettings, SettingsError


def serve(
    ctx: typer.Context,
    host: Annotated[str, typer.Option("--host")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=0, max=65535)] = 8000,
    db: Annotated[str | None, typer.Option("--db", help="store URL (default: SQLite in the user data dir)")] = None,
    workers: Annotated[int, typer.Option("--workers", min=1, help="worker processes sharing the store")] = 1,
    shutdown_grace: Annotated[float, typer.Option("--shutdown-grace", min=0.0, help="seconds to finish runs")] = 20.0,
    log_level: Annotated[str, typer.Option("--log-level")] = "info",
    auth: Annotated[bool | None, typer.Option("--auth/--no-auth", help="default: on if keys exist")] = None,
    passthrough_keys: Annotated[bool, typer.Option("--passthrough-keys", help="use callers' own keys")] = False,
    allowed_hosts: Annotated[
        str | None,
        typer.Option("--allowed-hosts", help="with auth off, host names besides loopback a request may use (a,b)"),
    ] = None,
    redis: Annotated[str | None, typer.Option("--redis", help="Redis URL: rate limits shared by all processes")] = None,
    retain_days: Annotated[float | None, typer.Option("--retain-days", min=0.0, help="purge old runs' content")] = None,
    config: ConfigOpt = None,
) -> None:
    """Run the OpenAI-compatible gateway (POST /v1/chat/completions, the runs API, /docs).

    The admin key, if any, comes from $PANELFUSE_ADMIN_KEY (never from the command line, where it would
    show in the process list)."""
    from panelfuse.cli.quiet_server import run_uvicorn  # only this command needs the server stack

    config_path = CliContext.of(ctx).config(config)
    load_config_or_exit(config_path)  # fail here, with file and line, not in every worker
    # Options left out (None) are not passed, so the environment's value stands, as do the settings with
    # no option at all (PANELFUSE_DB_SCHEMA, PANELFUSE_ADMIN_KEY, ...). --passthrough-keys can only turn on.
    given: dict[str, Any] = {
        "config_path": config_path,
        "db_url": db,
        "shutdown_grace_s": shutdown_grace,
        "host": host,
        "auth": auth,
        "passthrough_keys": True if passthrough_keys else None,
        "allowed_hosts": allowed_hosts,
        "redis_url": redis,
        "retain_days": retain_days,
    }
    try:
        settings = ServerSettings.load(**{k: v for k, v in given.items() if v is not None})
    except SettingsError as exc:  # a bad PANELFUSE_* value: said once here, not by every worker
        raise fail(str(exc), 2) from exc
    # Workers are separate processes: they read their settings from the environment.
    os.environ.update(settings.to_env())
    run_uvicorn(
        "panelfuse.server.app:app_factory",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_level=log_level,
        # Past the runs' grace (server/draining.py cancels them then, and their streams end with an
        # error chunk): only then does the server close what is still open.
        timeout_graceful_shutdown=round(shutdown_grace) + 5,
    )
