"""`panelfuse` command line: ask, models, config show."""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from panelfuse.cli.progress import ProgressPrinter, money
from panelfuse.config import ConfigError, effective_config, load_config
from panelfuse.evals.cli import eval_command
from panelfuse.pipeline.result import FusionResult
from panelfuse.pipeline.run import Fusion, FusionError
from panelfuse.pricing import PriceTable
from panelfuse.providers.base import ChatRequest, Completion, fold_stream
from panelfuse.providers.errors import ProviderError
from panelfuse.providers.registry import Providers
from panelfuse.providers.resolve import FusionRoute, UnknownModelError
from panelfuse.spec import FusionSpec, all_presets, preset_model_ids, spec_from_preset, verify_model_ids

app = typer.Typer(no_args_is_help=True, add_completion=False, help="panelfuse: an open, self-hosted Fusion API.")
config_app = typer.Typer(no_args_is_help=True, help="Inspect the configuration.")
app.add_typer(config_app, name="config")
app.command("eval")(eval_command)

ConfigOpt = Annotated[str | None, typer.Option("--config", help="config file (default: $PANELFUSE_CONFIG or user dir)")]


class State:
    config_path: str | None = None


def _console() -> Console:
    return Console(highlight=False)


def _err(message: str, code: int = 1) -> typer.Exit:
    Console(stderr=True, highlight=False).print(f"[bold red]error:[/] {message}")
    return typer.Exit(code)


def _providers(config_path: str | None) -> Providers:
    try:
        return Providers(load_config(config_path or State.config_path))
    except ConfigError as exc:
        raise _err(str(exc), 2) from exc


@app.callback()
def _main(config: ConfigOpt = None) -> None:
    State.config_path = config


def completion_json(c: Completion) -> dict[str, Any]:
    return {
        "model": c.model,
        "content": c.text,
        "finish_reason": c.finish_reason,
        "tool_calls": [t.to_openai() for t in c.tool_calls],
        "usage": c.usage.to_dict(),
        "latency_ms": c.latency_ms,
    }


async def _ask_single(providers: Providers, model: str, req: ChatRequest, as_json: bool, console: Console) -> None:
    provider, route = providers.for_model(model)
    req.model = route.model

    async def tee() -> Any:
        async for ev in provider.stream(req):
            if ev.text and not as_json:
                console.print(ev.text, end="", soft_wrap=True)
            yield ev

    completion = await fold_stream(route.model, tee())
    completion.model = route.qualified
    if as_json:
        console.print_json(json.dumps(completion_json(completion)))
    else:
        console.print()
        u = completion.usage
        console.print(
            f"[dim]{route.qualified} · {u.prompt_tokens} in / {u.completion_tokens} out tokens"
            f" · {completion.latency_ms} ms · finish: {completion.finish_reason}[/]"
        )


def build_spec(
    providers: Providers,
    preset: str | None,
    panel: str | None = None,
    judge: str | None = None,
    synthesizer: str | None = None,
    mode: str | None = None,
    **overrides: Any,
) -> FusionSpec:
    presets = all_presets(providers.config.presets)
    spec_overrides: dict[str, Any] = {k: v for k, v in overrides.items() if v is not None}
    if panel:
        spec_overrides["members"] = [m.strip() for m in panel.split(",") if m.strip()]
    if judge:
        spec_overrides["judge"] = judge
    if synthesizer:
        spec_overrides["synthesizer"] = {"model": synthesizer}
    if mode:
        spec_overrides["mode"] = mode
    return spec_from_preset(preset or providers.default_preset(), presets, **spec_overrides)


async def _ask_fusion(fusion: Fusion, messages: list[dict[str, Any]], as_json: bool, console: Console) -> FusionResult:
    printer = None if as_json else ProgressPrinter(console)
    try:
        async for ev in fusion.stream(messages):
            if printer:
                printer.handle(ev)
    finally:
        if printer and fusion.result is not None and fusion.result.status != "running":
            printer.totals(fusion.result)
    assert fusion.result is not None
    return fusion.result


PresetOpt = Annotated[str | None, typer.Option("--preset", help="quality | budget | fast | local (or a config preset)")]
PanelOpt = Annotated[str | None, typer.Option("--panel", help="comma-separated member model ids")]
JudgeOpt = Annotated[str | None, typer.Option("--judge", help="the judge's model id")]
ModeOpt = Annotated[str | None, typer.Option("--mode", help="synthesize | judge-writes | best-of | single")]


