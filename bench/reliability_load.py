"""Nothing lost under load: thousands of fusion requests at high concurrency against a real gateway
whose upstream injects faults, with clients that leave midway, then `kill -9` of the gateway mid-load
and a restart. The gateway (`panelfuse serve`), the fault-injecting upstream (bench/fault_upstream.py)
and this load generator are separate processes; everything is on loopback.

    python bench/reliability_load.py [--db sqlite|postgres] [--requests 2000] [--concurrency 200]
    python bench/reliability_load.py --quick          # the reduced size .ci/run runs (tests/test_reliability_load.py)

Then a SIGTERM half-way through more load, with a short grace: every client in flight gets its answer
or is told the gateway shut down (a 503, or an error chunk on a stream), never a dropped connection,
and those runs are stored `cancelled`.

Afterwards it checks, from the database itself: every request has at most one run, exactly one when
its client saw an answer or an error; each run's status is what its client saw; no run is left
`running`; each key's spend equals the sum of its runs' costs, nothing stays reserved and no budget
is overspent; the gateway's sockets, asyncio tasks and memory are back to their level after warm-up.
After the kill -9 and restart: the runs in flight are `interrupted`, every run a client saw complete
is still stored complete with the same answer, and the SQLite file passes `PRAGMA integrity_check`.
Prints a table and one JSON object (`--json PATH` writes it too); exits 1 if any check failed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import sqlalchemy as sa

HERE = Path(__file__).resolve().parent
PG_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
REDIS_URL = "redis://127.0.0.1:6379/0"
DEADLINE_MS = 3000
SOCKET_SLACK = 10  # sockets above the warm-up's level still counted as "back to baseline"
# The pools' own bounds, per serving process: their idle connections stay open by design, so they are
# counted apart (a pool grows to the load's high-water mark) and held to their bound instead.
POOL_LIMIT = 512  # providers/http.py: the shared session's connection limit
DB_POOL_LIMIT = 15  # SQLAlchemy's default pool: 5, and 10 more under load
REDIS_POOL_LIMIT = 16  # service/ratelimit.py: REDIS_POOL_SIZE
MODELS = ("m1", "m2", "m3", "judge", "synth")
# Keys: two roomy ones, one whose budget runs out mid-load (402s), one with a concurrency limit (429s).
KEYS = {
    "roomy-a": {"budget_usd": 1000.0},
    "roomy-b": {"budget_usd": 1000.0},
    "tight": {"budget_usd": 0.05},
    "limited": {"budget_usd": 1000.0, "max_concurrent": 8},
}


# ---- processes ---------------------------------------------------------------------------------------


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_upstream(seed: int, fault_rate: float) -> tuple[subprocess.Popen[str], int]:
    cmd = [sys.executable, str(HERE / "fault_upstream.py"), "--seed", str(seed), "--fault-rate", str(fault_rate)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline() if proc.stdout else ""
    if not line.startswith("ready "):
        proc.kill()
        raise SystemExit(f"the fault upstream did not start: {line!r}")
    return proc, int(line.split()[1])


def write_config(workdir: Path, upstream_port: int) -> Path:
    lines = [
        'default_provider = "fake"',
        'default_preset = "load"',
        "[providers.fake]",
        'kind = "openai_compat"',
        f'base_url = "http://127.0.0.1:{upstream_port}/v1"',
        'api_key = "load"',
        "[presets.load]",
        'members = ["fake/m1", "fake/m2", "fake/m3"]',
        'judge = "fake/judge"',
        'synthesizer = { model = "fake/synth" }',
        f"deadline_ms = {DEADLINE_MS}",
        "max_tokens = 100",
    ]
    for m in MODELS:
        lines += [f'[prices."fake/{m}"]', "input = 1.0", "output = 2.0"]
    path = workdir / "config.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


@dataclass
class Target:
    kind: str  # sqlite | postgres
    url: str
    schema: str | None
    sqlite_path: Path | None
    workers: int

    def serve_args(self) -> list[str]:
        args = ["--db", self.url]
        if self.workers > 1:
            args += ["--workers", str(self.workers), "--redis", REDIS_URL]
        return args


def start_gateway(workdir: Path, config: Path, target: Target, port: int, grace: float = 5.0) -> subprocess.Popen[str]:
    cmd = [sys.executable, "-m", "panelfuse.cli", "serve", "--config", str(config), "--port", str(port)]
    cmd += [*target.serve_args(), "--auth", "--log-level", "warning", "--shutdown-grace", str(grace)]
    log = (workdir / "gateway.log").open("a")
    env = {**os.environ, "PANELFUSE_DB_SCHEMA": target.schema} if target.schema else None
    # Its own session: kill -9 reaches every worker at once (os.killpg).
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log, text=True, start_new_session=True, env=env)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the gateway exited ({proc.returncode}); see {workdir / 'gateway.log'}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2):
                return proc
        except OSError:
            time.sleep(0.1)
    raise SystemExit("the gateway did not come up")


def kill_group(proc: subprocess.Popen[str], sig: int) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, sig)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


def health(port: int) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as r:
        return dict(json.loads(r.read()))


def gateway_pids(proc: subprocess.Popen[str]) -> list[int]:
    """The serving processes: the gateway itself, or its workers when it supervises some."""
    children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
    workers = [int(c) for c in children if "resource_tracker" not in Path(f"/proc/{c}/cmdline").read_text()]
    return workers or [proc.pid]


def footprint(pids: list[int], upstream_port: int) -> dict[str, Any]:
    """Open sockets and resident memory (MB) of the serving processes, summed. `pooled` counts the
    sockets the pools keep: to the upstream (the HTTP client's pool keeps idle ones for their
    keep-alive, and aiohttp closes them up to twice that late), to PostgreSQL and to Redis; `pools`
    has them by pool. The rest (clients' connections, above all) must come back to the warm-up's
    level."""
    ports = {"upstream": upstream_port, "postgres": 5432, "redis": 6379}
    remote = {name: _sockets_to_port(port) for name, port in ports.items()}
    sockets, rss = 0, 0.0
    pools = dict.fromkeys(ports, 0)
    for pid in pids:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                link = os.readlink(fd)
            except OSError:
                continue
            if link.startswith("socket:"):
                sockets += 1
                for name, inodes in remote.items():
                    pools[name] += link[8:-1] in inodes
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                rss += int(line.split()[1]) / 1024
    return {"sockets": sockets, "pooled": sum(pools.values()), "pools": pools, "rss_mb": round(rss, 1)}


def _sockets_to_port(port: int) -> set[str]:
    """The inodes of TCP sockets whose remote end is `port` on this machine (/proc/net/tcp, tcp6)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if int(fields[2].rsplit(":", 1)[1], 16) == port:
                inodes.add(fields[9])
    return inodes


# ---- keys and the database -----------------------------------------------------------------------


async def create_keys(target: Target) -> dict[str, tuple[str, str]]:
    from panelfuse.store import RunStore

    out = {}
    async with await RunStore.open(target.url, schema=target.schema) as store:
        for name, limits in KEYS.items():
            created = await store.keys.create(name, **limits)  # type: ignore[arg-type]
            out[name] = (created.key.id, created.secret)
    return out


async def read_db(target: Target) -> tuple[list[dict[str, Any]], dict[str, dict[str, Any]]]:
    """Every run (id, status, cost, key, content, the request's tag) and every key's budget figures."""
    from sqlalchemy.ext.asyncio import create_async_engine

    connect_args = {"server_settings": {"search_path": target.schema}} if target.schema else {}
    engine = create_async_engine(target.url, connect_args=connect_args)
    try:
        async with engine.connect() as conn:
            rows = (await conn.execute(sa.text("SELECT id, status, cost, key_id, content, request FROM runs"))).all()
            query = sa.text("SELECT id, name, budget_usd, spent_usd, reserved_usd FROM api_keys")
            keys = (await conn.execute(query)).all()
    finally:
        await engine.dispose()
    runs = []
    for r in rows:
        request = r.request if isinstance(r.request, dict) else json.loads(r.request or "{}")
        runs.append(
            {"id": r.id, "status": r.status, "cost": r.cost, "key_id": r.key_id, "content": r.content}
            | {"tag": (request or {}).get("user")}
        )
    return runs, {k.id: dict(k._mapping) for k in keys}


# ---- the load --------------------------------------------------------------------------------------------


@dataclass
class Outcome:
    tag: str
    key: str
    stream: bool
    # completed | failed | left | shut down | rejected:<status> | killed | unsent
    # | unserved:<why> (the connection failed before any answer) | broken:<why> (after it began)
    seen: str
    run_id: str | None = None
    content: str = ""


def _frames(buf: bytes) -> tuple[list[bytes], bytes]:
    *frames, rest = buf.split(b"\n\n")
    return frames, rest


async def one_request(
    session: aiohttp.ClientSession, url: str, tag: str, key: tuple[str, str], stream: bool, leave_after: float | None
) -> Outcome:
    name, secret = key
    out = Outcome(tag, name, stream, seen="broken:no answer")
    body = {"model": "panelfuse/fusion", "messages": [{"role": "user", "content": f"why is the sky blue? ({tag})"}]}
    body |= {"user": tag, "stream": stream}
    headers = {"Authorization": f"Bearer {secret}", "Content-Type": "application/json"}
    answered = False
    try:
        async with asyncio.timeout(leave_after), session.post(url, data=orjson.dumps(body), headers=headers) as resp:
            answered = True
            out.run_id = resp.headers.get("X-Panelfuse-Run-Id")
            if resp.status in (400, 402, 429):
                out.seen = f"rejected:{resp.status}"
                return out
            if not stream:
                data = orjson.loads(await resp.read())
                if resp.status == 200:
                    out.seen, out.content = "completed", data["choices"][0]["message"]["content"] or ""
                elif resp.status == 503 and _code(data) == "shutting_down":
                    out.seen = "shut down"
                elif resp.status == 502 and data.get("error"):
                    out.seen = "failed"
                    out.run_id = out.run_id or (data["error"].get("metadata") or {}).get("run_id")
                else:
                    out.seen = f"broken:HTTP {resp.status}"
                return out
            if resp.status != 200:
                out.seen = f"broken:HTTP {resp.status}"
                return out
            buf, parts = b"", []
            async for piece in resp.content.iter_any():
                frames, buf = _frames(buf + piece)
                for frame in frames:
                    if frame == b"data: [DONE]":
                        out.seen, out.content = "completed", "".join(parts)
                        return out
                    if not frame.startswith(b"data: "):
                        continue
                    chunk = orjson.loads(frame[6:])
                    if chunk.get("error"):
                        out.seen = "shut down" if _code(chunk) == "shutting_down" else "failed"
                        return out
                    delta = (chunk.get("choices") or [{}])[0].get("delta") or {}
                    if delta.get("content"):
                        parts.append(delta["content"])
            out.seen = "broken:stream ended without its end"
    except TimeoutError:
        out.seen = "left"  # the client gave up midway
    except aiohttp.ClientError as exc:
        out.seen = f"{'broken' if answered else 'unserved'}:{type(exc).__name__}"
    return out


def _code(body: dict[str, Any]) -> str | None:
    """Our own reason in an error (OpenRouter's shape keeps it in metadata)."""
    return ((body.get("error") or {}).get("metadata") or {}).get("error_code")


async def load(
    port: int,
    keys: dict[str, tuple[str, str]],
    tags: list[str],
    concurrency: int,
    seed: int,
    leave_rate: float,
    outcomes: list[Outcome],
) -> None:
    """Closed loop: `concurrency` clients each send the next request when their last one ended."""
    rng = random.Random(seed)
    plan = [
        (
            tag,
            list(KEYS)[i % len(KEYS)],
            rng.random() < 0.6,
            rng.uniform(0.05, 1.5) if rng.random() < leave_rate else None,
        )
        for i, tag in enumerate(tags)
    ]
    url = f"http://127.0.0.1:{port}/v1/chat/completions"
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=DEADLINE_MS / 1000 + 30)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        queue = iter(plan)

        async def client() -> None:
            for tag, name, stream, leave in queue:
                key = (name, keys[name][1])
                outcomes.append(await one_request(session, url, tag, key, stream, leave))

        await asyncio.gather(*(client() for _ in range(concurrency)))


