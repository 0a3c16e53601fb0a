"""An experiment report written out: Markdown, CSV (one row per arm, its differences against the
control as columns), a PNG (each arm's differences with their intervals, one panel per metric;
matplotlib from the `[eval]` extra), and JSON (the typed report, through pydantic)."""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter

from panelfuse.evals.experiment_stats import (
    METRIC_LABELS,
    METRICS,
    ArmStats,
    Difference,
    ExperimentReport,
    Metric,
)

NO_MATPLOTLIB = "matplotlib is not installed (pip install 'panelfuse[eval]'): no plot"
_JSON = TypeAdapter(ExperimentReport)


def to_json(report: ExperimentReport) -> dict[str, Any]:
    data: dict[str, Any] = _JSON.dump_python(report, mode="json")
    return {"object": "experiment.report", **data}


def money(x: float | None) -> str:
    if x is None:
        return "—"
    if x == 0 or abs(x) >= 1:
        return f"${x:,.2f}"
    return f"${x:.4f}" if abs(x) >= 0.01 else f"${x:.6f}"


def ms(x: float | None) -> str:
    if x is None:
        return "—"
    return f"{x:.0f} ms" if abs(x) < 1000 else f"{x / 1000:.2f} s"


def pct(x: float | None) -> str:
    return "—" if x is None else f"{x:.1%}"


def num(x: float | None, digits: int = 3) -> str:
    return "—" if x is None else f"{x:.{digits}f}"


def metric_value(metric: Metric, x: float | None, *, signed: bool = False) -> str:
    """A metric's value (or a difference of it, `signed`) in its unit."""
    if x is None:
        return "—"
    sign = "+" if signed and x > 0 else ""
    if metric == "cost_per_request":
        return ("-" if x < 0 else sign) + money(abs(x))
    if metric == "latency_p50_ms":
        return sign + ms(x)
    if metric == "failure_rate":
        return f"{x * 100:+.1f} pp" if signed else pct(x)
    return f"{x:+.3f}" if signed else num(x)


def _role(a: ArmStats) -> str:
    return {"control": "control", "primary": "primary", "shadow": "shadow", "removed": "not in the definition"}[a.role]


def _count_rate(count: int, rate: float | None) -> str:
    return f"{pct(rate)} ({count})"


def arm_table(report: ExperimentReport) -> list[str]:
    head = [
        "Arm",
        "Role",
        "Requests",
        "Cost/request",
        "Total cost",
        "Latency p50",
        "Latency p95",
        "Failure rate",
        "Cancelled",
        "Degraded",
        "Skipped",
        "Cached",
        "Feedback (n, mean)",
    ]
    if report.grader_model:
        head.append("Rubric (graded/sample, mean)")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for a in report.arms:
        unpriced = f" ({a.unpriced} unpriced)" if a.unpriced else ""
        row = [
            f"`{a.arm}`",
            _role(a),
            str(a.requests),
            money(a.cost_per_request) + unpriced,
            money(a.total_cost),
            ms(a.latency_p50_ms),
            ms(a.latency_p95_ms),
            _count_rate(a.failed, a.failure_rate),
            _count_rate(a.cancelled, a.cancelled_rate),
            _count_rate(a.degraded, a.degraded_rate),
            str(a.skipped),
            pct(a.cached_share),
            f"{a.feedback_count}, {num(a.feedback_mean, 2)}",
        ]
        if report.grader_model:
            r = a.rubric
            row.append("—" if r is None else f"{r.graded}/{r.sample}, {num(r.mean)}")
        lines.append("| " + " | ".join(row) + " |")
    return lines


def difference_table(report: ExperimentReport) -> list[str]:
    if not report.differences:
        return ["No differences yet: an arm and the control need observations of the same metric."]
    level = round(report.confidence * 100)
    lines = [
        f"| Arm | Metric | Arm | Control | Difference | {level}% CI | n (arm / control) |",
        "|---|---|---|---|---|---|---|",
    ]
    for d in report.differences:
        ci = f"{metric_value(d.metric, d.ci_low, signed=True)} to {metric_value(d.metric, d.ci_high, signed=True)}"
        mark = " *" if d.excludes_zero else ""
        lines.append(
            f"| `{d.arm}` | {METRIC_LABELS[d.metric]} | {metric_value(d.metric, d.value)} | "
            f"{metric_value(d.metric, d.control)} | {metric_value(d.metric, d.difference, signed=True)}{mark} | "
            f"{ci} | {d.n} / {d.n_control} |"
        )
    return lines


