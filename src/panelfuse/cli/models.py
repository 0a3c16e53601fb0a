"""`panelfuse models`: list the providers' models; `models check`: confirm the presets' model ids."""

from __future__ import annotations

import typer
from rich.console import Console
from rich.table import Table

from panelfuse.cli.common import ConfigOpt, load_providers, make_console
from panelfuse.providers.errors import ProviderError
from panelfuse.providers.http import run as run_closing
from panelfuse.providers.registry import Providers
from panelfuse.spec import all_presets, preset_model_ids, verify_model_ids

models_app = typer.Typer(help="List models, or check the presets' model ids against the providers.")


@models_app.callback(invoke_without_command=True)
def models(ctx: typer.Context, config: ConfigOpt = None) -> None:
    """List the configured providers' models (asks each provider that has a key; offline: the local model)."""
    if ctx.invoked_subcommand is not None:
        return
    providers = load_providers(ctx, config)
    console = make_console()
    listed = run_closing(_list_all(providers, console))
    for name, ids in listed.items():
        for mid in ids or []:
            console.print(f"{name}/{mid}", markup=False)


async def _list_all(providers: Providers, console: Console, only: set[str] | None = None) -> dict[str, set[str] | None]:
    """Each provider's model ids; None where it has no key or could not be asked (said on the console)."""
    out: dict[str, set[str] | None] = {}
    for name in providers.names:
        if only is not None and name not in only:
            continue
        pc = providers.configs[name]
        if pc.kind != "local" and pc.api_key_env and not providers.has_key(name):
            console.print(f"[dim]{name}: not asked (set {pc.api_key_env})[/]")
            out[name] = None
            continue
        try:
            out[name] = set(await providers.get(name).list_models())
        except ProviderError as exc:
            console.print(f"[yellow]{name}: {exc}[/]")
            out[name] = None
    return out


@models_app.command("check")
def models_check(ctx: typer.Context, config: ConfigOpt = None) -> None:
    """Confirm every preset's model ids against its provider's model list (needs the provider's key)."""
    providers = load_providers(ctx, config)
    console = make_console()
    presets = all_presets(providers.config.presets)
    rows: list[tuple[str, str, str, str]] = []
    for pname, preset in presets.items():
        for qualified in preset_model_ids(preset):
            try:
                _, route = providers.for_model(qualified)
            except ProviderError as exc:
                rows.append((pname, qualified, "-", f"unknown provider: {exc.message}"))
                continue
            rows.append((pname, qualified, route.provider, route.model))
    listed = run_closing(_list_all(providers, console, {r[2] for r in rows}))
    checked = verify_model_ids([(q, p, m) for _, q, p, m in rows if p != "-"], listed)
    status = {q: st for q, _, st in checked}
    table = Table(title="Preset model ids", show_edge=False)
    for col in ("preset", "model", "status"):
        table.add_column(col)
    for pname, qualified, _, _ in rows:
        st = status.get(qualified, "unknown provider")
        style = {"verified": "green", "missing": "red"}.get(st, "yellow")
        table.add_row(pname, qualified, f"[{style}]{st}[/]")
    console.print(table)
    if any(st == "missing" for st in status.values()):
        raise typer.Exit(1)