# ---- the checks ------------------------------------------------------------------------------------------


def check(
    outcomes: list[Outcome], runs: list[dict[str, Any]], keys: dict[str, dict[str, Any]], killed: set[str]
) -> dict[str, Any]:
    """Every invariant, as (name -> list of violations); empty lists are passes."""
    by_tag: dict[str, list[dict[str, Any]]] = {}
    for run in runs:
        by_tag.setdefault(run["tag"], []).append(run)
    problems: dict[str, list[str]] = {k: [] for k in ("one_run", "status", "running", "spend", "lost", "client")}
    for o in outcomes:
        rows = by_tag.get(o.tag, [])
        if len(rows) > 1:
            problems["one_run"].append(f"{o.tag}: {len(rows)} runs")
            continue
        row = rows[0] if rows else None
        if o.seen.startswith(("broken", "unserved")):
            problems["client"].append(f"{o.tag}: {o.seen}")
        if o.seen in ("completed", "failed"):
            if row is None:
                problems["one_run"].append(f"{o.tag}: saw {o.seen}, no run stored")
            elif row["status"] != o.seen:
                problems["status"].append(f"{o.tag}: saw {o.seen}, stored {row['status']}")
            elif o.seen == "completed" and row["content"] != o.content:
                problems["lost"].append(f"{o.tag}: stored answer differs from the one the client got")
        elif (o.seen.startswith("rejected") or o.seen == "unsent") and row is not None:
            problems["one_run"].append(f"{o.tag}: rejected ({o.seen}) but a run was stored")
        elif o.seen == "left" and row is not None and row["status"] not in ("cancelled", "completed", "failed"):
            if not (o.tag.startswith("kill-") and row["status"] == "interrupted"):  # left, then the gateway died
                problems["status"].append(f"{o.tag}: client left, stored {row['status']}")
        elif o.seen == "shut down" and (row is None or row["status"] != "cancelled"):
            problems["status"].append(f"{o.tag}: told the gateway shut down, stored {row and row['status']}")
        elif o.seen == "killed" and row is not None and row["status"] not in ("interrupted", "completed", "failed"):
            problems["status"].append(f"{o.tag}: in flight at kill -9, stored {row['status']}")
    problems["running"] = [r["id"] for r in runs if r["status"] == "running"]
    for key_id, key in keys.items():
        spent = sum(r["cost"] or 0.0 for r in runs if r["key_id"] == key_id)
        if abs(key["spent_usd"] - spent) > 1e-9 * max(1.0, spent):
            problems["spend"].append(f"{key['name']}: spent {key['spent_usd']:.9f}, runs cost {spent:.9f}")
        if abs(key["reserved_usd"]) > 1e-12:
            problems["spend"].append(f"{key['name']}: {key['reserved_usd']:.9f} still reserved")
        if key["budget_usd"] is not None and key["spent_usd"] > key["budget_usd"] + 1e-12:
            problems["spend"].append(f"{key['name']}: spent {key['spent_usd']} of a {key['budget_usd']} budget")
    return {name: found[:10] for name, found in problems.items()} | {
        "violations": sum(len(found) for found in problems.values()),
        "in_flight_at_kill": len(killed),
    }