@app.command()
def ask(
    question: Annotated[str, typer.Argument(help="the question; '-' reads it from standard input")],
    model: Annotated[str | None, typer.Option("-m", "--model", help="one model, or a fusion alias")] = None,
    preset: PresetOpt = None,
    panel: PanelOpt = None,
    judge: JudgeOpt = None,
    synthesizer: Annotated[str | None, typer.Option("--synthesizer", help="default: the judge's model")] = None,
    mode: ModeOpt = None,
    quorum: Annotated[int | None, typer.Option("--quorum", min=1)] = None,
    grace_ms: Annotated[int | None, typer.Option("--grace-ms", min=0)] = None,
    max_cost: Annotated[float | None, typer.Option("--max-cost", min=0.0, help="USD")] = None,
    system: Annotated[str | None, typer.Option("--system", help="a system prompt")] = None,
    max_tokens: Annotated[int | None, typer.Option("--max-tokens", min=1, help="per inner call")] = None,
    temperature: Annotated[float | None, typer.Option("--temperature", min=0.0, max=2.0)] = None,
    seed: Annotated[int | None, typer.Option("--seed", help="single-model calls")] = None,
    timeout: Annotated[float | None, typer.Option("--timeout", min=0.1, help="deadline per call, seconds")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the whole result as JSON")] = False,
    config: ConfigOpt = None,
) -> None:
    """Ask a question: a fusion by default (the default preset), or one model with -m."""
    if question == "-":
        question = sys.stdin.read()
    providers = _providers(config)
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": question}]
    console = _console()
    try:
        route = providers.route(model, list(all_presets(providers.config.presets))) if model else FusionRoute(None)
    except UnknownModelError as exc:
        raise _err(str(exc), 2) from exc
    if not isinstance(route, FusionRoute):
        req = ChatRequest(
            model="",
            messages=messages,
            max_tokens=max_tokens or 512,
            temperature=temperature,
            seed=seed,
            timeout=timeout,
        )
        try:
            asyncio.run(_ask_single(providers, model or "", req, as_json, console))
        except ProviderError as exc:
            raise _err(str(exc)) from exc
        return
    try:
        spec = build_spec(
            providers,
            preset or route.preset,
            panel,
            judge,
            synthesizer,
            mode,
            quorum=quorum,
            grace_ms=grace_ms,
            max_cost=max_cost,
            max_tokens=max_tokens,
            temperature=temperature,
            deadline_ms=int(timeout * 1000) if timeout else None,
        )
    except (KeyError, ValueError) as exc:
        raise _err(str(exc), 2) from exc
    fusion = Fusion(spec, providers=providers)
    try:
        result = asyncio.run(_ask_fusion(fusion, messages, as_json, console))
    except FusionError as exc:
        result = exc.result
    if as_json:
        console.print_json(json.dumps(result.to_dict()))
    if result.status != "completed":
        raise typer.Exit(1)


@app.command()
def estimate(
    question: Annotated[str, typer.Argument(help="the question; '-' reads it from standard input")],
    preset: PresetOpt = None,
    panel: PanelOpt = None,
    judge: JudgeOpt = None,
    mode: ModeOpt = None,
    max_tokens: Annotated[int | None, typer.Option("--max-tokens", min=1)] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
    config: ConfigOpt = None,
) -> None:
    """Print the worst-case cost of a fusion before running it (see panelfuse.pricing for the formula)."""
    if question == "-":
        question = sys.stdin.read()
    providers = _providers(config)
    try:
        spec = build_spec(providers, preset, panel, judge, None, mode, max_tokens=max_tokens)
    except (KeyError, ValueError) as exc:
        raise _err(str(exc), 2) from exc
    prices = PriceTable.load(providers.config.prices)
    est = Fusion(spec, providers=providers, prices=prices).estimate(question)
    if as_json:
        _console().print_json(
            json.dumps(
                {
                    "total": est.total,
                    "by_stage": est.by_stage(),
                    "unpriced": est.unpriced,
                    "prices_as_of": prices.as_of,
                    "calls": [c.__dict__ for c in est.calls],
                }
            )
        )
        return
    console = _console()
    table = Table(title=f"Worst-case estimate (prices as of {prices.as_of})", show_edge=False)
    for col in ("stage", "who", "model", "prompt tokens", "max out", "cost"):
        table.add_column(col)
    for c in est.calls:
        table.add_row(c.stage, c.who, c.model, str(c.prompt_tokens), str(c.max_tokens), money(c.cost))
    console.print(table)
    console.print(f"[bold]worst case: {money(est.total)}[/]")
    if est.unpriced:
        console.print(f"[yellow]no price known for: {', '.join(est.unpriced)} (counted as $0)[/]")


models_app = typer.Typer(help="List models, or check the presets' model ids against the providers.")
app.add_typer(models_app, name="models")


@models_app.callback(invoke_without_command=True)
def models(ctx: typer.Context, config: ConfigOpt = None) -> None:
    """List the configured providers' models (asks each provider that has a key; offline: the local model)."""
    if ctx.invoked_subcommand is not None:
        return
    providers = _providers(config)
    console = _console()
    listed = asyncio.run(_list_all(providers, console))
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
def models_check(config: ConfigOpt = None) -> None:
    """Confirm every preset's model ids against its provider's model list (needs the provider's key)."""
    providers = _providers(config)
    console = _console()
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
    listed = asyncio.run(_list_all(providers, console, {r[2] for r in rows}))
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


@app.command()
def serve(
    host: Annotated[str, typer.Option("--host")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=0, max=65535)] = 8000,
    db: Annotated[str | None, typer.Option("--db", help="store URL (default: SQLite in the user data dir)")] = None,
    workers: Annotated[int, typer.Option("--workers", min=1, help="worker processes sharing the store")] = 1,
    shutdown_grace: Annotated[float, typer.Option("--shutdown-grace", min=0.0, help="seconds to finish runs")] = 20.0,
    log_level: Annotated[str, typer.Option("--log-level")] = "info",
    auth: Annotated[bool | None, typer.Option("--auth/--no-auth", help="default: on if keys exist")] = None,
    passthrough_keys: Annotated[bool, typer.Option("--passthrough-keys", help="use callers' own keys")] = False,
    redis: Annotated[str | None, typer.Option("--redis", help="Redis URL: rate limits shared by all processes")] = None,
    retain_days: Annotated[float | None, typer.Option("--retain-days", min=0.0, help="purge old runs' content")] = None,
    config: ConfigOpt = None,
) -> None:
    """Run the OpenAI-compatible gateway (POST /v1/chat/completions, the runs API, /docs).

    The admin key, if any, comes from $PANELFUSE_ADMIN_KEY (never from the command line, where it would
    show in the process list)."""
    import os

    import uvicorn

    try:
        load_config(config or State.config_path)  # fail here, with file and line, not in every worker
    except ConfigError as exc:
        raise _err(str(exc), 2) from exc
    # Workers are separate processes: they read their settings from the environment.
    if config or State.config_path:
        os.environ["PANELFUSE_CONFIG"] = str(config or State.config_path)
    if db:
        os.environ["PANELFUSE_DB"] = db
    os.environ["PANELFUSE_SHUTDOWN_GRACE_S"] = str(shutdown_grace)
    os.environ["PANELFUSE_HOST"] = host
    if auth is not None:
        os.environ["PANELFUSE_AUTH"] = "1" if auth else "0"
    if passthrough_keys:
        os.environ["PANELFUSE_PASSTHROUGH_KEYS"] = "1"
    if redis:
        os.environ["PANELFUSE_REDIS"] = redis
    if retain_days is not None:
        os.environ["PANELFUSE_RETAIN_DAYS"] = str(retain_days)
    uvicorn.run(
        "panelfuse.server.app:app_factory",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_level=log_level,
        timeout_graceful_shutdown=max(1, round(shutdown_grace)),
    )


