"""The experiment report's ways out: the grading sample (graded once, scores per arm), the CLI
(`panelfuse experiments report`: md, csv, png, the printed table) and the admin API
(`GET /v1/experiments/{name}/report` in each format; 404, 403)."""

from __future__ import annotations

import csv
import io
import sys
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from conftest import fake_providers
from experiment_rows import DEFINITION, NAME, T0, make_rows, record, record_sync
from gateway_helpers import Gateway
from panelfuse.cli import app
from panelfuse.evals.experiment_grading import grade_sample
from panelfuse.evals.experiment_report import experiment_report
from panelfuse.evals.grading import Grader
from panelfuse.experiment_spec import ExperimentSpec
from panelfuse.pricing import Price, PriceTable
from panelfuse.store import RunStore
from panelfuse.store.experiments import ExperimentRequest
from panelfuse.testing import FakeUpstream
from test_evals_support import grader_script

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
GRADED = "graded-exp"
GRADER = {"model": "fake/grader", "rubric": ["Mentions alpha", "Mentions beta"], "sample": 3}
ENV = {"OPENROUTER_API_KEY": None, "OPENAI_API_KEY": None, "ANTHROPIC_API_KEY": None, "PANELFUSE_CONFIG": None}


def answered(rid: str, arm: str, status: str, answer: str, minute: int) -> ExperimentRequest:
    return ExperimentRequest(
        id=rid,
        experiment=GRADED,
        arm=arm,
        shadow=arm == "vote",
        unit="u",
        key_id=None,
        created_at=T0 + timedelta(minutes=minute),
        latency_ms=100 + minute,
        status=status,
        cost=0.001,
        question="Name two Greek letters.",
        answer=answer,
    )


def graded_rows() -> list[ExperimentRequest]:
    """single: five answers meeting one criterion of two (a sample of 3 is graded) and a failed one
    (never graded); fusion: one meeting both, one meeting one; vote (shadow): one meeting none."""
    rows = [answered(f"s{i}", "single", "completed", "alpha gamma", i) for i in range(5)]
    rows.append(answered("s-failed", "single", "failed", "alpha beta", 6))
    rows += [
        answered("f1", "fusion", "completed", "alpha beta", 7),
        answered("f2", "fusion", "completed", "beta only", 8),
        answered("v1", "vote", "completed", "nothing here", 9),
        replace(answered("v2", "vote", "skipped", "", 10), answer=None, cost=None),
    ]
    return rows


async def test_the_graded_sample_scores_each_arm_and_a_rerun_grades_nothing_twice(
    fake: FakeUpstream, tmp_path: Path
) -> None:
    fake.script("grader", grader_script)
    url = f"sqlite+aiosqlite:///{tmp_path / 'runs.db'}"
    rows = graded_rows()
    definition = {**DEFINITION, "grader": GRADER}
    await record(url, rows, {GRADED: definition})
    spec = ExperimentSpec.model_validate(definition)
    providers = fake_providers(fake)
    grader = Grader(providers, "fake/grader", PriceTable({"fake/grader": Price(1.0, 1.0)}))
    async with await RunStore.open(url) as store:
        before = await experiment_report(store.database, GRADED, {}, providers=providers)
        assert before is not None
        assert [(a.arm, a.rubric.graded if a.rubric else None) for a in before.arms] == [
            ("single", 0),
            ("vote", 0),
            ("fusion", 0),
        ]

        first = await grade_sample(store.database, grader, GRADED, spec, rows)
        assert first.calls == (3 + 1 + 2) * 2 and first.failures == 0 and first.cost is not None
        assert len(fake.requests_for("grader")) == 12
        graded_answers = {
            r.body["messages"][-1]["content"].split("<answer>\n")[1].split("\n</answer>")[0]
            for r in fake.requests_for("grader")
        }
        assert "alpha beta" in graded_answers and all("s-failed" not in a for a in graded_answers)

        report = await experiment_report(store.database, GRADED, {}, providers=providers)
        assert report is not None
        rubric = {a.arm: a.rubric for a in report.arms}
        assert rubric["single"] is not None and (rubric["single"].sample, rubric["single"].graded) == (3, 3)
        assert rubric["single"].mean == pytest.approx(0.5)
        assert rubric["fusion"] is not None and rubric["fusion"].mean == pytest.approx(0.75)
        assert rubric["vote"] is not None and rubric["vote"].mean == pytest.approx(0.0)
        diff = {(d.arm, d.metric): d for d in report.differences}
        assert diff[("fusion", "rubric_score")].difference == pytest.approx(0.25)
        assert diff[("vote", "rubric_score")].difference == pytest.approx(-0.5)

        again = await grade_sample(store.database, grader, GRADED, spec, rows)
        assert again.calls == 0 and len(fake.requests_for("grader")) == 12
        # A reworded criterion is a new criterion: only it is graded.
        assert spec.grader is not None
        new_rubric = spec.grader.model_copy(update={"rubric": ["Mentions alpha", "Says beta"]})
        reworded = spec.model_copy(update={"grader": new_rubric})
        third = await grade_sample(store.database, grader, GRADED, reworded, rows)
        assert third.calls == 6 and len(fake.requests_for("grader")) == 18


