"""The eval report: `report.md` (tables), `summary.csv` (one row per configuration), `tasks.csv`
(one row per configuration and task) and `score_vs_cost.png` (matplotlib, no GUI backend)."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from panelfuse.evals.bootstrap import percentile
from panelfuse.evals.prompts import GRADER_PROMPT_VERSION
from panelfuse.evals.runner import EvalData
from panelfuse.evals.summary import ConfigSummary, EvalSummary

RESAMPLES_NOTE = "seeded percentile bootstrap over tasks"


@dataclass
class ReportFiles:
    markdown: Path
    summary_csv: Path
    tasks_csv: Path
    plot: Path | None
    plot_error: str | None = None


def _num(x: float | None, digits: int = 3) -> str:
    return "—" if x is None else f"{x:.{digits}f}"


def _money(x: float | None) -> str:
    if x is None:
        return "n/a"
    return f"${x:.4f}" if x >= 0.01 or x == 0 else f"${x:.6f}"


def _secs(ms: float | None) -> str:
    if ms is None:
        return "—"
    return f"{ms:.0f} ms" if ms < 1000 else f"{ms / 1000:.1f} s"


def markdown(summary: EvalSummary) -> str:
    s = summary
    lines = [
        f"# Eval: {s.name}",
        "",
        f"Grader: `{s.grader}` (prompt {GRADER_PROMPT_VERSION}) · tasks: {s.tasks} · passes: {s.passes} · "
        f"interval: {round(s.confidence * 100)}% {RESAMPLES_NOTE} (seed {s.seed})",
        "",
    ]
    head = [
        "Configuration",
        "Score",
        f"{round(s.confidence * 100)}% CI",
        "Pass rate",
        *s.sections,
        "Cost/task",
        "Tokens/task",
        "Latency p50",
        "Latency p90",
        "Failures",
        "Coverage",
    ]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for c in s.configs:
        ci = "—" if c.ci_low is None else f"{c.ci_low:.3f}–{c.ci_high:.3f}"
        cost = _money(c.cost_per_task) + (
            f" ({c.unpriced_answers} unpriced)" if c.unpriced_answers and c.cost_per_task is not None else ""
        )
        row = [
            f"`{c.label}`",
            _num(c.mean),
            ci,
            _num(c.pass_rate),
            *(_num(c.sections.get(k)) for k in s.sections),
            cost,
            _num(c.tokens_per_task, 0),
            _secs(c.latency_p50_ms),
            _secs(c.latency_p90_ms),
            f"{c.failures}/{c.answers}",
            f"{c.coverage:.0%}",
        ]
        lines.append("| " + " | ".join(row) + " |")
    if len(s.configs) > 1:
        labels = [c.label for c in s.configs]
        lines += [
            "",
            "## Pairwise, per task (row against column: wins / ties / losses)",
            "",
            "| | " + " | ".join(f"`{lb}`" for lb in labels) + " |",
            "|" + "---|" * (len(labels) + 1),
        ]
        for a in labels:
            cells = ["—" if a == b else "{} / {} / {}".format(*s.pairwise[(a, b)]) for b in labels]
            lines.append(f"| `{a}` | " + " | ".join(cells) + " |")
    lines += ["", "## Configurations", ""]
    for c in s.configs:
        grading = _money(c.grading_cost)
        lines.append(
            f"- `{c.label}`: {c.description}. Grading cost {grading}; grader failures "
            f"{c.grader_failures} (excluded from scores)."
        )
    lines += [
        "",
        "Score: per task and pass, Σ weights of MET criteria / Σ positive weights, clamped to [0, 1] "
        "(DRACO); averaged over passes, then over tasks. A failed answer scores 0. Coverage: criteria "
        "with a verdict among those asked about successful answers.",
        "",
    ]
    return "\n".join(lines)


def _summary_rows(summary: EvalSummary) -> tuple[list[str], list[list[Any]]]:
    head = [
        "label",
        "description",
        "mean_score",
        "ci_low",
        "ci_high",
        "pass_rate",
        *(f"section:{k}" for k in summary.sections),
        "cost_per_task_usd",
        "unpriced_answers",
        "tokens_per_task",
        "latency_p50_ms",
        "latency_p90_ms",
        "answers",
        "failures",
        "graded",
        "criteria",
        "coverage",
        "grader_failures",
        "grading_cost_usd",
    ]
    rows = []
    for c in summary.configs:
        rows.append(
            [
                c.label,
                c.description,
                c.mean,
                c.ci_low,
                c.ci_high,
                c.pass_rate,
                *(c.sections.get(k) for k in summary.sections),
                c.cost_per_task,
                c.unpriced_answers,
                c.tokens_per_task,
                c.latency_p50_ms,
                c.latency_p90_ms,
                c.answers,
                c.failures,
                c.graded,
                c.criteria,
                round(c.coverage, 6),
                c.grader_failures,
                c.grading_cost,
            ]
        )
    return head, rows


def _task_rows(summary: EvalSummary, data: EvalData) -> tuple[list[str], list[list[Any]]]:
    head = [
        "config",
        "task_id",
        "domain",
        "score",
        "pass_rate",
        "passes",
        "failed_answers",
        "graded",
        "criteria",
        *(f"section:{k}" for k in summary.sections),
        "cost_usd",
        "latency_p50_ms",
    ]
    domain = {t.id: t.domain for t in data.tasks}
    rows = []
    for c in summary.configs:
        for task in data.tasks:
            ts = c.task_scores.get(task.id)
            if ts is None:
                continue
            answers = [
                a
                for a in data.answers.values()
                if a.config_label == c.label and a.task_id == task.id and a.pass_index < data.passes
            ]
            costs = [a.cost for a in answers if a.cost is not None]
            lat = [float(a.latency_ms) for a in answers if a.status == "ok"]
            rows.append(
                [
                    c.label,
                    task.id,
                    domain[task.id],
                    ts.score,
                    ts.pass_rate,
                    ts.passes,
                    ts.answer_failed,
                    ts.graded,
                    ts.criteria,
                    *(ts.sections.get(k) for k in summary.sections),
                    sum(costs) / len(costs) if costs else None,
                    percentile(lat, 50) if lat else None,
                ]
            )
    return head, rows


def _write_csv(path: Path, head: list[str], rows: list[list[Any]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(head)
        w.writerows([["" if v is None else v for v in row] for row in rows])


def plot_score_vs_cost(configs: list[ConfigSummary], path: Path, title: str) -> None:
    """Score (with its interval) against cost per task, one labelled point per configuration.
    Uses a bare Figure with the Agg canvas: no pyplot global state, no display needed."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.5, 5), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    points = [(c, c.mean) for c in configs if c.mean is not None]
    known = [c.cost_per_task for c, _ in points if c.cost_per_task]
    log_x = bool(known) and len(known) == len(points) and max(known) / min(known) > 50
    for c, mean in points:
        x = c.cost_per_task or 0.0
        low = c.ci_low if c.ci_low is not None else mean
        high = c.ci_high if c.ci_high is not None else mean
        ax.errorbar([x], [mean], yerr=[[mean - low], [high - mean]], fmt="o", capsize=4)
        label = c.label if c.cost_per_task is not None else f"{c.label} (cost unknown)"
        ax.annotate(label, (x, mean), textcoords="offset points", xytext=(6, 6), fontsize=9)
    if log_x:
        ax.set_xscale("log")
    ax.set_xlabel("cost per task (USD)")
    ax.set_ylabel("score (mean over tasks, 95% CI)")
    ax.set_ylim(-0.02, 1.05)
    ax.margins(x=0.15)  # room for the labels of the outermost points
    ax.set_title(title, fontsize=10)
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)


def write_report(summary: EvalSummary, data: EvalData, out_dir: Path) -> ReportFiles:
    out_dir.mkdir(parents=True, exist_ok=True)
    md = out_dir / "report.md"
    md.write_text(markdown(summary), encoding="utf-8")
    summary_csv, tasks_csv = out_dir / "summary.csv", out_dir / "tasks.csv"
    _write_csv(summary_csv, *_summary_rows(summary))
    _write_csv(tasks_csv, *_task_rows(summary, data))
    plot_path = out_dir / "score_vs_cost.png"
    plot: Path | None = plot_path
    error = None
    try:
        title = f"{Path(summary.name).name or summary.name} · grader {summary.grader}"
        plot_score_vs_cost(summary.configs, plot_path, title)
    except ImportError:  # matplotlib is in the [eval] extra; the tables do not need it
        plot, error = None, "matplotlib is not installed (pip install 'panelfuse[eval]'): no plot"
    if plot is not None:
        with md.open("a", encoding="utf-8") as fh:
            fh.write(f"\n![score against cost per task]({plot.name})\n")
    return ReportFiles(md, summary_csv, tasks_csv, plot, error)
