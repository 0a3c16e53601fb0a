"""bench/escalation.py runs (reduced) and its output is well formed: the table's rows and the JSON's.
It checks the shape and the bookkeeping (calls and costs add up), never timings."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent / "bench" / "escalation.py"


def test_the_escalation_bench_runs_and_writes_its_table(tmp_path):
    out = tmp_path / "escalation.json"
    done = subprocess.run(
        [sys.executable, str(BENCH), "--prompts", "10", "--json", str(out)], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "| configuration | calls | calls/prompt | cost (USD) |" in done.stdout
    data = json.loads(out.read_text())
    assert data["prompts"] == 10 and sum(data["mix"].values()) == 10
    rows = data["rows"]
    assert rows[0]["name"].startswith("synthesize") and len(rows) == 5
    assert all(f"| {r['name']} |" in done.stdout for r in rows)
    full = rows[0]
    assert full["calls"] == 10 * 5 and full["escalated"] == 0 and full["saving"] == 0.0
    for r in rows:
        assert r["runs"] == 10 and r["cost"] > 0
        assert r["escalated"] == r["escalated_converge"] + r["escalated_diverge"]
        assert abs(r["saving"] - (1 - r["cost"] / full["cost"])) < 1e-9
    # The oracle judge and the final-answer rule escalate exactly the prompts that diverge.
    diverging = data["mix"]["diverge"] + data["mix"]["subtle"]
    for r in rows[1:3] + rows[4:]:
        assert (r["escalated_converge"], r["escalated_diverge"]) == (0, diverging)
