"""`panelfuse config show`: the effective configuration, secrets masked."""

from __future__ import annotations

import json

import typer

from panelfuse.cli.common import ConfigOpt, load_config_or_exit, make_console
from panelfuse.cli.context import CliContext
from panelfuse.config import effective_config

config_app = typer.Typer(no_args_is_help=True, help="Inspect the configuration.")


@config_app.command("show")
def config_show(ctx: typer.Context, config: ConfigOpt = None) -> None:
    """Print the effective config, secrets masked."""
    cfg = load_config_or_exit(CliContext.of(ctx).config(config))
    make_console().print_json(json.dumps(effective_config(cfg)))
