"""`panelfuse eval` end to end on the fake upstream: two configurations (a single model and a fusion
preset), a scripted grader, and the report it writes: table, CSV, PNG."""

from __future__ import annotations

import asyncio
import csv
import importlib.util
from pathlib import Path

import pytest
from typer.testing import CliRunner

from panelfuse.cli import app
from panelfuse.store import RunStore
from panelfuse.testing import FakeUpstream, Script
from pipeline_helpers import judge_script
from test_evals_support import CRITERIA_TOTAL, grader_script, write_tasks

ENV = {
    "OPENROUTER_API_KEY": None,
    "OPENAI_API_KEY": None,
    "ANTHROPIC_API_KEY": None,
    "PANELFUSE_CONFIG": None,
    "COLUMNS": "200",
}
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def config_file(tmp_path: Path, fake: FakeUpstream) -> Path:
    path = tmp_path / "panelfuse.toml"
    prices = "\n".join(
        f'[prices."fake/{m}"]\ninput = {i}\noutput = {o}\n'
        for m, i, o in [
            ("m1", 1.0, 2.0),
            ("m2", 1.0, 2.0),
            ("m3", 1.0, 2.0),
            ("judge", 3.0, 6.0),
            ("synth", 3.0, 6.0),
            ("grader", 1.0, 1.0),
        ]
    )
    path.write_text(
        f"""default_provider = "fake"

[providers.fake]
kind = "openai_compat"
base_url = "{fake.openai_base_url}"
api_key = "k"

[presets.duo]
members = ["fake/m2", "fake/m3"]
judge = "fake/judge"
synthesizer = {{ model = "fake/synth" }}
max_tool_calls = 0
max_tokens = 100
deadline_ms = 10000

{prices}
""",
        encoding="utf-8",
    )
    return path


def script_upstream(fake: FakeUpstream) -> None:
    fake.script("m1", Script(text="alpha gamma omega", prompt_tokens=10, completion_tokens=20))
    fake.script("m2", Script(text="alpha", prompt_tokens=10, completion_tokens=20))
    fake.script("m3", Script(text="beta gamma", prompt_tokens=10, completion_tokens=20))
    fake.script("judge", judge_script)  # 100 in / 50 out
    fake.script("synth", Script(text="alpha beta gamma", prompt_tokens=200, completion_tokens=30))
    fake.script("grader", grader_script)  # 30 in / 10 out


