"""Renders fusion progress events on a rich console: member lines, analysis sections, the streamed
answer and the totals. Used by the CLI; works on any rich Console (a recording one in tests)."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.live import Live
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from panelfuse.pipeline.events import Event
from panelfuse.pipeline.result import FusionResult

SECTIONS = (
    ("consensus", "Consensus"),
    ("contradictions", "Contradictions"),
    ("partial_coverage", "Partial coverage"),
    ("unique_insights", "Unique insights"),
    ("blind_spots", "Blind spots"),
    ("anomalies", "Discounted answers"),
)


def money(value: float | None) -> str:
    return "n/a" if value is None else f"${value:.6f}"


def _who(item: dict[str, Any]) -> str:
    member = item.get("member")
    return f"{member} ({item.get('model')})" if member else str(item.get("model", ""))


def analysis_lines(analysis: dict[str, Any]) -> list[tuple[str, list[str]]]:
    """The analysis as (section title, bullet lines): readable, labels shown with their models."""
    out: list[tuple[str, list[str]]] = []
    for key, title in SECTIONS:
        items = analysis.get(key) or []
        lines: list[str] = []
        for it in items:
            if isinstance(it, str):
                lines.append(it)
            elif key == "contradictions":
                stances = "; ".join(f"{_who(s)}: {s.get('stance', '')}" for s in it.get("stances", []))
                lines.append(f"{it.get('topic', '')} — {stances}")
            elif key == "partial_coverage":
                pairs = zip(it.get("members", []), it.get("models", []), strict=False)
                who = ", ".join(f"{m} ({mod})" for m, mod in pairs)
                lines.append(f"{it.get('point', '')} — {who or ', '.join(it.get('models', []))}")
            elif key == "unique_insights":
                lines.append(f"{_who(it)}: {it.get('insight', '')}")
            elif key == "anomalies":
                lines.append(f"{_who(it)}: {it.get('reason', '')}")
        out.append((title, lines))
    for key, value in analysis.items():
        if key not in dict(SECTIONS) and isinstance(value, list):
            out.append((key.replace("_", " ").capitalize(), [str(v) for v in value]))
    return out


class ProgressPrinter:
    """Feed it events; it prints. A live line shows members' streaming while the panel works (only
    on a real terminal, so captured output holds just the lasting lines)."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.streamed: dict[str, int] = {}
        self.answer_started = False
        self.live: Live | None = None

    def _live_text(self) -> Text:
        parts = [f"{m}: {n} chars" for m, n in self.streamed.items()]
        return Text("streaming  " + "  ·  ".join(parts), style="dim")

    def _stop_live(self) -> None:
        if self.live is not None:
            self.live.stop()
            self.live = None

    def handle(self, ev: Event) -> None:
        d = ev.data
        c = self.console
        t = ev.type
        if t == "panel.delta":
            self.streamed[d["member"]] = self.streamed.get(d["member"], 0) + len(d["text"])
            if c.is_terminal:
                if self.live is None:
                    self.live = Live(self._live_text(), console=c, transient=True, refresh_per_second=8)
                    self.live.start()
                self.live.update(self._live_text())
            return
        if t == "final.delta":
            self._stop_live()
            if not self.answer_started:
                c.rule("Answer")
                self.answer_started = True
            c.print(d["text"], end="", soft_wrap=True, markup=False)
            return
        self._stop_live()
        if t == "run.started":
            spec = d["spec"]
            c.print(f"[bold]Fusion[/] {ev.run_id} · preset {spec.get('preset') or '-'} · mode {spec['mode']}")
        elif t == "panel.started":
            self.streamed.setdefault(d["member"], 0)
            c.print(f"  [cyan]●[/] {d['member']} {d['model']} started")
        elif t == "panel.fallback":
            c.print(f"  [yellow]↪[/] {d['member']} {d['from']} failed ({d['reason']}); trying {d['to']}")
        elif t == "panel.hedged":
            c.print(f"  [yellow]⇉[/] {d['member']} {d['from']} slow ({d['after_ms']} ms); also asking {d['to']}")
        elif t == "panel.hedge_won":
            self.streamed[d["member"]] = 0  # the duplicate's text replaces the first call's
            c.print(f"  [yellow]⇉[/] {d['member']} {d['to']} answered first; {d['from']} cancelled")
        elif t == "panel.completed":
            usage = d.get("usage") or {}
            c.print(
                f"  [green]✓[/] {d['member']} {d['model']} answered · {usage.get('completion_tokens', 0)} tokens"
                f" · {money(d.get('cost'))} · {d.get('latency_ms', 0) / 1000:.1f}s"
            )
        elif t == "panel.failed":
            c.print(f"  [red]✗[/] {d['member']} {d['model']} {d['status']}: {d['error']}")
        elif t == "panel.cut":
            c.print(f"  [yellow]✂[/] {d['member']} {d['model']} cut after the grace period")
        elif t == "analysis.started":
            c.print(f"[bold]Analysis[/] by {d['model']}…")
        elif t == "analysis.fallback":
            c.print(f"  [yellow]↪[/] judge {d['from']} failed ({d['reason']}); trying {d['to']}")
        elif t == "analysis.failed":
            c.print(f"  [red]✗ analysis failed:[/] {d['error']} (continuing without it)")
        elif t == "analysis.completed":
            for title, lines in analysis_lines(d["analysis"]):
                if lines:
                    c.print(f"  [bold]{title}[/]")
                    for line in lines:
                        c.print(f"    • {line}", markup=False)
        elif t == "escalation.decided":
            verdict = "escalated to the full panel" if d["escalated"] else "not escalated"
            c.print(f"[bold]Escalation[/] ({d['rule']}): {verdict}: {escape(d['reason'])}")
        elif t == "vote.tallied":
            counts = escape(", ".join(f"{g['answer'] or '?'} ×{g['votes']}" for g in d["groups"]))
            c.print(f"[bold]Vote[/] ({d['reading']}): {counts}; {d['winner']}'s answer{' (tie)' if d['tie'] else ''}")
        elif t == "run.failed":
            c.print(f"\n[bold red]Fusion failed:[/] {d['error']}")
        elif t == "run.cancelled":
            c.print(f"\n[yellow]Cancelled:[/] {d['reason']}")

    def totals(self, result: FusionResult) -> None:
        c = self.console
        if self.answer_started:
            c.print()
        table = Table(title="Totals", show_edge=False)
        for col in ("stage", "model", "status", "tokens in/out", "cost", "latency"):
            table.add_column(col)
        for m in result.panel:
            u = m.usage
            table.add_row(
                f"panel {m.member}",
                m.model,
                m.status,
                f"{u.prompt_tokens}/{u.completion_tokens}",
                money(m.cost),
                f"{m.latency_ms / 1000:.1f}s",
            )
        for name, stage in (("escalation", result.gate), ("analysis", result.judge), ("synthesis", result.synthesizer)):
            if stage is not None:
                u = stage.usage
                table.add_row(
                    name,
                    stage.model,
                    "failed" if stage.error else "ok",
                    f"{u.prompt_tokens}/{u.completion_tokens}",
                    money(stage.cost),
                    f"{stage.latency_ms / 1000:.1f}s",
                )
        u = result.usage
        status = "degraded" if result.degraded else result.status
        table.add_row(
            "total",
            result.model,
            status,
            f"{u.prompt_tokens}/{u.completion_tokens}",
            money(result.cost),
            f"{result.latency_ms / 1000:.1f}s",
        )
        c.print(table)