async def settle(port: int, within_s: float = 60) -> dict[str, Any]:
    """Wait until the gateway has no run in flight (its clean-up after clients left included)."""
    deadline = time.monotonic() + within_s
    while True:
        h = health(port)
        if h.get("active_runs", 0) == 0 or time.monotonic() > deadline:
            await asyncio.sleep(1.0)  # pooled connections idle out of the upstream's accounting
            return health(port)
        await asyncio.sleep(0.2)


# ---- the phases --------------------------------------------------------------------------------------------


async def run_phase_load(
    args: argparse.Namespace, port: int, pids: list[int], upstream_port: int, keys: Any, outcomes: list[Outcome]
):
    warm = [f"warm-{i}" for i in range(min(args.concurrency, 100))]
    await load(port, keys, warm, min(args.concurrency, 50), args.seed, 0.0, outcomes)
    baseline_health = await settle(port)
    baseline = footprint(pids, upstream_port) | {"tasks": baseline_health.get("tasks")}
    rounds = []
    for r in range(args.rounds):  # the same load again: what it leaves behind must not grow
        tags = [f"load-{r}-{i}" for i in range(args.requests)]
        started = time.monotonic()
        await load(port, keys, tags, args.concurrency, args.seed + 1 + 10 * r, args.leave_rate, outcomes)
        wall = time.monotonic() - started
        after_health = await settle(port)
        rounds.append(footprint(pids, upstream_port) | {"tasks": after_health.get("tasks"), "wall_s": round(wall, 1)})
    after = rounds[-1]
    wall = sum(r["wall_s"] for r in rounds)
    return {"baseline": baseline, "rounds": rounds, "after": after, "wall_s": round(wall, 1)}


