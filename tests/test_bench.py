"""The gateway benchmark runs end to end (reduced: a smoke run) and its output is well formed. It
asserts the shape of the figures, never their values: these machines are shared and noisy."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent / "bench" / "gateway_load.py"


def test_the_gateway_benchmark_runs_and_writes_its_table(tmp_path):
    out = tmp_path / "bench.json"
    done = subprocess.run(
        [sys.executable, str(BENCH), "--quick", "--out", str(out)], capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "| target | CPU ms/request |" in done.stdout
    data = json.loads(out.read_text())
    assert data["machine"]["cpus"] >= 1 and data["idle_rss_mb"] > 0
    assert data["pinned"] is None  # nobody pinned unless asked
    names = [row["name"] for row in data["rows"]]
    assert names == ["panelfuse, plain model proxied", "panelfuse fusion (streamed)", "panelfuse fusion (not streamed)"]
    for row in data["rows"]:
        assert [p["concurrency"] for p in row["points"]] == [1, 4]
        for point in row["points"]:
            assert point["errors"] == 0, point["first_errors"]
            assert point["requests"] > 0 and point["cpu_ms_per_request"] >= 0
            assert 0 < point["p50_ms"] <= point["p99_ms"]
        assert row["name"] != "panelfuse fusion (streamed)" or all(p["ttft_p50_ms"] for p in row["points"])
    scaling = data["load_scaling"]
    assert scaling["c1_cpu_ms"] >= 0 and scaling["kb_per_in_flight_fusion"] >= 0 and scaling["c1_plain_cpu_ms"] >= 0
    ttft = data["final_ttft"]
    assert ttft["samples"] > 0 and math.isfinite(ttft["p50_ms"])
    for name in ("tail_all", "tail_quorum", "tail_hedge"):
        tail = data["tail"][name]
        assert tail["p50_ms"] > 0 and tail["errors"] == 0 and tail["runs"] > 0
        assert tail["calls_per_fusion"] >= 5 and tail["cost_per_fusion"] > 0
        assert 0 <= tail["hedges_won_per_fusion"] <= tail["hedges_per_fusion"]
    extra = data["tail"]["hedge_extra"]
    assert data["tail"]["hedge_ms"] > 0
    assert {
        "hedges_per_fusion",
        "hedges_won_per_fusion",
        "calls_per_fusion",
        "cost_pct",
        "cost_pct_if_losers_billed",
    } <= set(extra)
    assert all(math.isfinite(v) for v in extra.values())
    assert data["idle_cpu_ms_per_s"] >= 0


def test_a_peer_that_cannot_start_is_reported_and_an_unknown_one_is_refused(tmp_path):
    out = tmp_path / "peers.json"
    missing = tmp_path / "no-such-optillm"
    done = subprocess.run(
        [sys.executable, str(BENCH), "--quick", "--peers-only", "--peer", f"optillm={missing}", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "optillm: not measured" in done.stdout
    data = json.loads(out.read_text())
    assert data["rows"] == [] and str(missing) in data["peers_failed"]["optillm"]

    refused = subprocess.run(
        [sys.executable, str(BENCH), "--quick", "--peer", "vllm=/usr/bin/true"], capture_output=True, text=True
    )
    assert refused.returncode == 2 and "NAME one of litellm, optillm" in refused.stderr


def test_pinned_the_gateway_runs_alone_on_its_cpu(tmp_path):
    out = tmp_path / "pinned.json"
    done = subprocess.run(
        [sys.executable, str(BENCH), "--quick", "--only", "tail", "--pin", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    data = json.loads(out.read_text())
    pinned = data["pinned"]
    # What the kernel allowed the gateway, read back: one CPU, not one the fake and load generator use.
    assert len(pinned["panelfuse"]) == 1 and pinned["others"]
    assert not set(pinned["panelfuse"]) & set(pinned["others"])
    assert data["tail"]["tail_quorum"]["runs"] > 0 and data["tail"]["tail_quorum"]["errors"] == 0


def test_the_cold_wake_control_runs_and_reports_each_alternation():
    """bench/cold_wake.py (the control for why one request at a time costs more): its last line is JSON
    with one figure per alternation for each way of running, and a ratio for each."""
    done = subprocess.run(
        [sys.executable, str(BENCH.parent / "cold_wake.py"), "--sleep-ms", "5", "--passes", "3", "--alternations", "2"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    data = json.loads(done.stdout.strip().splitlines()[-1])
    assert data["sleep_ms"] == 5
    assert len(data["warm_ms"]) == len(data["after_sleep_ms"]) == len(data["ratios"]) == 2
    assert all(v > 0 and math.isfinite(v) for v in data["warm_ms"] + data["after_sleep_ms"])
    assert data["ratios"] == [s / w for w, s in zip(data["warm_ms"], data["after_sleep_ms"], strict=True)]
