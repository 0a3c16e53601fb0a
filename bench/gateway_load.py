"""What the gateway costs, in one command: the fake upstream, the gateway and the load generator as three
processes on loopback; the gateway's CPU and memory read from /proc; a table printed and JSON written.

    .venv/bin/python bench/gateway_load.py                 # the full table (a few minutes)
    .venv/bin/python bench/gateway_load.py --quick         # a smoke run (seconds; .ci/run does this)
    .venv/bin/python bench/gateway_load.py --peer litellm=/tmp/litellm-venv/bin/litellm
    .venv/bin/python bench/gateway_load.py --peers-only --peer optillm=/tmp/optillm-venv/bin/optillm
    .venv/bin/python bench/gateway_load.py --pin            # the gateway alone on one CPU, the rest on the others

Rows: a plain model proxied (1 upstream call) and a fusion (3 members, judge, synthesizer: 5 calls), each
upstream call answering after `--latency-ms` with `--tokens` tokens streamed one per SSE chunk. The
critical path is 1 × latency for a proxied call and 3 × latency for a fusion; "overhead" is latency
minus it. CPU per request is the gateway process's own user + system time over the requests served.
Then: CPU per fusion with zero upstream latency at C=1 against C=128 (does cost grow with load?), the
memory an in-flight fusion holds, the final answer's first token against the synthesizer's, and the
tail with one heavy-tailed member (waiting for all, quorum + grace, hedging; `--only tail` runs just that).
docs/performance.md reads it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from peers import PEERS, free_port, pin, stop, wait_http
from tail_costs import hedge_extra, stored_costs

HERE = Path(__file__).resolve().parent
TICK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")
ASK = [{"role": "user", "content": "Why is the sky blue?"}]
# The tail scenario's hedge delay: 1.5 × the 200 ms median, past what m1 and m2 take (they answer at
# the median) and past about two thirds of the heavy member's calls, so only its slow third is hedged.
TAIL_HEDGE_MS = 300
TAIL_PRESETS = ("tail_all", "tail_quorum", "tail_hedge")


# ---- /proc -------------------------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """User + system CPU of `pid` and its reaped children, from /proc/<pid>/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(v) for v in fields[11:15]) / TICK


def rss_mb(pid: int) -> float:
    return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE / 2**20


class RssSampler:
    """The peak RSS of a process while a block runs, sampled every 20 ms."""

    def __init__(self, pid: int) -> None:
        self.pid, self.peak, self._stop = pid, 0.0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, rss_mb(self.pid))

    def __enter__(self) -> RssSampler:
        self.peak = rss_mb(self.pid)
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


# ---- processes ---------------------------------------------------------------------------------------


