"""The `panelfuse` Typer app: the top-level --config, and every command group registered in one place
(the order here is the order `panelfuse --help` lists them)."""

from __future__ import annotations

import typer

from panelfuse.cli.ask import ask, estimate
from panelfuse.cli.common import ConfigOpt
from panelfuse.cli.config_cmd import config_app
from panelfuse.cli.context import CliContext
from panelfuse.cli.experiments import experiments_app
from panelfuse.cli.index import index_cmd
from panelfuse.cli.keys import keys_app
from panelfuse.cli.mcp import mcp
from panelfuse.cli.models import models_app
from panelfuse.cli.serve import serve
from panelfuse.evals.cli import eval_command

app = typer.Typer(no_args_is_help=True, add_completion=False, help="panelfuse: an open, self-hosted Fusion API.")


@app.callback()
def _main(ctx: typer.Context, config: ConfigOpt = None) -> None:
    # Commands read this from their context (CliContext.of); a command's own --config still wins.
    ctx.obj = CliContext(config_path=config)


app.add_typer(config_app, name="config")
app.command("eval")(eval_command)
app.command()(ask)
app.command()(estimate)
app.add_typer(models_app, name="models")
app.command()(serve)
app.command()(mcp)
app.add_typer(keys_app, name="keys")
app.add_typer(experiments_app, name="experiments")
app.command("index")(index_cmd)


def main() -> None:
    app()
