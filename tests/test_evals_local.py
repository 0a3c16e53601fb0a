"""`panelfuse eval` fully offline: the embedded SmolLM2 answers and grades one sample task, two criteria.
(The 135M grader's verdicts are not meaningful; this checks the plumbing: grammar-constrained
verdicts, the store, the report.)"""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest import require_local_extra
from panelfuse.cli import app

pytestmark = pytest.mark.local_model


require_local_extra()


def test_offline_eval_on_the_sample_set(tmp_path: Path) -> None:
    out = tmp_path / "results"
    env = {"OPENROUTER_API_KEY": None, "PANELFUSE_CONFIG": str(tmp_path / "none.toml")}
    (tmp_path / "none.toml").write_text("")
    result = CliRunner().invoke(
        app,
        [
            "eval",
            "sample",
            "-c",
            "single:local/smollm2",
            "--grader",
            "local/smollm2",
            "--limit",
            "1",
            "--criteria-limit",
            "2",
            "--max-tokens",
            "48",
            "--out",
            str(out),
            "--db",
            f"sqlite+aiosqlite:///{tmp_path / 'store.db'}",
        ],
        env=env,
    )
    assert result.exit_code == 0, result.output
    (row,) = list(csv.DictReader((out / "summary.csv").open(encoding="utf-8")))
    assert row["label"] == "single:local/smollm2"
    assert (row["answers"], row["failures"], row["criteria"]) == ("1", "0", "2")
    # the grammar makes every reply a valid verdict, so nothing is excluded
    assert (row["graded"], row["grader_failures"]) == ("2", "0")
    assert 0.0 <= float(row["mean_score"]) <= 1.0
    assert float(row["cost_per_task_usd"]) == 0.0  # local models are free
    assert (out / "score_vs_cost.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