def start_fake(args: argparse.Namespace) -> tuple[subprocess.Popen[str], int]:
    cmd = [
        sys.executable,
        str(HERE / "fake_upstream.py"),
        "--latency-ms",
        str(args.latency_ms),
        "--tokens",
        str(args.tokens),
        "--tokens-per-chunk",
        str(args.tokens_per_chunk),
        "--token-rate",
        str(args.token_rate),
        "--heavy-model",
        "heavy",
        "--heavy-ratio",
        str(args.heavy_ratio),
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline() if proc.stdout else ""
    if not line.startswith("ready "):
        proc.kill()
        raise SystemExit(f"the fake upstream did not start: {line!r}")
    return proc, int(line.split()[1])


def gateway_config(fake_port: int, deadline_ms: int, max_tokens: int) -> str:
    models = ["m1", "m2", "m3", "judge", "synth", "heavy", "plain"]
    fast = [f"fast-{m}" for m in models]
    lines = [
        'default_provider = "fake"',
        'default_preset = "bench"',
        "[providers.fake]",
        'kind = "openai_compat"',
        f'base_url = "http://127.0.0.1:{fake_port}/v1"',
        'api_key = "bench"',
    ]

    def member(m: str | tuple[str, str]) -> str:
        """A member, or (model, fallback) as an inline table."""
        if isinstance(m, str):
            return f'"fake/{m}"'
        return f'{{ model = "fake/{m[0]}", fallbacks = ["fake/{m[1]}"] }}'

    def preset(name: str, members: list[str | tuple[str, str]], judge: str, synth: str, **extra: Any) -> None:
        lines.append(f"[presets.{name}]")
        lines.append("members = [" + ", ".join(member(m) for m in members) + "]")
        lines.append(f'judge = "fake/{judge}"')
        lines.append(f'synthesizer = {{ model = "fake/{synth}" }}')
        lines.append(f"deadline_ms = {deadline_ms}")
        lines.append(f"max_tokens = {max_tokens}")
        lines.extend(f"{k} = {json.dumps(v)}" for k, v in extra.items())

    preset("bench", ["m1", "m2", "m3"], "judge", "synth")
    preset("fast", ["fast-m1", "fast-m2", "fast-m3"], "fast-judge", "fast-synth")
    preset("tail_all", ["m1", "m2", "heavy"], "judge", "synth", quorum=3)
    preset("tail_quorum", ["m1", "m2", "heavy"], "judge", "synth", quorum=2, grace_ms=100)
    # Waiting for all three, with hedging: a member call not answered after TAIL_HEDGE_MS gets a duplicate
    # (the heavy member's to m3, an ordinary model; m1's and m2's to themselves).
    preset("tail_hedge", ["m1", "m2", ("heavy", "m3")], "judge", "synth", quorum=3, hedge_ms=TAIL_HEDGE_MS)
    for m in models + fast:
        lines.append(f'[prices."fake/{m}"]')
        lines.append("input = 1.0\noutput = 2.0")
    return "\n".join(lines) + "\n"


def start_gateway(workdir: Path, fake_port: int, port: int, args: argparse.Namespace) -> subprocess.Popen[str]:
    config = workdir / "config.toml"
    config.write_text(gateway_config(fake_port, deadline_ms=60_000, max_tokens=max(args.tokens * 2, 64)))
    cmd = [
        sys.executable,
        "-m",
        "panelfuse.cli",
        "serve",
        "--config",
        str(config),
        "--db",
        f"sqlite+aiosqlite:///{workdir}/runs.db",
        "--port",
        str(port),
        "--no-auth",
        "--log-level",
        "warning",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=(workdir / "gateway.log").open("w"), text=True)
    wait_http(f"http://127.0.0.1:{port}/healthz", proc)
    return proc


# ---- one measurement ---------------------------------------------------------------------------------


@dataclass
class Point:
    concurrency: int
    requests: int
    errors: int
    wall_s: float
    cpu_ms_per_request: float
    req_per_s: float
    p50_ms: float
    p99_ms: float
    overhead_p50_ms: float
    ttft_p50_ms: float | None
    peak_rss_mb: float
    first_errors: list[str] = field(default_factory=list)


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(len(s) * q))] if s else float("nan")


def load(
    url: str, body: dict[str, Any], pid: int, concurrency: int, requests: int, critical_s: float, stream: bool
) -> tuple[Point, dict[str, Any]]:
    cmd = [sys.executable, str(HERE / "loadgen.py"), "--url", url, "--body", json.dumps(body)]
    if stream:
        cmd.append("--stream")
    # Warm up (connections, caches, first-import costs) outside the measured window.
    warm = [*cmd, "--concurrency", str(min(concurrency, 8)), "--requests", "4"]
    subprocess.run(warm, check=True, capture_output=True)
    before = cpu_seconds(pid)
    with RssSampler(pid) as rss:
        measured = [*cmd, "--concurrency", str(concurrency), "--requests", str(requests)]
        done = subprocess.run(measured, check=True, capture_output=True, text=True)
    cpu = cpu_seconds(pid) - before
    out = json.loads(done.stdout)
    lat = out["latencies"]
    served = max(1, len(lat) + len(out["errors"]))
    p50 = pct(lat, 0.5)
    point = Point(
        concurrency=concurrency,
        requests=len(lat),
        errors=len(out["errors"]),
        wall_s=round(out["wall_s"], 3),
        cpu_ms_per_request=round(cpu * 1000 / served, 2),
        req_per_s=round(len(lat) / out["wall_s"], 1) if out["wall_s"] else 0.0,
        p50_ms=round(p50 * 1000, 1),
        p99_ms=round(pct(lat, 0.99) * 1000, 1),
        overhead_p50_ms=round((p50 - critical_s) * 1000, 1),
        ttft_p50_ms=round(pct(out["ttft"], 0.5) * 1000, 1) if out["ttft"] else None,
        peak_rss_mb=round(rss.peak, 1),
        first_errors=out["errors"][:3],
    )
    return point, out


def sweep(
    name: str, url: str, body: dict[str, Any], pid: int, args: argparse.Namespace, critical_s: float, stream: bool
) -> dict[str, Any]:
    points = []
    for c in args.concurrency:
        n = max(args.min_requests, args.per_worker * c)
        point, _ = load(url, body, pid, c, n, critical_s, stream)
        points.append(point)
        print(
            f"  {name:34} C={c:<4} {point.cpu_ms_per_request:7.2f} ms CPU/req  {point.req_per_s:7.1f} req/s  "
            f"p50 {point.p50_ms:8.1f} ms  p99 {point.p99_ms:8.1f} ms  errors {point.errors}",
            flush=True,
        )
    return {
        "name": name,
        "critical_path_ms": critical_s * 1000,
        "stream": stream,
        "points": [asdict(p) for p in points],
    }


