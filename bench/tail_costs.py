"""The tail scenario's calls and cost per fusion, read from the gateway's stored runs, and what hedging
added to waiting for all (bench/gateway_load.py's `tail`)."""

from __future__ import annotations

import statistics
from collections.abc import Callable
from typing import Any


def stored_costs(runs_url: str, preset: str, fetch_json: Callable[[str], Any]) -> dict[str, Any]:
    """Calls, cost and hedges per fusion over the preset's completed runs, as the gateway stored them
    (the warm-up's included: the same workload)."""
    runs: list[dict[str, Any]] = []
    cursor = ""
    while True:
        page = fetch_json(f"{runs_url}?preset={preset}&status=completed&limit=200{cursor}")
        runs += page["data"]
        if not page["has_more"]:
            break
        cursor = f"&before={page['next_cursor']}"
    results = [r["result"] for r in runs if r.get("result")]
    count = max(1, len(results))
    hedges = [m["hedge"] for res in results for m in res["panel"] if m.get("hedge")]
    # A member call billed in full: what a cancelled loser would cost if the provider billed it whole.
    full = [m["cost"] for res in results for m in res["panel"] if m["status"] == "ok" and m.get("cost")]
    return {
        "runs": len(results),
        "calls_per_fusion": round(sum(res["calls"] for res in results) / count, 3),
        "cost_per_fusion": round(sum(r["cost"] or 0.0 for r in runs) / max(1, len(runs)), 8),
        "hedges_per_fusion": round(len(hedges) / count, 3),
        "hedges_won_per_fusion": round(sum(1 for h in hedges if h["won"]) / count, 3),
        "member_call_cost": statistics.median(full) if full else 0.0,
    }


def hedge_extra(base: dict[str, Any], hedged: dict[str, Any]) -> dict[str, Any]:
    """What hedging added to waiting for all: upstream calls and cost per fusion. The fake streams a
    whole answer in one write after its delay, so a loser cancelled during that delay streamed nothing
    and is billed nothing (calls.py reckons a cancelled call from what it streamed); a hosted provider
    may bill a cancelled request's prompt, or all of it: `cost_pct_if_losers_billed` is that bound."""
    calls = hedged["calls_per_fusion"] - base["calls_per_fusion"]
    cost = base["cost_per_fusion"] or 1.0
    bound = hedged["cost_per_fusion"] + max(0.0, calls) * hedged["member_call_cost"]
    return {
        "hedges_per_fusion": hedged["hedges_per_fusion"],
        "hedges_won_per_fusion": hedged["hedges_won_per_fusion"],
        "calls_per_fusion": round(calls, 3),
        "cost_pct": round((hedged["cost_per_fusion"] / cost - 1) * 100, 2),
        "cost_pct_if_losers_billed": round((bound / cost - 1) * 100, 2),
    }
