"""`panelfuse ask` (a fusion, or one model with -m) and `panelfuse estimate` (its worst-case cost)."""

from __future__ import annotations

import json
import sys
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from panelfuse.cli.common import ConfigOpt, fail, load_providers, make_console
from panelfuse.cli.progress import ProgressPrinter, money
from panelfuse.pipeline.result import FusionResult
from panelfuse.pipeline.run import Fusion, FusionError
from panelfuse.pricing import PriceTable
from panelfuse.providers.base import ChatRequest, Completion, fold_stream
from panelfuse.providers.errors import ProviderError
from panelfuse.providers.http import run as run_closing
from panelfuse.providers.registry import Providers
from panelfuse.providers.resolve import FusionRoute, UnknownModelError
from panelfuse.spec import FusionSpec, all_presets, spec_from_preset

PresetOpt = Annotated[str | None, typer.Option("--preset", help="quality | budget | fast | local (or a config preset)")]
PanelOpt = Annotated[str | None, typer.Option("--panel", help="comma-separated member model ids")]
JudgeOpt = Annotated[str | None, typer.Option("--judge", help="the judge's model id")]
ModeOpt = Annotated[
    str | None, typer.Option("--mode", help="synthesize | judge-writes | best-of | single | escalate | vote")
]


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
    stream = fusion.stream(messages)
    try:
        async for ev in stream:
            if printer:
                printer.handle(ev)
    finally:
        if printer and stream.result.status != "running":
            printer.totals(stream.result)
    return stream.result


def ask(
    ctx: typer.Context,
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
    providers = load_providers(ctx, config)
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": question}]
    console = make_console()
    try:
        route = providers.route(model, list(all_presets(providers.config.presets))) if model else FusionRoute(None)
    except UnknownModelError as exc:
        raise fail(str(exc), 2) from exc
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
            run_closing(_ask_single(providers, model or "", req, as_json, console))
        except ProviderError as exc:
            raise fail(str(exc)) from exc
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
        raise fail(str(exc), 2) from exc
    fusion = Fusion(spec, providers=providers)
    try:
        result = run_closing(_ask_fusion(fusion, messages, as_json, console))
    except FusionError as exc:
        result = exc.result
    if as_json:
        console.print_json(json.dumps(result.to_dict()))
    if result.status != "completed":
        raise typer.Exit(1)


def estimate(
    ctx: typer.Context,
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
    providers = load_providers(ctx, config)
    try:
        spec = build_spec(providers, preset, panel, judge, None, mode, max_tokens=max_tokens)
    except (KeyError, ValueError) as exc:
        raise fail(str(exc), 2) from exc
    prices = PriceTable.load(providers.config.prices)
    est = Fusion(spec, providers=providers, prices=prices).estimate(question)
    if as_json:
        make_console().print_json(
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
    console = make_console()
    table = Table(title=f"Worst-case estimate (prices as of {prices.as_of})", show_edge=False)
    for col in ("stage", "who", "model", "prompt tokens", "max out", "cost"):
        table.add_column(col)
    for c in est.calls:
        table.add_row(c.stage, c.who, c.model, str(c.prompt_tokens), str(c.max_tokens), money(c.cost))
    console.print(table)
    console.print(f"[bold]worst case: {money(est.total)}[/]")
    if est.unpriced:
        console.print(f"[yellow]no price known for: {', '.join(est.unpriced)} (counted as $0)[/]")