def fetch_json(url: str, method: str = "GET") -> Any:
    req = urllib.request.Request(url, method=method, data=b"" if method == "POST" else None)
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read())


# ---- the run -----------------------------------------------------------------------------------------


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="a smoke run: C=1,4, few requests, short answers")
    p.add_argument("--latency-ms", type=float, default=200.0)
    p.add_argument("--tokens", type=int, default=200)
    p.add_argument("--tokens-per-chunk", type=int, default=1)
    p.add_argument("--token-rate", type=float, default=0.0, help="tokens/s per stream (0: unpaced)")
    p.add_argument("--heavy-ratio", type=float, default=10.0, help="p99/median of the heavy-tailed member")
    p.add_argument("--concurrency", type=lambda s: [int(x) for x in s.split(",")], default=[1, 8, 32, 128])
    p.add_argument("--per-worker", type=int, default=8, help="requests per concurrent worker")
    p.add_argument("--min-requests", type=int, default=60)
    p.add_argument("--peer", action="append", default=[], help=f"NAME=BINARY ({', '.join(PEERS)}) to measure beside us")
    p.add_argument("--peers-only", action="store_true", help="measure only the --peer gateways")
    p.add_argument("--out", type=Path, default=HERE / "out" / "gateway_load.json")
    p.add_argument("--only", choices=["all", "tail"], default="all", help="tail: only the tail-latency scenario")
    p.add_argument(
        "--pin",
        action="store_true",
        help="the gateway (or peer) alone on one CPU, the fake upstream and the load generator on the others",
    )
    args = p.parse_args()
    args.gateway_cpus = None
    if args.pin:
        cpus = sorted(os.sched_getaffinity(0))
        if len(cpus) < 2:
            p.error(f"--pin needs at least 2 CPUs; this process may use {len(cpus)}")
        args.gateway_cpus = {cpus[0]}
        os.sched_setaffinity(0, set(cpus[1:]))  # the fake and the load generator, started from here, inherit it
    for peer in args.peer:
        name, _, binary = peer.partition("=")
        if name not in PEERS or not binary:
            p.error(f"--peer {peer!r}: expected NAME=BINARY, NAME one of {', '.join(PEERS)}")
    if args.quick:
        args.concurrency, args.per_worker, args.min_requests = [1, 4], 2, 6
        args.tokens, args.latency_ms = min(args.tokens, 50), min(args.latency_ms, 50.0)

    results: dict[str, Any] = {
        "machine": {
            "cpus": os.cpu_count(),
            "cpu": _cpu_model(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "command": " ".join(["bench/gateway_load.py", *sys.argv[1:]]),
        "upstream": {
            "latency_ms": args.latency_ms,
            "tokens": args.tokens,
            "tokens_per_chunk": args.tokens_per_chunk,
            "token_rate": args.token_rate,
        },
        "rows": [],
        "pinned": None,
    }
    workdir = Path(tempfile.mkdtemp(prefix="panelfuse-bench-"))
    fake, fake_port = start_fake(args)
    try:
        if not args.peers_only:
            measure_panelfuse(results, workdir, fake_port, args)
        for peer in args.peer:  # each peer alone with the same fake, after ours
            name, _, binary = peer.partition("=")
            try:
                measure_peer(results, name, binary, workdir, fake_port, args)
            except (OSError, SystemExit, subprocess.CalledProcessError) as exc:  # ours are kept whatever a peer does
                print(f"  {name}: not measured: {exc}")
                results.setdefault("peers_failed", {})[name] = str(exc)
    finally:
        stop(fake)
        shutil.rmtree(workdir, ignore_errors=True)

    print_table(results)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print(f"\nwrote {args.out}")


def measure_panelfuse(results: dict[str, Any], workdir: Path, fake_port: int, args: argparse.Namespace) -> None:
    lat_s = args.latency_ms / 1000
    gateway = None
    try:
        port = free_port()
        gateway = start_gateway(workdir, fake_port, port, args)
        pin_process(results, "panelfuse", gateway.pid, args)
        url = f"http://127.0.0.1:{port}/v1/chat/completions"
        results["idle_rss_mb"] = round(rss_mb(gateway.pid), 1)
        before = cpu_seconds(gateway.pid)
        time.sleep(1 if args.quick else 3)
        results["idle_cpu_ms_per_s"] = round((cpu_seconds(gateway.pid) - before) * 1000 / (1 if args.quick else 3), 1)
        print(
            f"gateway pid {gateway.pid}, idle RSS {results['idle_rss_mb']} MB, idle CPU "
            f"{results['idle_cpu_ms_per_s']} ms/s; fake upstream on :{fake_port}"
        )
        plain = {"model": "fake/plain", "messages": ASK}
        fusion = {"model": "panelfuse/fusion-bench", "messages": ASK}
        if args.only == "tail":
            results["tail"] = tail(url, gateway.pid, args)
            return
        rows = results["rows"]
        rows.append(sweep("panelfuse, plain model proxied", url, plain, gateway.pid, args, lat_s, True))
        rows.append(sweep("panelfuse fusion (streamed)", url, fusion, gateway.pid, args, 3 * lat_s, True))
        rows.append(sweep("panelfuse fusion (not streamed)", url, fusion, gateway.pid, args, 3 * lat_s, False))
        results["load_scaling"] = load_scaling(url, gateway.pid, args)
        results["final_ttft"] = final_ttft(url, gateway.pid, fake_port, args)
        results["tail"] = tail(url, gateway.pid, args)
        results["idle_rss_after_mb"] = round(rss_mb(gateway.pid), 1)
    finally:
        stop(gateway)


def pin_process(results: dict[str, Any], name: str, pid: int, args: argparse.Namespace) -> None:
    """With --pin: the measured gateway alone on its CPU; what the kernel then allows it is recorded."""
    if args.gateway_cpus is None:
        return
    pinned = results["pinned"] or {"others": sorted(os.sched_getaffinity(0))}
    pinned[name] = pin(pid, args.gateway_cpus)
    results["pinned"] = pinned


def measure_peer(
    results: dict[str, Any], name: str, binary: str, workdir: Path, fake_port: int, args: argparse.Namespace
) -> None:
    peer = PEERS[name]
    proc = None
    try:
        port = free_port()
        proc = peer.start(binary, workdir, fake_port, port)
        pin_process(results, name, proc.pid, args)
        results[f"{name}_idle_rss_mb"] = round(rss_mb(proc.pid), 1)
        print(f"{name} pid {proc.pid}, idle RSS {results[f'{name}_idle_rss_mb']} MB", flush=True)
        url = f"http://127.0.0.1:{port}/v1/chat/completions"
        for row in peer.rows:
            body = {"model": row.model, "messages": ASK}
            critical_s = row.calls * args.latency_ms / 1000
            results["rows"].append(sweep(f"{name}, {row.label}", url, body, proc.pid, args, critical_s, row.stream))
    finally:
        stop(proc)


def load_scaling(url: str, pid: int, args: argparse.Namespace) -> dict[str, Any]:
    """CPU per fusion with zero upstream latency, at C=1 and at the highest concurrency, and the memory
    one in-flight fusion holds (peak RSS under load minus idle, over the fusions in flight). Also the
    proxied request at C=1 with zero latency: beside the sweep's C=1 figures (the same work with the
    upstream's latency between its steps) it shows what the idle gaps alone add."""
    fast = {"model": "panelfuse/fusion-fast", "messages": ASK}
    top = max(args.concurrency)
    idle = rss_mb(pid)
    few = max(args.min_requests, 40 if not args.quick else 6)
    one, _ = load(url, fast, pid, 1, few, 0.0, True)
    plain, _ = load(url, {"model": "fake/fast-plain", "messages": ASK}, pid, 1, 4 * few, 0.0, True)
    many, _ = load(url, fast, pid, top, max(args.min_requests, args.per_worker * top), 0.0, True)
    out = {
        "c1_cpu_ms": one.cpu_ms_per_request,
        f"c{top}_cpu_ms": many.cpu_ms_per_request,
        "ratio": round(many.cpu_ms_per_request / one.cpu_ms_per_request, 2) if one.cpu_ms_per_request else None,
        "concurrency": top,
        "c1_req_per_s": one.req_per_s,
        "c1_plain_cpu_ms": plain.cpu_ms_per_request,
        f"c{top}_req_per_s": many.req_per_s,
    }
    # Memory per in-flight fusion: hold `top` fusions open at the 200 ms latency and read the peak.
    held, _ = load(url, {"model": "panelfuse/fusion-bench", "messages": ASK}, pid, top, top, 0.0, True)
    out["idle_rss_mb"] = round(idle, 1)
    out["peak_rss_mb_in_flight"] = held.peak_rss_mb
    out["kb_per_in_flight_fusion"] = round(max(0.0, held.peak_rss_mb - idle) * 1024 / top, 1)
    print(
        f"  cost vs load (0 ms upstream): C=1 {one.cpu_ms_per_request} ms, C={top} {many.cpu_ms_per_request} ms; "
        f"{out['kb_per_in_flight_fusion']} KB per in-flight fusion; plain model proxied at C=1: "
        f"{plain.cpu_ms_per_request} ms",
        flush=True,
    )
    return out


def final_ttft(url: str, pid: int, fake_port: int, args: argparse.Namespace) -> dict[str, Any]:
    """At C=1: when the final answer's first token reached the client, against when the fake wrote the
    synthesizer's first token (one monotonic clock for both processes)."""
    fetch_json(f"http://127.0.0.1:{fake_port}/stats/reset", "POST")
    n = 6 if args.quick else 30
    _, out = load(url, {"model": "panelfuse/fusion-bench", "messages": ASK}, pid, 1, n, 0.0, True)
    synth = fetch_json(f"http://127.0.0.1:{fake_port}/stats")["synth_first_token"]
    # The warm-up's fusions came first; the measured ones are the last n.
    gaps = [
        (got - sent) * 1000
        for got, sent in zip(out["first_token_at"], synth[-len(out["first_token_at"]) :], strict=True)
    ]
    res = {
        "samples": len(gaps),
        "p50_ms": round(statistics.median(gaps), 2) if gaps else None,
        "max_ms": round(max(gaps), 2) if gaps else None,
    }
    print(f"  final answer first token after the synthesizer's: p50 {res['p50_ms']} ms, max {res['max_ms']} ms")
    return res


def tail(url: str, pid: int, args: argparse.Namespace) -> dict[str, Any]:
    """One member with a heavy-tailed latency (p99 = ratio × median): waiting for all three, a quorum of
    two with 100 ms of grace, and waiting for all three with hedging (TAIL_HEDGE_MS). Each with the
    calls and cost per fusion the gateway stored; hedging's extra against waiting for all."""
    c = 4 if args.quick else 8
    n = 8 if args.quick else 240
    out: dict[str, Any] = {"heavy_ratio": args.heavy_ratio, "concurrency": c, "hedge_ms": TAIL_HEDGE_MS}
    runs_url = url.replace("/v1/chat/completions", "/v1/fusion/runs")
    for name in TAIL_PRESETS:
        point, _ = load(url, {"model": f"panelfuse/fusion-{name}", "messages": ASK}, pid, c, n, 0.0, False)
        ratio = round(point.p99_ms / point.p50_ms, 2)
        out[name] = {"p50_ms": point.p50_ms, "p99_ms": point.p99_ms, "p99_over_p50": ratio, "errors": point.errors}
        out[name].update(stored_costs(runs_url, name, fetch_json))
        if point.first_errors:
            out[name]["first_errors"] = point.first_errors
        print(
            f"  {name:12} p50 {point.p50_ms} ms  p99 {point.p99_ms} ms  p99/p50 {ratio}  "
            f"{out[name]['calls_per_fusion']} calls, ${out[name]['cost_per_fusion']:.6f} per fusion"
        )
    out["hedge_extra"] = hedge_extra(out["tail_all"], out["tail_hedge"])
    extra = out["hedge_extra"]
    print(
        f"  hedging: {extra['hedges_per_fusion']} hedges per fusion ({extra['hedges_won_per_fusion']} won), "
        f"+{extra['calls_per_fusion']} upstream calls per fusion, +{extra['cost_pct']} % cost as billed, "
        f"+{extra['cost_pct_if_losers_billed']} % if every cancelled loser were billed in full"
    )
    return out


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def print_table(results: dict[str, Any]) -> None:
    print("\n| target | CPU ms/request | overhead p50 at C=1 | max req/s | p50 / p99 at C=32 | p50 at C=128 |")
    print("|---|---|---|---|---|---|")
    for row in results["rows"]:
        pts = {p["concurrency"]: p for p in row["points"]}
        cpu = [p["cpu_ms_per_request"] for p in row["points"]]
        c32 = pts.get(32)
        c128 = pts.get(128)
        first = row["points"][0]
        print(
            f"| {row['name']} | {min(cpu):.1f}–{max(cpu):.1f} | {first['overhead_p50_ms']:.0f} ms | "
            f"{max(p['req_per_s'] for p in row['points']):.1f} | "
            + (f"{c32['p50_ms'] / 1000:.2f} s / {c32['p99_ms'] / 1000:.2f} s" if c32 else "–")
            + " | "
            + (f"{c128['p50_ms'] / 1000:.2f} s" if c128 else "–")
            + " |"
        )


if __name__ == "__main__":
    main()
