"""The reliability load test at its reduced size (bench/reliability_load.py --quick): 300 fusion
requests at concurrency 60 with injected upstream faults and clients that leave, then kill -9 of the
gateway mid-load and a restart, then SIGTERM mid-load, on SQLite (one process) and PostgreSQL (two workers, Redis). The
bench checks the invariants itself from the database; this test runs it and reads its verdict.
Full-size figures: docs/reliability.md."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import require_service

BENCH = Path(__file__).resolve().parent.parent / "bench" / "reliability_load.py"


@pytest.mark.parametrize("db", ["sqlite", "postgres"])
def test_nothing_is_lost_under_load_faults_disconnects_and_kill_9(db, tmp_path):
    if db == "postgres":
        require_service(5432, "PostgreSQL")
        require_service(6379, "Redis")
    out = tmp_path / "result.json"
    proc = subprocess.run(
        [sys.executable, str(BENCH), "--quick", "--db", db, "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.exists(), proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["failed"] == [], proc.stdout[:3000]
    assert proc.returncode == 0
    seen, stored = result["seen"], result["stored"]
    # The run was a real test of something: faults, departures, refusals and the kill all happened.
    assert seen.get("completed", 0) > 0 and seen.get("failed", 0) > 0 and seen.get("left", 0) > 0
    assert seen.get("rejected:402", 0) > 0 and seen.get("rejected:429", 0) > 0
    assert result["checks"]["in_flight_at_kill"] > 0 and stored.get("interrupted", 0) > 0
    assert result["told_shut_down"] > 0 and stored.get("cancelled", 0) > 0  # the SIGTERM phase's clients
    assert "running" not in stored
    if db == "sqlite":
        assert result["integrity_check"] == "ok"
