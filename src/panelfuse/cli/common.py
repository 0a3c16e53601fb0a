"""What the commands share: the console, the error exit, the --config option and loading the config."""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Annotated, TypeVar

import typer
from rich.console import Console

from panelfuse.cli.context import CliContext
from panelfuse.config import Config, ConfigError, load_config
from panelfuse.providers.http import run as run_closing
from panelfuse.providers.registry import Providers

if TYPE_CHECKING:
    from panelfuse.store import RunStore

T = TypeVar("T")
DbOpt = Annotated[str | None, typer.Option("--db", help="store URL (default: $PANELFUSE_DB or the SQLite file)")]

ConfigOpt = Annotated[str | None, typer.Option("--config", help="config file (default: $PANELFUSE_CONFIG or user dir)")]


def make_console() -> Console:
    return Console(highlight=False)


def fail(message: str, code: int = 1) -> typer.Exit:
    """Print the error on stderr; the caller raises the returned Exit (so type checkers see the raise)."""
    Console(stderr=True, highlight=False).print(f"[bold red]error:[/] {message}")
    return typer.Exit(code)


def load_config_or_exit(path: str | None) -> Config:
    """The config, or exit 2 with the file and line of what is wrong in it."""
    try:
        return load_config(path)
    except ConfigError as exc:
        raise fail(str(exc), 2) from exc


def load_providers(ctx: typer.Context, config: str | None) -> Providers:
    """The providers of the config this command uses (its own --config, else the top-level one)."""
    try:
        return Providers(load_config(CliContext.of(ctx).config(config)))
    except ConfigError as exc:
        raise fail(str(exc), 2) from exc


def with_store(db: str | None, work: Callable[[RunStore], Awaitable[T]]) -> T:
    """Run `work(store)` on the run store's database (`--db`, else $PANELFUSE_DB, else the SQLite file),
    closed afterwards; a store error exits 1. For the commands that read or change the store directly."""
    from panelfuse.store import RunStore, StoreError  # the store's drivers load only for these commands

    async def go() -> T:
        store = await RunStore.open(db or os.environ.get("PANELFUSE_DB") or RunStore.default_url())
        try:
            return await work(store)
        finally:
            await store.close()

    try:
        return run_closing(go())
    except StoreError as exc:
        raise fail(str(exc)) from exc