# --- the CLI ---------------------------------------------------------------------------------------------


@pytest.fixture
def config_file(tmp_path: Path, fake: FakeUpstream) -> Path:
    path = tmp_path / "panelfuse.toml"
    path.write_text(
        f"""default_provider = "fake"

[providers.fake]
kind = "openai_compat"
base_url = "{fake.openai_base_url}"
api_key = "k"

[prices."fake/grader"]
input = 1.0
output = 1.0

[experiments.{GRADED}]
models = ["gpt-default"]
arms = [
  {{ name = "single", model = "fake/m1", share = 0.5 }},
  {{ name = "vote", model = "panelfuse/fusion", fusion = {{ mode = "best-of" }}, shadow = true }},
  {{ name = "fusion", model = "panelfuse/fusion", share = 0.5 }},
]
grader = {{ model = "fake/grader", rubric = ["Mentions alpha", "Mentions beta"], sample = 3 }}
monthly_requests = 1000
""",
        encoding="utf-8",
    )
    return path


def run(*args: str) -> Any:
    return CliRunner().invoke(app, list(args), env={**ENV, "COLUMNS": "300"})


def test_the_cli_writes_md_csv_png_and_prints_the_table(fake: FakeUpstream, tmp_path: Path, config_file: Path) -> None:
    """The experiment is only in the config (the gateway never declared it): the CLI reads its rows."""
    fake.script("grader", grader_script)
    url = f"sqlite+aiosqlite:///{tmp_path / 'runs.db'}"
    record_sync(url, graded_rows(), {})
    out = tmp_path / "report"
    args = ("--config", str(config_file), "experiments", "report", GRADED, "--db", url, "--out", str(out))
    result = run(*args, "--grade")
    assert result.exit_code == 0, result.output
    assert "graded 12 criteria (0 failed" in result.output
    assert f"# Experiment: {GRADED}" in result.output
    assert "| `single` | control | 6 |" in result.output and "| `vote` | shadow | 2 |" in result.output
    assert "source: spec" in result.output  # the definition's monthly_requests
    md = (out / "report.md").read_text()
    assert "## Differences against `single`" in md and "rubric score" in md and "![" in md
    rows = list(csv.DictReader((out / "report.csv").open()))
    assert [r["arm"] for r in rows] == ["single", "vote", "fusion"]
    assert float(rows[2]["rubric_mean"]) == pytest.approx(0.75) and rows[0]["rubric_score_diff"] == ""
    assert float(rows[0]["monthly_cost_usd"]) == pytest.approx(0.001 * 1000)
    assert (out / "report.png").read_bytes().startswith(PNG_SIGNATURE)

    again = run(*args, "--grade", "--monthly-requests", "5000")
    assert again.exit_code == 0, again.output
    assert "graded 0 criteria" in again.output and "source: option" in again.output
    assert len(fake.requests_for("grader")) == 12

    missing = run("--config", str(config_file), "experiments", "report", "nope", "--db", url, "--out", str(out))
    assert missing.exit_code == 1 and "no experiment 'nope'" in missing.output


# --- the API ---------------------------------------------------------------------------------------------


@pytest.fixture
def keyed_gateway(fake: FakeUpstream, tmp_path: Path):
    """A gateway with auth on (keys in the store), the experiment created through the store as the
    admin API would, and its rows recorded."""
    url = f"sqlite+aiosqlite:///{tmp_path / 'runs.db'}"
    record_sync(url, make_rows(n=80), {NAME: DEFINITION})

    async def keys() -> tuple[str, str]:
        async with await RunStore.open(url) as store:
            admin = await store.keys.create("ops", is_admin=True)
            user = await store.keys.create("app")
            return admin.secret, user.secret

    import asyncio

    admin, user = asyncio.run(keys())
    gw = Gateway(fake, url).start()
    yield gw, {"Authorization": f"Bearer {admin}"}, {"Authorization": f"Bearer {user}"}
    gw.stop()