def run(*args: str):
    return CliRunner().invoke(app, list(args), env=ENV)


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def test_eval_two_configurations_end_to_end(fake: FakeUpstream, config_file: Path, tmp_path: Path) -> None:
    script_upstream(fake)
    tasks = write_tasks(tmp_path / "tasks.jsonl")
    out, db = tmp_path / "results", f"sqlite+aiosqlite:///{tmp_path / 'store.db'}"
    args = [
        "--config",
        str(config_file),
        "eval",
        str(tasks),
        "-c",
        "single:fake/m1",
        "-c",
        "preset:duo",
        "--grader",
        "fake/grader",
        "--out",
        str(out),
        "--db",
        db,
        "--concurrency",
        "3",
    ]
    result = run(*args)
    assert result.exit_code == 0, result.output
    assert len(fake.requests_for("grader")) == 2 * CRITERIA_TOTAL

    summary = {r["label"]: r for r in read_csv(out / "summary.csv")}
    single, duo = summary["single:fake/m1"], summary["preset:duo"]
    # single: t1 (2 + 1 − 2) / 4 = 0.25, t2 (1 − 1) / 1 = 0 → 0.125;  fusion: both tasks fully met
    assert float(single["mean_score"]) == pytest.approx(0.125)
    assert float(duo["mean_score"]) == pytest.approx(1.0)
    assert float(single["pass_rate"]) == pytest.approx(0.5)
    assert float(single["section:factual-accuracy"]) == pytest.approx(0.5)  # t1: 0/3, t2: 1
    assert float(single["section:citation-quality"]) == pytest.approx(0.0)  # a MET penalty only
    assert float(single["ci_low"]) == pytest.approx(0.0) and float(single["ci_high"]) == pytest.approx(0.25)
    assert float(single["cost_per_task_usd"]) == pytest.approx(50e-6)  # 10 × $1 + 20 × $2 per million
    # m2 + m3 (50e-6 each) + judge (100 × 3 + 50 × 6) + synth (200 × 3 + 30 × 6), per million
    assert float(duo["cost_per_task_usd"]) == pytest.approx((50 + 50 + 600 + 780) / 1e6)
    assert float(single["tokens_per_task"]) == 30
    assert float(single["grading_cost_usd"]) == pytest.approx(6 * 40e-6)  # six grader calls, 30 in / 10 out
    for row in (single, duo):
        assert (row["failures"], row["answers"], row["coverage"], row["grader_failures"]) == ("0", "2", "1.0", "0")

    tasks_rows = read_csv(out / "tasks.csv")
    assert [(r["config"], r["task_id"], r["domain"], float(r["score"])) for r in tasks_rows] == [
        ("single:fake/m1", "t1", "Science", 0.25),
        ("single:fake/m1", "t2", "Law", 0.0),
        ("preset:duo", "t1", "Science", 1.0),
        ("preset:duo", "t2", "Law", 1.0),
    ]

    md = (out / "report.md").read_text(encoding="utf-8")
    assert "| `single:fake/m1` | 0.125 | 0.000–0.250 | 0.500 | 0.500 | 1.000 | 0.000 | $0.000050 |" in md
    assert "| `preset:duo` | 1.000 | 1.000–1.000 | 1.000 | 1.000 | 1.000 | 1.000 | $0.001480 | 440 |" in md
    assert "| `single:fake/m1` | — | 0 / 0 / 2 |" in md and "| `preset:duo` | 2 / 0 / 0 | — |" in md
    assert "![score against cost per task](score_vs_cost.png)" in md

    png = out / "score_vs_cost.png"
    assert png.read_bytes()[:8] == PNG_SIGNATURE
    if importlib.util.find_spec("matplotlib") is not None:
        from matplotlib.image import imread

        pixels = imread(str(png))
        assert pixels.ndim == 3 and pixels.shape[0] > 100 and pixels.shape[1] > 100

    # the fusion answers were also recorded as runs, with their events
    async def recorded() -> list[str]:
        store = await RunStore.open(db)
        try:
            page = await store.list_runs(limit=10)
            return [r.status for r in page.items if r.request.get("eval", {}).get("config") == "preset:duo"]
        finally:
            await store.close()

    assert asyncio.run(recorded()) == ["completed", "completed"]

    # rerun: everything is stored, nothing is asked again, the report is the same
    before = len(fake.requests)
    again = run(*args)
    assert again.exit_code == 0, again.output
    assert len(fake.requests) == before
    assert read_csv(out / "summary.csv") == list(summary.values())


def test_eval_reports_malformed_tasks_and_bad_configurations(
    fake: FakeUpstream, config_file: Path, tmp_path: Path
) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "q", "answer": "a"}\n{"id": "x", "domain": "d", "problem": "p", "answer": 3}\n')
    common = [
        "--config",
        str(config_file),
        "eval",
        "--grader",
        "fake/grader",
        "--out",
        str(tmp_path / "o"),
        "--db",
        f"sqlite+aiosqlite:///{tmp_path / 's.db'}",
    ]
    r = run(*common, str(bad), "-c", "single:fake/m1")
    assert r.exit_code == 2
    assert "bad.jsonl:2: field 'answer.sections'" in r.output
    r = run(*common, "sample", "-c", "preset:nope")
    assert r.exit_code == 2 and "unknown preset 'nope'" in r.output
    r = run(*common, "sample", "-c", "single:fake/m1", "-c", "single:fake/m1")
    assert r.exit_code == 2 and "share a label" in r.output
    r = run(*common, "sample", "-c", "single:openrouter/openai/gpt-5.5")
    assert r.exit_code == 2 and "no API key for: openrouter/openai/gpt-5.5 (set OPENROUTER_API_KEY)" in r.output
    assert fake.requests == []
