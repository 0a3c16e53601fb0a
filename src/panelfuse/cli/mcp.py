"""`panelfuse mcp`: the MCP server over stdio, for an MCP client that starts it as a subprocess
(the same tools `/mcp` serves on `panelfuse serve`; server/mcp_server.py)."""

from __future__ import annotations

import asyncio
import logging
import sys
from typing import Annotated

import typer

from panelfuse.cli.common import ConfigOpt, fail, load_config_or_exit
from panelfuse.cli.context import CliContext
from panelfuse.settings import ServerSettings, SettingsError


def mcp(
    ctx: typer.Context,
    db: Annotated[str | None, typer.Option("--db", help="store URL (default: SQLite in the user data dir)")] = None,
    redis: Annotated[str | None, typer.Option("--redis", help="Redis URL: rate limits shared with the gateway")] = None,
    config: ConfigOpt = None,
) -> None:
    """Serve the fusion tools over MCP on stdin/stdout (fusion, fusion_result, fusion_estimate,
    fusion_runs). Runs, budgets and limits live in the same store as `panelfuse serve`'s."""
    from panelfuse.server.mcp_server import serve_stdio  # only this command needs the MCP SDK

    config_path = CliContext.of(ctx).config(config)
    cfg = load_config_or_exit(config_path)
    given = {"config_path": config_path, "db_url": db, "redis_url": redis}
    try:
        settings = ServerSettings.load(**{k: v for k, v in given.items() if v is not None})
    except SettingsError as exc:
        raise fail(str(exc), 2) from exc
    # stdout carries the protocol: every log line goes to stderr.
    logging.basicConfig(stream=sys.stderr, level=logging.WARNING)
    asyncio.run(serve_stdio(settings, cfg))
