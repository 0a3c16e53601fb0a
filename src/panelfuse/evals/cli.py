"""`panelfuse eval`: run configurations over a task set, grade, report; resumable."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Protocol, runtime_checkable

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, TaskID, TextColumn, TimeElapsedColumn
from rich.progress import Progress as RichBar
from rich.table import Table

from panelfuse.config import ConfigError, load_config
from panelfuse.evals.configs import ConfigSpecError, EvalConfig, parse_config
from panelfuse.evals.grading import Grader, QAMode
from panelfuse.evals.report import ReportFiles, write_report
from panelfuse.evals.runner import EvalMismatchError, EvalRunner, EvalSettings
from panelfuse.evals.summary import EvalSummary, summarize
from panelfuse.evals.tasks import Task, TaskFormatError, load_tasks
from panelfuse.pricing import PriceTable
from panelfuse.providers.errors import ProviderError
from panelfuse.providers.http import run as run_closing
from panelfuse.providers.registry import Providers
from panelfuse.store import RunStore, StoreError

DEFAULT_CONCURRENCY = 4


@runtime_checkable
class TopLevelOptions(Protocol):
    """What this command reads from the CLI's context object (panelfuse.cli's CliContext): the
    top-level --config. A protocol, not an import: panelfuse.cli registers this command, so importing
    it back would be a cycle."""

    @property
    def config_path(self) -> str | None: ...


def _fail(message: str, code: int = 2) -> typer.Exit:
    Console(stderr=True, highlight=False).print(f"[bold red]error:[/] {message}")
    return typer.Exit(code)


class BarProgress:
    """Two rich progress bars: answers and grades."""

    def __init__(self, console: Console) -> None:
        self.bar = RichBar(
            TextColumn("{task.description:>8}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console
        )
        self.ids: dict[str, TaskID] = {}

    def start(self, answers: int, grades: int) -> None:
        self.ids = {
            "answer": self.bar.add_task("answers", total=answers),
            "grade": self.bar.add_task("grades", total=grades),
        }
        self.bar.start()

    def advance(self, kind: str, n: int = 1) -> None:
        self.bar.advance(self.ids[kind], n)

    def stop(self) -> None:
        self.bar.stop()


async def run_eval(
    tasks: list[Task],
    configs: list[EvalConfig],
    grader: Grader,
    providers: Providers,
    prices: PriceTable,
    settings: EvalSettings,
    db: str | None,
    out: Path,
    *,
    seed: int,
    console: Console,
) -> tuple[EvalSummary, ReportFiles]:
    store = await RunStore.open(db)
    progress = BarProgress(console)
    try:
        runner = EvalRunner(store, providers, grader, prices, settings, progress)
        try:
            data = await runner.run(tasks, configs)
        finally:
            progress.stop()
    finally:
        await store.close()
    summary = summarize(data, seed=seed)
    return summary, write_report(summary, data, out)


def _print_summary(console: Console, summary: EvalSummary, files: ReportFiles) -> None:
    table = Table(title=f"Eval {summary.name}", show_edge=False)
    for col in ("configuration", "score", "95% CI", "pass rate", "cost/task", "p50", "failures", "coverage"):
        table.add_column(col, overflow="fold")  # wrap, never cut: the label is the key to the row
    for c in summary.configs:
        ci = "—" if c.ci_low is None else f"{c.ci_low:.3f}–{c.ci_high:.3f}"
        table.add_row(
            c.label,
            "—" if c.mean is None else f"{c.mean:.3f}",
            ci,
            "—" if c.pass_rate is None else f"{c.pass_rate:.2f}",
            "n/a" if c.cost_per_task is None else f"${c.cost_per_task:.6f}",
            "—" if c.latency_p50_ms is None else f"{c.latency_p50_ms / 1000:.1f}s",
            f"{c.failures}/{c.answers}",
            f"{c.coverage:.0%}",
        )
    console.print(table)
    for path in (files.markdown, files.summary_csv, files.tasks_csv, files.plot):
        if path is not None:
            console.print(f"wrote {path}", markup=False)
    if files.plot_error:
        console.print(f"[yellow]{files.plot_error}[/]")


def _models_of(configs: list[EvalConfig], grader: str) -> list[str]:
    ids = [grader]
    for c in configs:
        if c.model:
            ids.append(c.model)
        if c.spec is not None:
            ids += [m.model for m in c.spec.members] + [c.spec.judge.model, c.spec.synthesizer_model]
    return list(dict.fromkeys(ids))


def _preflight(providers: Providers, models: list[str]) -> tuple[list[str], bool]:
    """Providers that need a key and have none (better said now than after an hour of failed
    calls), and whether any model runs in process (local calls queue behind one lock)."""
    missing: list[str] = []
    local = False
    for model in models:
        try:
            _, route = providers.for_model(model)
        except (ProviderError, LookupError):
            continue  # reported by the call itself
        pc = providers.configs[route.provider]
        local = local or pc.kind == "local"
        if pc.kind != "local" and pc.api_key_env and not providers.has_key(route.provider):
            missing.append(f"{model} (set {pc.api_key_env})")
    return missing, local


def eval_command(
    ctx: typer.Context,
    tasks_file: Annotated[str, typer.Argument(metavar="TASKS", help="DRACO or QA JSONL; 'sample' = the shipped set")],
    configurations: Annotated[
        list[str],
        typer.Option(
            "-c", "--configuration", help="single:MODEL | preset:NAME | a FusionSpec .json/.toml; LABEL=… names it"
        ),
    ],
    grader_model: Annotated[str, typer.Option("--grader", help="the grader's model id")],
    passes: Annotated[int, typer.Option("--passes", min=1, help="answers (and gradings) per task")] = 1,
    out: Annotated[Path, typer.Option("--out", help="report directory")] = Path("eval-results"),
    limit: Annotated[int | None, typer.Option("--limit", min=1, help="only the first N tasks")] = None,
    criteria_limit: Annotated[
        int | None, typer.Option("--criteria-limit", min=1, help="only each task's first N criteria")
    ] = None,
    concurrency: Annotated[
        int | None,
        typer.Option(
            "--concurrency", min=1, help="upstream calls at once (default 4; 1 when a local model is involved)"
        ),
    ] = None,
    name: Annotated[str | None, typer.Option("--name", help="results key in the store (default: --out)")] = None,
    db: Annotated[str | None, typer.Option("--db", help="store URL (default: the run store)")] = None,
    seed: Annotated[int, typer.Option("--seed", help="bootstrap seed")] = 0,
    qa_grading: Annotated[str, typer.Option("--qa-grading", help="QA tasks: match | grader | auto")] = "match",
    max_tokens: Annotated[int | None, typer.Option("--max-tokens", min=1, help="per answer call")] = None,
    timeout: Annotated[float | None, typer.Option("--timeout", min=0.1, help="seconds per upstream call")] = None,
    grader_retries: Annotated[int, typer.Option("--grader-retries", min=0)] = 2,
    retry_failed: Annotated[bool, typer.Option("--retry-failed", help="redo failed answers and grades")] = False,
    config: Annotated[str | None, typer.Option("--config", help="panelfuse config file")] = None,
) -> None:
    """Answer every task with every configuration, grade each answer criterion by criterion (DRACO's
    protocol), and write report.md, summary.csv, tasks.csv and score_vs_cost.png to --out.
    Rerunning the same command resumes: what is stored is not asked again."""
    if qa_grading not in ("match", "grader", "auto"):
        raise _fail(f"--qa-grading must be match, grader or auto, not {qa_grading!r}")
    try:
        # The object the top-level callback stored (subcommands inherit ctx.obj), if any.
        top = ctx.obj if isinstance(ctx.obj, TopLevelOptions) else None
        providers = Providers(load_config(config or (top.config_path if top is not None else None)))
    except ConfigError as exc:
        raise _fail(str(exc)) from exc
    try:
        tasks = load_tasks(tasks_file, limit=limit, criteria_limit=criteria_limit)
    except TaskFormatError as exc:
        raise _fail(str(exc)) from exc
    except OSError as exc:
        raise _fail(f"cannot read {tasks_file}: {exc.strerror or exc}") from exc
    try:
        configs = [parse_config(c, providers, max_tokens=max_tokens, timeout=timeout) for c in configurations]
    except ConfigSpecError as exc:
        raise _fail(str(exc)) from exc
    labels = [c.label for c in configs]
    if len(set(labels)) != len(labels):
        raise _fail(f"two configurations share a label: {labels}; name them with LABEL=…")
    prices = PriceTable.load(providers.config.prices)
    qa_mode: QAMode = qa_grading  # type: ignore[assignment]
    try:
        grader = Grader(providers, grader_model, prices, retries=grader_retries, timeout=timeout, qa_mode=qa_mode)
    except (ProviderError, LookupError) as exc:
        raise _fail(f"grader '{grader_model}': {exc}") from exc
    missing, local = _preflight(providers, _models_of(configs, grader_model))
    if missing:
        raise _fail("no API key for: " + ", ".join(missing))
    # In-process models serve one call at a time: more in flight would only queue into their deadlines.
    concurrency = concurrency or (1 if local else DEFAULT_CONCURRENCY)
    settings = EvalSettings(
        name=name or str(out.resolve()), passes=passes, concurrency=concurrency, retry_failed=retry_failed
    )
    console = Console(highlight=False)
    console.print(
        f"eval [bold]{settings.name}[/]: {len(tasks)} tasks × {len(configs)} configurations × "
        f"{passes} passes · grader {grader.qualified}"
    )
    try:
        summary, files = run_closing(
            run_eval(tasks, configs, grader, providers, prices, settings, db, out, seed=seed, console=console)
        )
    except EvalMismatchError as exc:
        raise _fail(str(exc)) from exc
    except StoreError as exc:
        raise _fail(str(exc), 1) from exc
    except KeyboardInterrupt:
        console.print("\n[yellow]interrupted:[/] what finished is stored; rerun the same command to resume")
        raise typer.Exit(130) from None
    _print_summary(console, summary, files)