keys_app = typer.Typer(no_args_is_help=True, help="Create, list and revoke API keys (stored hashed).")
app.add_typer(keys_app, name="keys")
DbOpt = Annotated[str | None, typer.Option("--db", help="store URL (default: $PANELFUSE_DB or the SQLite file)")]


def _with_store(db: str | None, work: Any) -> Any:
    import os

    from panelfuse.store import RunStore, StoreError

    async def go() -> Any:
        store = await RunStore.open(db or os.environ.get("PANELFUSE_DB") or RunStore.default_url())
        try:
            return await work(store)
        finally:
            await store.close()

    try:
        return asyncio.run(go())
    except StoreError as exc:
        raise _err(str(exc)) from exc


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
    new = _with_store(
        db,
        lambda store: store.keys.create(
            name, budget_usd=budget, rpm=rpm, max_concurrent=concurrent, models=patterns, is_admin=admin
        ),
    )
    console = _console()
    console.print(new.secret, markup=False)
    Console(stderr=True, highlight=False).print(
        f"[dim]{new.key.id} ({name}) created; the key above is shown once, store it now.[/]"
    )


@keys_app.command("list")
def keys_list(db: DbOpt = None, as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """List keys: id, name, prefix, budget and spend (never the keys themselves)."""
    keys = _with_store(db, lambda store: store.keys.list())
    console = _console()
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
    count = _with_store(db, lambda store: store.keys.revoke(id_or_name))
    if not count:
        raise _err(f"no active key '{id_or_name}'")
    _console().print(f"revoked {count} key{'s' if count > 1 else ''}")


@app.command("index")
def index_cmd(
    folder: Annotated[str, typer.Argument(help="a folder of .txt, .md and .html files (PDF: index its text)")],
    out: Annotated[
        str | None,
        typer.Option(
            "--out",
            help="the index file (default: corpus.db in the user data "
            "dir, where web_search looks unless [tools] corpus_index "
            "says otherwise)",
        ),
    ] = None,
) -> None:
    """Build the local corpus index (SQLite FTS5, BM25) that web_search answers from, offline."""
    from panelfuse.tools.corpus import build_index

    try:
        stats = build_index(folder, out)
    except (NotADirectoryError, OSError) as exc:
        raise _err(str(exc), 2) from exc
    console = _console()
    console.print(f"indexed {stats.files} files ({stats.chunks} passages) into {stats.path}", markup=False)
    for path, why in stats.skipped:
        console.print(f"[yellow]skipped[/] {path}: {why}")


@config_app.command("show")
def config_show(config: ConfigOpt = None) -> None:
    """Print the effective config, secrets masked."""
    try:
        cfg = load_config(config or State.config_path)
    except ConfigError as exc:
        raise _err(str(exc), 2) from exc
    _console().print_json(json.dumps(effective_config(cfg)))


def main() -> None:
    app()
