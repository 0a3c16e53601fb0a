"""`panelfuse` command line: ask, models, config show."""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Annotated, Any

import typer
from rich.console import Console

from panelfuse.config import ConfigError, effective_config, load_config
from panelfuse.providers.base import ChatRequest, Completion, fold_stream
from panelfuse.providers.errors import ProviderError
from panelfuse.providers.registry import Providers

app = typer.Typer(no_args_is_help=True, add_completion=False, help="panelfuse: an open, self-hosted Fusion API.")
config_app = typer.Typer(no_args_is_help=True, help="Inspect the configuration.")
app.add_typer(config_app, name="config")

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


@app.command()
def ask(
    question: Annotated[str, typer.Argument(help="the question; '-' reads it from standard input")],
    model: Annotated[str | None, typer.Option("-m", "--model", help="one model, e.g. local/smollm2")] = None,
    system: Annotated[str | None, typer.Option("--system", help="a system prompt")] = None,
    max_tokens: Annotated[int, typer.Option("--max-tokens", min=1)] = 512,
    temperature: Annotated[float | None, typer.Option("--temperature", min=0.0, max=2.0)] = None,
    seed: Annotated[int | None, typer.Option("--seed")] = None,
    timeout: Annotated[float | None, typer.Option("--timeout", min=0.1, help="deadline per call, seconds")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the whole result as JSON")] = False,
    config: ConfigOpt = None,
) -> None:
    """Ask a question and stream the answer."""
    if question == "-":
        question = sys.stdin.read()
    providers = _providers(config)
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": question}]
    req = ChatRequest(model="", messages=messages, max_tokens=max_tokens, temperature=temperature, seed=seed,
                      timeout=timeout)
    if model is None:
        model = "local/smollm2"
    try:
        asyncio.run(_ask_single(providers, model, req, as_json, _console()))
    except ProviderError as exc:
        raise _err(str(exc)) from exc


@app.command()
def models(config: ConfigOpt = None) -> None:
    """List the configured providers' models (asks each provider that has a key)."""
    providers = _providers(config)
    console = _console()

    async def collect() -> None:
        for name in providers.names:
            pc = providers.configs[name]
            if pc.kind != "local" and pc.api_key_env and not providers.has_key(name):
                console.print(f"[dim]{name}: skipped (set {pc.api_key_env})[/]")
                continue
            try:
                ids = await providers.get(name).list_models()
            except ProviderError as exc:
                console.print(f"[yellow]{name}: {exc}[/]")
                continue
            for mid in ids:
                console.print(f"{name}/{mid}")

    asyncio.run(collect())


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


if __name__ == "__main__":
    main()
