"""`panelfuse experiments`: experiments straight from the store (the gateway's database), like
`panelfuse keys`. `report NAME` writes the report; further commands join this group."""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, TypeVar

import typer
from rich.console import Console

from panelfuse.cli.common import fail, load_config_or_exit, make_console
from panelfuse.cli.context import CliContext
from panelfuse.evals.experiment_grading import GradingRun, grade_sample
from panelfuse.evals.experiment_render import markdown, write_report
from panelfuse.evals.experiment_report import ExperimentDefinitionError, experiment_report, load_inputs
from panelfuse.evals.experiment_stats import ExperimentReport
from panelfuse.evals.grading import Grader
from panelfuse.pricing import PriceTable
from panelfuse.providers.errors import ProviderError
from panelfuse.providers.http import run as run_closing
from panelfuse.providers.registry import Providers

if TYPE_CHECKING:
    from panelfuse.store import RunStore

experiments_app = typer.Typer(no_args_is_help=True, help="A/B experiments, read from the store: reports.")
DbOpt = Annotated[str | None, typer.Option("--db", help="store URL (default: $PANELFUSE_DB or the SQLite file)")]
ConfigOption = Annotated[str | None, typer.Option("--config", help="panelfuse config file")]
T = TypeVar("T")


def with_store(db: str | None, work: Callable[[RunStore], Awaitable[T]]) -> T:
    """Run `work(store)` on the run store's database, closed afterwards; a store error exits 1."""
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


@experiments_app.command("report")
def report_cmd(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="the experiment's name")],
    out: Annotated[Path | None, typer.Option("--out", help="report directory (default: experiment-NAME)")] = None,
    monthly_requests: Annotated[
        int | None, typer.Option("--monthly-requests", min=1, help="project the monthly cost at this volume")
    ] = None,
    grade: Annotated[
        bool, typer.Option("--grade", help="first grade the sample's ungraded answers (the grader's calls cost)")
    ] = False,
    seed: Annotated[int, typer.Option("--seed", help="bootstrap seed")] = 0,
    db: DbOpt = None,
    config: ConfigOption = None,
) -> None:
    """Per arm: requests, cost, latency, failure/degraded rates, cached share, feedback and rubric
    scores; differences against the control with bootstrap intervals; the projected monthly cost.
    Writes report.md, report.csv and report.png to --out and prints the markdown."""
    cfg = load_config_or_exit(CliContext.of(ctx).config(config))
    providers = Providers(cfg)
    err = Console(stderr=True, highlight=False)

    async def work(store: RunStore) -> tuple[ExperimentReport | None, GradingRun | None]:
        inputs = await load_inputs(store.database, name, cfg.experiments)
        if inputs is None:
            return None, None
        grader_spec = inputs.spec.grader
        graded = None
        if grade and grader_spec is not None:
            try:
                grader = Grader(providers, grader_spec.model, PriceTable.load(cfg.prices))
            except (ProviderError, LookupError) as exc:
                raise fail(f"grader '{grader_spec.model}': {exc}") from exc
            err.print(f"grading the sample with {grader.qualified}…", markup=False)
            graded = await grade_sample(store.database, grader, name, inputs.spec, inputs.rows)
        rep = await experiment_report(
            store.database, name, cfg.experiments, providers=providers, monthly_requests=monthly_requests, seed=seed
        )
        return rep, graded

    try:
        report, graded = with_store(db, work)
    except ExperimentDefinitionError as exc:
        raise fail(str(exc)) from exc
    if report is None:
        raise fail(f"no experiment '{name}' (neither in the store nor in the config)")
    if grade and report.grader_model is None:
        err.print("[yellow]this experiment has no grader configured: nothing to grade[/]")
    elif graded is not None:
        cost = "" if graded.cost is None else f", ${graded.cost:.4f}"
        err.print(f"graded {graded.calls} criteria ({graded.failures} failed{cost})", markup=False)
    files = write_report(report, out or Path(f"experiment-{name}"))
    make_console().print(markdown(report), markup=False, soft_wrap=True)
    for path in (files.markdown, files.csv, files.plot):
        if path is not None:
            err.print(f"wrote {path}", markup=False)
    if files.plot_error:
        err.print(f"[yellow]{files.plot_error}[/]")