def monthly_table(report: ExperimentReport) -> list[str]:
    lines = [f"Volume: {report.volume.note} (source: {report.volume.source}).", ""]
    if report.volume.monthly_requests is None:
        return lines
    level = round(report.confidence * 100)
    lines += [f"| Arm | Cost/request | Monthly cost | Against the control ({level}% CI) |", "|---|---|---|---|"]
    for m in report.monthly:
        vs = "—"
        if m.difference is not None:
            vs = f"{metric_value('cost_per_request', m.difference, signed=True)} "
            vs += f"({metric_value('cost_per_request', m.ci_low, signed=True)} to "
            vs += f"{metric_value('cost_per_request', m.ci_high, signed=True)})"
        lines.append(f"| `{m.arm}` | {money(m.cost_per_request)} | {money(m.monthly_cost)} | {vs} |")
    return lines


def markdown(report: ExperimentReport) -> str:
    r = report
    state = r.status or "declared in the config"
    if r.chosen_arm:
        state += f", chosen arm `{r.chosen_arm}`"
    if r.paused_arms:
        state += ", paused: " + ", ".join(f"`{a}`" for a in r.paused_arms)
    window = "—"
    if r.first_at is not None and r.last_at is not None:
        window = f"{r.first_at:%Y-%m-%d %H:%M} to {r.last_at:%Y-%m-%d %H:%M} UTC"
    lines = [
        f"# Experiment: {r.name}",
        "",
        f"Models: {', '.join(f'`{m}`' for m in r.models)} · state: {state} · requests: {r.requests} · "
        f"window: {window} · control: `{r.control}`",
        "",
        "## Arms",
        "",
        *arm_table(r),
        "",
        f"## Differences against `{r.control}`",
        "",
        *difference_table(r),
        "",
        "## Projected monthly cost",
        "",
        *monthly_table(r),
        "",
    ]
    if r.grader_model:
        lines += [
            "## Rubric",
            "",
            f"Grader `{r.grader_model}`, one call per criterion, on a fixed sample of each arm's completed "
            "answers; score = share of the criteria met.",
            "",
            *(f"- {item}" for item in r.rubric),
            "",
        ]
    lines += [
        "Definitions: failure rate = failed / requests not skipped; cancelled (the client left) is counted "
        "apart, over the same requests; degraded = degraded / completed; cached = cached / completed; "
        "skipped = shadow runs not started (budget or concurrency). Cost/request: mean over requests not "
        "skipped with a known cost. Latency over completed requests. Differences are arm − control with a "
        f"{round(r.confidence * 100)}% seeded percentile bootstrap interval (each arm resampled on its own, "
        f"{r.resamples} resamples, seed {r.seed}); * marks an interval that excludes 0.",
        "",
    ]
    return "\n".join(lines)


