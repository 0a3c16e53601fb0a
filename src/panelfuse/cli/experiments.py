"""`panelfuse experiments`: experiments straight from the store (the gateway's database), like
`panelfuse keys`. `report NAME` writes the report; further commands join this group."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console

from panelfuse.cli.common import DbOpt, fail, load_config_or_exit, make_console, with_store
from panelfuse.cli.context import CliContext
from panelfuse.evals.experiment_grading import GradingRun, grade_sample
from panelfuse.evals.experiment_render import markdown, write_report
from panelfuse.evals.experiment_report import ExperimentDefinitionError, experiment_report, load_inputs
from panelfuse.evals.experiment_stats import ExperimentReport
from panelfuse.evals.grading import Grader
from panelfuse.pricing import PriceTable
from panelfuse.providers.errors import ProviderError
from panelfuse.providers.registry import Providers

if TYPE_CHECKING:
    from panelfuse.store import ExperimentRow, ExperimentStore, RunStore

experiments_app = typer.Typer(
    no_args_is_help=True, help="A/B experiments in the store: list, pause, resume, stop, start, report."
)
ConfigOption = Annotated[str | None, typer.Option("--config", help="panelfuse config file")]


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


# ---- state: the same changes as the admin API, straight in the store (a running gateway sees them
# within 2 s; its shadows in flight run to their end, where the API would cancel them) ----


def _state_change(db: str | None, name: str, change: Callable[[ExperimentStore, ExperimentRow], Awaitable[str]]) -> str:
    from panelfuse.store import ExperimentStore

    async def work(store: RunStore) -> str:
        experiments = ExperimentStore(store.database)
        row = await experiments.get(name)
        if row is None:
            raise fail(f"no experiment '{name}' in the store (a config file's is stored when the gateway starts)")
        return await change(experiments, row)

    return with_store(db, work)


def _arm_names(row: ExperimentRow) -> tuple[list[str], list[str]]:
    """(every arm, the primary arms) of a stored experiment."""
    arms = row.definition.get("arms", [])
    return [a["name"] for a in arms], [a["name"] for a in arms if not a.get("shadow")]


@experiments_app.command("list")
def list_cmd(db: DbOpt = None) -> None:
    """The stored experiments: status, arms (paused ones marked), the chosen arm once stopped."""

    async def work(store: RunStore) -> list[ExperimentRow]:
        from panelfuse.store import ExperimentStore

        return await ExperimentStore(store.database).all()

    rows = with_store(db, work)
    console = make_console()
    if not rows:
        console.print("no experiments", markup=False)
    for row in rows:
        arms, _ = _arm_names(row)
        shown = ", ".join(f"{a} (paused)" if a in row.paused_arms else a for a in arms)
        chosen = f" → {row.chosen_arm}" if row.status == "stopped" else ""
        models = ", ".join(row.definition.get("models", []))
        console.print(f"{row.name}: {row.status}{chosen}; {models}; arms: {shown} [{row.source}]", markup=False)


@experiments_app.command("pause")
def pause_cmd(name: Annotated[str, typer.Argument()], arm: Annotated[str, typer.Argument()], db: DbOpt = None) -> None:
    """Give an arm no traffic (its units go to the other arms; theirs stay where they are)."""

    async def change(experiments: ExperimentStore, row: ExperimentRow) -> str:
        arms, primary = _arm_names(row)
        if arm not in arms:
            raise fail(f"no arm '{arm}' (arms: {', '.join(arms)})")
        paused = {*row.paused_arms, arm}
        if all(a in paused for a in primary):
            raise fail("pausing it would leave no arm to answer; stop the experiment instead")
        await experiments.set_state(name, paused_arms=sorted(paused))
        return f"{name}: {arm} paused"

    make_console().print(_state_change(db, name, change), markup=False)


@experiments_app.command("resume")
def resume_cmd(name: Annotated[str, typer.Argument()], arm: Annotated[str, typer.Argument()], db: DbOpt = None) -> None:
    """Give a paused arm its traffic back (the same units as before)."""

    async def change(experiments: ExperimentStore, row: ExperimentRow) -> str:
        await experiments.set_state(name, paused_arms=[a for a in row.paused_arms if a != arm])
        return f"{name}: {arm} resumed"

    make_console().print(_state_change(db, name, change), markup=False)


@experiments_app.command("stop")
def stop_cmd(
    name: Annotated[str, typer.Argument()],
    arm: Annotated[
        str | None, typer.Option("--arm", help="the arm that takes all traffic (default: the control)")
    ] = None,
    db: DbOpt = None,
) -> None:
    """Stop the experiment: all its traffic goes to the chosen arm and is no longer recorded."""

    async def change(experiments: ExperimentStore, row: ExperimentRow) -> str:
        arms, primary = _arm_names(row)
        chosen = arm or primary[0]
        if chosen not in arms:
            raise fail(f"no arm '{chosen}' (arms: {', '.join(arms)})")
        await experiments.set_state(name, status="stopped", chosen_arm=chosen)
        return f"{name}: stopped; all traffic to {chosen}"

    make_console().print(_state_change(db, name, change), markup=False)


@experiments_app.command("start")
def start_cmd(name: Annotated[str, typer.Argument()], db: DbOpt = None) -> None:
    """Run a stopped experiment again."""

    async def change(experiments: ExperimentStore, row: ExperimentRow) -> str:
        await experiments.set_state(name, status="running")
        return f"{name}: running"

    make_console().print(_state_change(db, name, change), markup=False)
