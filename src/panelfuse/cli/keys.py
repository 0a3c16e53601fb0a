"""`panelfuse keys`: create, list and revoke the gateway's API keys, straight in the store."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from panelfuse.cli.common import DbOpt, fail, make_console, with_store
from panelfuse.cli.progress import money

keys_app = typer.Typer(no_args_is_help=True, help="Create, list and revoke API keys (stored hashed).")


@keys_app.command("create")
def keys_create(
    name: Annotated[str, typer.Option("--name", help="who the key is for")],
    budget: Annotated[float | None, typer.Option("--budget", min=0.0, help="USD this key may spend")] = None,
    rpm: Annotated[int | None, typer.Option("--rpm", min=1, help="requests per minute")] = None,
    concurrent: Annotated[int | None, typer.Option("--concurrent", min=1, help="runs at once")] = None,
    models: Annotated[list[str] | None, typer.Option("--models", help="allowed patterns: 'openrouter/*'")] = None,
    admin: Annotated[bool, typer.Option("--admin", help="sees every key's runs")] = False,
    db: DbOpt = None,
) -> None:
    """Create a key and print it once (only its hash is stored)."""
    patterns = [p for m in models or [] for p in m.split(",") if p.strip()] or None
    new = with_store(
        db,
        lambda store: store.keys.create(
            name, budget_usd=budget, rpm=rpm, max_concurrent=concurrent, models=patterns, is_admin=admin
        ),
    )
    console = make_console()
    console.print(new.secret, markup=False)
    Console(stderr=True, highlight=False).print(
        f"[dim]{new.key.id} ({name}) created; the key above is shown once, store it now.[/]"
    )


@keys_app.command("list")
def keys_list(db: DbOpt = None, as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """List keys: id, name, prefix, budget and spend (never the keys themselves)."""
    keys = with_store(db, lambda store: store.keys.list())
    console = make_console()
    if as_json:
        console.print_json(json.dumps([k.to_dict() for k in keys]))
        return
    table = Table(show_edge=False)
    for col in ("id", "name", "prefix", "admin", "budget", "spent", "reserved", "rpm", "models", "revoked"):
        table.add_column(col)
    for k in keys:
        table.add_row(
            k.id,
            k.name,
            k.prefix + "…",
            "yes" if k.is_admin else "",
            money(k.budget_usd),
            money(k.spent_usd),
            money(k.reserved_usd),
            str(k.rpm or ""),
            ",".join(k.models or []),
            k.revoked_at.isoformat() if k.revoked_at else "",
        )
    console.print(table)


@keys_app.command("revoke")
def keys_revoke(
    id_or_name: Annotated[str, typer.Argument(help="a key id, or a name (revokes all with it)")], db: DbOpt = None
) -> None:
    """Revoke a key: requests with it get 401 from then on."""
    count = with_store(db, lambda store: store.keys.revoke(id_or_name))
    if not count:
        raise fail(f"no active key '{id_or_name}'")
    make_console().print(f"revoked {count} key{'s' if count > 1 else ''}")