async def run_phase_kill(args: argparse.Namespace, port: int, keys: Any, outcomes: list[Outcome], proc) -> set[str]:
    """Load, then kill -9 of the whole gateway while requests are in flight; returns their tags."""
    tags = [f"kill-{i}" for i in range(args.requests // 2)]
    mine: list[Outcome] = []
    task = asyncio.create_task(load(port, keys, tags, args.concurrency, args.seed + 2, args.leave_rate, mine))
    # Half-way through, the pipe full: then kill. (Polls a list the load task fills.)
    while len(mine) < len(tags) // 2 and not task.done():  # noqa: ASYNC110
        await asyncio.sleep(0.02)
    kill_group(proc, signal.SIGKILL)
    await asyncio.gather(task, return_exceptions=True)
    done = {o.tag for o in mine}
    killed = set()
    for o in mine:
        if o.seen == "unserved:ClientConnectorError":
            o.seen = "unsent"  # sent after the gateway was gone: the connection was refused
        elif o.seen.startswith(("broken", "unserved")):
            o.seen = "killed"  # its connection died with the gateway: it saw no outcome
            killed.add(o.tag)
    outcomes.extend(mine)
    # Never sent (their clients were waiting for a turn): they must have left no run behind.
    outcomes.extend(Outcome(t, "", False, seen="unsent") for t in tags if t not in done)
    return killed


async def run_phase_sigterm(args: argparse.Namespace, port: int, keys: Any, outcomes: list[Outcome], proc) -> int:
    """Load, then SIGTERM half-way with a short grace: the runs in flight finish or are cancelled as
    "shut down", and every client in flight is told so (a 503, or an error chunk on a stream), never
    a dropped connection. Returns how many clients were told."""
    tags = [f"term-{i}" for i in range(args.requests // 4)]
    mine: list[Outcome] = []
    task = asyncio.create_task(load(port, keys, tags, args.concurrency, args.seed + 3, 0.0, mine))
    while len(mine) < len(tags) // 2 and not task.done():  # noqa: ASYNC110 - polls a list the load task fills
        await asyncio.sleep(0.02)
    os.killpg(proc.pid, signal.SIGTERM)
    await asyncio.gather(task, return_exceptions=True)
    await asyncio.to_thread(proc.wait, 60)
    done = {o.tag for o in mine}
    for o in mine:
        if o.seen.startswith("unserved"):
            # Sent after the gateway stopped accepting: refused, or (several workers share one listening
            # socket) reset from the queue when the last worker left. The check below makes sure no run
            # was stored for it.
            o.seen = "unsent"
    outcomes.extend(mine)
    outcomes.extend(Outcome(t, "", False, seen="unsent") for t in tags if t not in done)
    return sum(o.seen == "shut down" for o in mine)


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="pf-reliability-"))
    if args.db == "sqlite":
        path = workdir / "runs.db"
        target = Target("sqlite", f"sqlite+aiosqlite:///{path}", None, path, 1)
    else:
        schema = f"pf_load_{uuid.uuid4().hex[:10]}"
        target = Target("postgres", PG_URL, schema, None, args.workers)
    upstream, upstream_port = start_upstream(args.seed, args.fault_rate)
    config = write_config(workdir, upstream_port)
    keys = await create_keys(target)
    port = free_port()
    outcomes: list[Outcome] = []
    result: dict[str, Any] = {"db": args.db, "workers": target.workers, "requests": args.requests}
    result |= {
        "rounds": args.rounds,
        "concurrency": args.concurrency,
        "fault_rate": args.fault_rate,
        "leave_rate": args.leave_rate,
    }
    gateway = start_gateway(workdir, config, target, port)
    try:
        pids = gateway_pids(gateway)
        result["load"] = await run_phase_load(args, port, pids, upstream_port, keys, outcomes)
        killed = await run_phase_kill(args, port, keys, outcomes, gateway) if args.kill else set()
        if args.kill:
            # At once: well inside the heartbeat window. A short grace for the SIGTERM phase next.
            gateway = start_gateway(workdir, config, target, port, grace=0.5)
            await settle(port)
            result["told_shut_down"] = await run_phase_sigterm(args, port, keys, outcomes, gateway)
            gateway = start_gateway(workdir, config, target, port)
            await settle(port)
        runs, key_rows = await read_db(target)
        result["checks"] = check(outcomes, runs, key_rows, killed)
        result["seen"] = dict(
            Counter(o.seen.split(":")[0] if o.seen.startswith(("broken", "unserved")) else o.seen for o in outcomes)
        )
        result["stored"] = dict(Counter(r["status"] for r in runs))
        result["spent_usd"] = {k["name"]: round(k["spent_usd"], 6) for k in key_rows.values()}
        kill_group(gateway, signal.SIGTERM)
        if target.sqlite_path is not None:
            with sqlite3.connect(target.sqlite_path) as conn:
                result["integrity_check"] = conn.execute("PRAGMA integrity_check").fetchone()[0]
    finally:
        kill_group(gateway, signal.SIGKILL)
        upstream.terminate()
        upstream.wait(10)
        if target.schema:
            await _drop_schema(target.schema)
    return result


async def _drop_schema(schema: str) -> None:
    from sqlalchemy.ext.asyncio import create_async_engine

    engine = create_async_engine(PG_URL)
    try:
        async with engine.begin() as conn:
            await conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
    finally:
        await engine.dispose()


def verdict(result: dict[str, Any]) -> list[str]:
    """The failed checks, in words (empty: everything held)."""
    failed = [f"{name}: {found}" for name, found in result["checks"].items() if isinstance(found, list) and found]
    load = result["load"]
    if load["after"]["tasks"] is not None and load["after"]["tasks"] > load["baseline"]["tasks"] + 5:
        failed.append(f"tasks: {load['baseline']['tasks']} after warm-up, {load['after']['tasks']} after the load")
    first, last = load["rounds"][0], load["rounds"][-1]
    if last["rss_mb"] > first["rss_mb"] * 1.1 + 10:  # a leak grows with every round; a high-water mark does not
        failed.append(f"memory: {first['rss_mb']} MB after the first round, {last['rss_mb']} MB after the last")
    base, after = load["baseline"], load["after"]
    if after["sockets"] - after["pooled"] > base["sockets"] - base["pooled"] + SOCKET_SLACK:
        failed.append(f"sockets: {base} after warm-up, {after} after (the pools' apart)")
    processes = result.get("workers") or 1
    limits = {"upstream": POOL_LIMIT, "postgres": DB_POOL_LIMIT, "redis": REDIS_POOL_LIMIT}
    for name, count in after.get("pools", {}).items():
        if count > limits[name] * processes:
            failed.append(f"pooled connections to {name}: {count}, past {processes} × the pool's limit")
    if result.get("integrity_check", "ok") != "ok":
        failed.append(f"integrity_check: {result['integrity_check']}")
    return failed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--db", choices=["sqlite", "postgres"], default="sqlite")
    ap.add_argument("--workers", type=int, default=2, help="gateway workers on PostgreSQL (with Redis)")
    ap.add_argument("--requests", type=int, default=2000, help="per round of the load phase")
    ap.add_argument("--rounds", type=int, default=2, help="rounds of the load phase (memory must not grow)")
    ap.add_argument("--concurrency", type=int, default=200)
    ap.add_argument("--fault-rate", type=float, default=0.3)
    ap.add_argument("--leave-rate", type=float, default=0.1, help="share of clients that leave midway")
    ap.add_argument("--no-kill", dest="kill", action="store_false", help="skip the kill -9 and SIGTERM phases")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--quick", action="store_true", help="the reduced size: 300 requests at concurrency 60")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    if args.quick:
        args.requests, args.concurrency, args.rounds = 300, 60, 1
    result = asyncio.run(main_async(args))
    result["failed"] = verdict(result)
    load = result["load"]
    print(
        f"{args.db} ({result['workers']} worker(s)): {args.rounds} x {args.requests} requests at concurrency "
        f"{args.concurrency}, then {args.requests // 2} with kill -9 half-way, "
        f"{args.requests // 4} with SIGTERM half-way"
    )
    print(f"  RSS after each round: {[r['rss_mb'] for r in load['rounds']]} MB")
    print(f"  wall {load['wall_s']} s; clients saw {result['seen']}; runs stored {result['stored']}")
    print(f"  warm-up {load['baseline']} -> after {load['after']}")
    checks = result["checks"]
    print(f"  in flight at kill -9: {checks['in_flight_at_kill']}; violations: {checks['violations']}")
    print(f"  told 'shut down' at SIGTERM (and stored cancelled): {result.get('told_shut_down')}")
    print("  " + ("every check held" if not result["failed"] else "FAILED: " + "; ".join(result["failed"])))
    text = json.dumps(result, indent=2, default=str)
    if args.json:
        args.json.write_text(text)
    print(text)
    sys.exit(1 if result["failed"] else 0)


if __name__ == "__main__":
    main()
