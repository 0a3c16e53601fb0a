"""The object the top-level callback hands every command through typer's context (`ctx.obj`): the
options given before the command name. Passed explicitly, so no module keeps them in a global."""

from __future__ import annotations

from dataclasses import dataclass

import typer


@dataclass(frozen=True)
class CliContext:
    config_path: str | None = None  # the top-level --config

    def config(self, own: str | None) -> str | None:
        """The config file a command uses: its own --config wins over the top-level one."""
        return own or self.config_path

    @classmethod
    def of(cls, ctx: typer.Context) -> CliContext:
        """The object the callback stored (subcommands inherit it from their parents); a default one
        when no callback ran, e.g. a command's function invoked on its own."""
        found = ctx.find_object(cls)
        return found if found is not None else cls()