def test_the_api_serves_each_format_to_the_admin_only(keyed_gateway, monkeypatch) -> None:
    gw, admin, user = keyed_gateway
    base = f"{gw.url}/v1/experiments/{NAME}/report"

    body = httpx.get(base, headers=admin).json()
    assert body["object"] == "experiment.report" and body["name"] == NAME and body["control"] == "single"
    assert [(a["arm"], a["role"]) for a in body["arms"]] == [
        ("single", "control"),
        ("vote", "shadow"),
        ("fusion", "primary"),
    ]
    assert body["arms"][0]["requests"] > 0 and body["volume"]["source"] == "observed"
    assert {d["metric"] for d in body["differences"]} >= {"cost_per_request", "latency_p50_ms", "failure_rate"}
    assert all(d["ci_low"] <= d["difference"] <= d["ci_high"] for d in body["differences"])

    asked = httpx.get(base, params={"monthly_requests": 1_000_000}, headers=admin).json()
    assert asked["volume"] == {**asked["volume"], "source": "option", "monthly_requests": 1_000_000}
    single = asked["arms"][0]
    assert single["monthly_cost"] == pytest.approx(single["cost_per_request"] * 1_000_000)

    md = httpx.get(base, params={"format": "markdown"}, headers=admin)
    assert md.status_code == 200 and md.headers["content-type"].startswith("text/markdown")
    assert f"# Experiment: {NAME}" in md.text and "| `fusion` | primary |" in md.text
    table = httpx.get(base, params={"format": "csv"}, headers=admin)
    assert table.headers["content-type"].startswith("text/csv")
    assert [r["arm"] for r in csv.DictReader(io.StringIO(table.text))] == ["single", "vote", "fusion"]
    png = httpx.get(base, params={"format": "png"}, headers=admin)
    assert png.headers["content-type"] == "image/png" and png.content.startswith(PNG_SIGNATURE)
    monkeypatch.setitem(sys.modules, "matplotlib.backends.backend_agg", None)  # as without the [eval] extra
    no_plot = httpx.get(base, params={"format": "png"}, headers=admin)
    assert no_plot.status_code == 501 and "matplotlib" in no_plot.json()["error"]["message"]
    monkeypatch.undo()

    unknown = httpx.get(f"{gw.url}/v1/experiments/nope/report", headers=admin)
    assert unknown.status_code == 404
    error = unknown.json()["error"]
    assert error["type"] == "not_found_error" and error["metadata"]["error_code"] == "experiment_not_found"
    assert "nope" in error["message"] and error["param"] == "name"
    bad = httpx.get(base, params={"format": "xlsx"}, headers=admin)
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "query.format"

    refused = httpx.get(base, headers=user)
    assert refused.status_code == 403 and refused.json()["error"]["type"] == "permission_error"
    assert httpx.get(base).status_code == 401


# --- rendering edge cases --------------------------------------------------------------------------------


def test_an_experiment_without_requests_renders_every_format(tmp_path: Path) -> None:
    from panelfuse.evals.experiment_render import markdown, to_csv, to_json, write_report
    from panelfuse.evals.experiment_stats import build_report

    report = build_report(NAME, ExperimentSpec.model_validate(DEFINITION), [])
    assert report.differences == [] and report.volume.source == "none"
    assert "No differences yet" in markdown(report) and "source: none" in markdown(report)
    assert to_csv(report).count("\n") == 4  # the header and the three arms
    assert to_json(report)["arms"][0]["requests"] == 0
    files = write_report(report, tmp_path / "empty")
    assert files.plot is not None and files.plot.read_bytes().startswith(PNG_SIGNATURE)


def test_without_matplotlib_the_png_is_skipped_with_a_message(tmp_path: Path, monkeypatch) -> None:
    from panelfuse.evals.experiment_render import NO_MATPLOTLIB, write_report
    from panelfuse.evals.experiment_stats import build_report

    monkeypatch.setitem(sys.modules, "matplotlib.backends.backend_agg", None)  # importing it raises ImportError
    report = build_report(NAME, ExperimentSpec.model_validate(DEFINITION), make_rows(n=10))
    files = write_report(report, tmp_path / "no-plot")
    assert files.plot is None and files.plot_error == NO_MATPLOTLIB
    assert not (tmp_path / "no-plot" / "report.png").exists()
    assert "![" not in files.markdown.read_text() and files.csv.exists()