def csv_rows(report: ExperimentReport) -> tuple[list[str], list[list[Any]]]:
    head = [
        "arm",
        "role",
        "model",
        "requests",
        "completed",
        "failed",
        "cancelled",
        "skipped",
        "degraded",
        "cached",
        "unpriced",
        "total_cost_usd",
        "cost_per_request_usd",
        "monthly_cost_usd",
        "latency_p50_ms",
        "latency_p95_ms",
        "failure_rate",
        "cancelled_rate",
        "degraded_rate",
        "cached_share",
        "feedback_count",
        "feedback_mean",
        "rubric_sample",
        "rubric_graded",
        "rubric_mean",
        *(f"{m}_{part}" for m in METRICS for part in ("diff", "ci_low", "ci_high")),
    ]
    diffs = {(d.arm, d.metric): d for d in report.differences}
    rows = []
    for a in report.arms:
        r = a.rubric
        cells: list[Any] = [
            a.arm,
            a.role,
            a.model,
            a.requests,
            a.completed,
            a.failed,
            a.cancelled,
            a.skipped,
            a.degraded,
            a.cached,
            a.unpriced,
            a.total_cost,
            a.cost_per_request,
            a.monthly_cost,
            a.latency_p50_ms,
            a.latency_p95_ms,
            a.failure_rate,
            a.cancelled_rate,
            a.degraded_rate,
            a.cached_share,
            a.feedback_count,
            a.feedback_mean,
            r.sample if r else None,
            r.graded if r else None,
            r.mean if r else None,
        ]
        for m in METRICS:
            d: Difference | None = diffs.get((a.arm, m))
            cells += [d.difference, d.ci_low, d.ci_high] if d else [None, None, None]
        rows.append(cells)
    return head, rows


def to_csv(report: ExperimentReport) -> str:
    buf = io.StringIO()
    head, rows = csv_rows(report)
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(head)
    w.writerows([["" if v is None else v for v in row] for row in rows])
    return buf.getvalue()


def plot_png(report: ExperimentReport) -> bytes:
    """Each arm's difference from the control with its interval, one panel per metric that has any.
    A bare Figure on the Agg canvas: no pyplot global state, no display. Raises ImportError without
    matplotlib."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    metrics = [m for m in METRICS if any(d.metric == m for d in report.differences)]
    fig = Figure(figsize=(7.5, 1.2 + 1.6 * max(1, len(metrics))), dpi=110)
    FigureCanvasAgg(fig)
    if not metrics:
        ax = fig.add_subplot()
        ax.axis("off")
        ax.text(0.5, 0.5, "no differences yet", ha="center", va="center")
    for i, metric in enumerate(metrics, start=1):
        ax = fig.add_subplot(len(metrics), 1, i)
        ds = [d for d in report.differences if d.metric == metric]
        ys = list(range(len(ds)))
        for y, d in zip(ys, ds, strict=True):
            color = "tab:purple" if (a := report.arm(d.arm)) is not None and a.shadow else "tab:blue"
            # The interval is drawn from its own bounds: a percentile interval of a median difference
            # may leave out the point estimate (discrete medians), which errorbar cannot draw.
            ax.hlines(y, d.ci_low, d.ci_high, color=color, linewidth=1.5)
            ax.plot([d.ci_low, d.ci_high], [y, y], "|", color=color, markersize=10)
            ax.plot([d.difference], [y], "o", color=color)
        ax.axvline(0, color="0.4", linewidth=1)
        labels = [f"{d.arm} (shadow)" if (a := report.arm(d.arm)) is not None and a.shadow else d.arm for d in ds]
        ax.set_yticks(ys, labels)
        ax.set_ylim(len(ds) - 0.3, -0.7)  # the definition's order, top to bottom
        ax.set_title(f"{METRIC_LABELS[metric]}: arm − {report.control}", fontsize=9)
        ax.grid(True, axis="x", alpha=0.3)
    fig.suptitle(f"Experiment {report.name}: {round(report.confidence * 100)}% bootstrap intervals", fontsize=10)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


@dataclass(frozen=True)
class ReportFiles:
    markdown: Path
    csv: Path
    plot: Path | None
    plot_error: str | None = None


def write_report(report: ExperimentReport, out_dir: Path) -> ReportFiles:
    """report.md, report.csv and report.png (skipped, with the reason, without matplotlib)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    md, table = out_dir / "report.md", out_dir / "report.csv"
    text = markdown(report)
    table.write_text(to_csv(report), encoding="utf-8")
    try:
        png = plot_png(report)
    except ImportError:  # matplotlib is in the [eval] extra; the tables do not need it
        md.write_text(text, encoding="utf-8")
        return ReportFiles(md, table, None, NO_MATPLOTLIB)
    plot = out_dir / "report.png"
    plot.write_bytes(png)
    md.write_text(text + f"\n![differences against the control]({plot.name})\n", encoding="utf-8")
    return ReportFiles(md, table, plot)
