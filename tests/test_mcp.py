"""The MCP server (issue 17), driven by the `mcp` SDK's own client: over stdio (`panelfuse mcp` as a
subprocess) and over streamable HTTP (`/mcp` on a `panelfuse serve` subprocess), against the fake
upstream. The README's "MCP" section is what `connect_stdio` / `connect_http` do."""

from __future__ import annotations

import asyncio
import json
import os
import re
import sqlite3
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import httpx2
import pytest
from mcp import Client, ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp_types import CallToolResult

from panelfuse.service.session_caps import SessionCaps
from panelfuse.store import RunStore
from panelfuse.testing import Failure, Script
from pipeline_helpers import script_panel
from serve_helpers import start_server, stop, write_config

TOOLS = {"fusion", "fusion_result", "fusion_estimate", "fusion_runs"}
QUESTION = {"question": "Why is the sky blue?"}
PRICES = "[prices]\n" + "".join(
    f'"fake/{m}" = {{ input = 1.0, output = 2.0 }}\n' for m in ("m1", "m2", "m3", "judge", "synth")
)
SLOW = {m: Script(text=f"slow {m}", latency=3.0) for m in ("m1", "m2", "m3")}


@asynccontextmanager
async def connect_stdio(tmp_path, fake, *, extra_config: str = "", **env: str) -> AsyncIterator[ClientSession]:
    """As the README's stdio config: the client starts `panelfuse mcp` and talks over its stdio."""
    params = StdioServerParameters(
        command=sys.executable,
        args=["-m", "panelfuse.cli", "mcp", "--config", write_config(tmp_path, fake, PRICES + extra_config)],
        env={**os.environ, "PANELFUSE_DB": f"sqlite:///{tmp_path}/runs.db", "PANELFUSE_SHUTDOWN_GRACE_S": "1", **env},
    )
    async with stdio_client(params) as (read, write), ClientSession(read, write) as session:
        await session.initialize()
        yield session


@asynccontextmanager
async def connect_http(url: str, key: str | None = None) -> AsyncIterator[ClientSession]:
    """As the README's HTTP config: url .../mcp with an Authorization header."""
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    async with (
        httpx2.AsyncClient(headers=headers, timeout=60) as http,
        streamable_http_client(f"{url}/mcp", http_client=http) as (read, write),
        ClientSession(read, write) as session,
    ):
        await session.initialize()
        yield session


def stored_runs(tmp_path) -> list[tuple[str, str, str | None]]:
    with sqlite3.connect(tmp_path / "runs.db") as db:
        return db.execute("SELECT id, status, key_id FROM runs ORDER BY created_at").fetchall()


def structured(result: Any) -> dict[str, Any]:
    assert isinstance(result, CallToolResult)
    assert result.structured_content is not None, result.content
    return result.structured_content


def text(result: Any) -> str:
    return "".join(getattr(block, "text", "") for block in result.content)


async def until_done(session: ClientSession, run_id: str) -> dict[str, Any]:
    """fusion_result until the run is no longer running (bounded: the slow members take seconds)."""
    for _ in range(60):
        out = structured(await session.call_tool("fusion_result", {"run_id": run_id}))
        if out["status"] != "running":
            return out
        await asyncio.sleep(0.5)
    raise AssertionError("the run never finished")


# ---- stdio -------------------------------------------------------------------------------------------


def test_stdio_lists_tools_and_answers_a_fusion(tmp_path, fake):
    script_panel(fake)

    async def go() -> None:
        async with connect_stdio(tmp_path, fake) as session:
            tools = (await session.list_tools()).tools
            assert {t.name for t in tools} == TOOLS
            fusion = next(t for t in tools if t.name == "fusion")
            assert fusion.output_schema is not None and "run_id" in fusion.output_schema["properties"]
            assert fusion.input_schema["required"] == ["question"]

            result = await session.call_tool("fusion", QUESTION)
            assert not result.is_error, text(result)
            out = structured(result)
            assert out["status"] == "completed"
            assert out["answer"] == "The sky is blue because air scatters short wavelengths."
            assert out["analysis"]["consensus"]
            assert out["cost"] > 0 and out["run_id"].startswith("run_")
            assert out["degraded"] is False and out["failed_models"] == []
            assert text(result).startswith(out["answer"]) and "Analysis:" in text(result) and "Cost: $" in text(result)

            runs = structured(await session.call_tool("fusion_runs", {}))["runs"]
            assert [r["id"] for r in runs] == [out["run_id"]]
            assert runs[0]["question"] == QUESTION["question"]

            est = structured(await session.call_tool("fusion_estimate", QUESTION))
            assert est["total"] > 0 and set(est["by_stage"]) >= {"panel"}

    asyncio.run(go())
    assert stored_runs(tmp_path)[0][1] == "completed"


def test_stdio_slow_run_returns_its_id_then_completes_through_fusion_result(tmp_path, fake):
    script_panel(fake, **SLOW)

    async def go() -> None:
        async with connect_stdio(tmp_path, fake, PANELFUSE_MCP_WAIT_S="0.5") as session:
            result = await session.call_tool("fusion", QUESTION)
            assert not result.is_error, text(result)
            pending = structured(result)
            assert pending["status"] == "running" and pending["answer"] is None
            assert "fusion_result" in text(result) and pending["run_id"] in text(result)
            done = await until_done(session, pending["run_id"])
            assert done["status"] == "completed"
            assert done["answer"] == "The sky is blue because air scatters short wavelengths."
            assert done["cost"] > 0 and done["analysis"]

    asyncio.run(go())
    assert [r[1] for r in stored_runs(tmp_path)] == ["completed"]


def test_stdio_progress_notifications_per_stage(tmp_path, fake):
    script_panel(fake)
    seen: list[tuple[float, str | None]] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        seen.append((progress, message))

    async def go() -> None:
        async with connect_stdio(tmp_path, fake) as session:
            result = await session.call_tool("fusion", QUESTION, progress_callback=on_progress)
            assert structured(result)["status"] == "completed"

    asyncio.run(go())
    messages = [m or "" for _, m in seen]
    assert sum(m.startswith("panel:") for m in messages) == 3
    assert any(m.startswith("analysis:") for m in messages) and messages[-1] == "answer: written"
    assert [p for p, _ in seen] == sorted(p for p, _ in seen)  # progress only increases


def test_stdio_progress_tells_of_a_hedge_and_of_a_fallback(tmp_path, fake):
    """The `preset` argument names a configured preset (estimate and run); a member hedged (its
    duplicate wins) and another falling back are steps a client sees."""
    script_panel(
        fake,
        m1=Script(text="slow", latency=30),
        backup=Script(text="backup answer"),
        m2=Script(failure=Failure.HTTP, status_code=401),
    )
    hedged = (
        '[presets.hedged]\nmembers = [{ model = "fake/m1", fallbacks = ["fake/backup"] }, '
        '{ model = "fake/m2", fallbacks = ["fake/m3"] }, "fake/m3"]\n'
        'judge = "fake/judge"\nsynthesizer = { model = "fake/synth" }\nhedge_ms = 50\n'
    )
    seen: list[str] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        seen.append(message or "")

    async def go() -> None:
        async with connect_stdio(tmp_path, fake, extra_config=hedged) as session:
            args = {**QUESTION, "preset": "hedged"}
            estimate = await session.call_tool("fusion_estimate", args)
            assert not estimate.is_error and structured(estimate)["total"] > 0
            result = await session.call_tool("fusion", args, progress_callback=on_progress)
            assert structured(result)["status"] == "completed"

    asyncio.run(go())
    # The delay is the one measured (50 ms configured; a busy machine reports a little more).
    hedged_after = [re.fullmatch(r"panel: A hedged after (\d+) ms, fake/m1 → fake/backup", m) for m in seen]
    assert [int(m[1]) >= 50 for m in hedged_after if m] == [True]
    assert "panel: A's hedge answered first, fake/m1 → fake/backup" in seen
    assert any(m.startswith("panel: B fell back, fake/m2 → fake/m3 (") for m in seen)
    assert seen[-1] == "answer: written"


def test_stdio_session_cap_refuses_the_next_fusion_and_starts_no_run(tmp_path, fake):
    script_panel(fake)

    async def go() -> None:
        async with connect_stdio(tmp_path, fake, PANELFUSE_MCP_MAX_FUSIONS_PER_SESSION="2") as session:
            for _ in range(2):
                assert structured(await session.call_tool("fusion", QUESTION))["status"] == "completed"
            refused = await session.call_tool("fusion", QUESTION)
            assert refused.is_error
            assert "per-session cap" in text(refused)

    asyncio.run(go())
    assert len(stored_runs(tmp_path)) == 2


def test_stdio_bad_arguments_and_refusals_are_tool_errors(tmp_path, fake):
    script_panel(fake)

    async def go() -> None:
        async with connect_stdio(tmp_path, fake) as session:
            unknown = await session.call_tool("fusion", {**QUESTION, "preset": "nope"})
            assert unknown.is_error and "nope" in text(unknown)
            too_dear = await session.call_tool("fusion", {**QUESTION, "max_cost": 0})
            assert too_dear.is_error and "max_cost_exceeded" in text(too_dear)
            bad_mode = await session.call_tool("fusion", {**QUESTION, "mode": "loud"})
            assert bad_mode.is_error
            empty = await session.call_tool("fusion", {"question": ""})
            assert empty.is_error
            missing = await session.call_tool("fusion_result", {"run_id": "run_nope"})
            assert missing.is_error and "no run" in text(missing)

    asyncio.run(go())
    assert stored_runs(tmp_path) == []


# ---- streamable HTTP ---------------------------------------------------------------------------------


def make_key(tmp_path, **limits: Any) -> tuple[str, str]:
    """A key in the store the server will use (its first key: auth is on from then on); (secret, id)."""

    async def create() -> tuple[str, str]:
        store = await RunStore.open(f"sqlite:///{tmp_path}/runs.db")
        try:
            new = await store.keys.create("agent", **limits)
            return new.secret, new.key.id
        finally:
            await store.close()

    return asyncio.run(create())


@pytest.fixture
def keyed_server(tmp_path, fake):
    """`panelfuse serve` with one key (so auth is on) and a session cap of 2; yields (url, key, key id)."""
    script_panel(fake)
    key, key_id = make_key(tmp_path)
    env = {"PANELFUSE_MCP_MAX_FUSIONS_PER_SESSION": "2"}
    proc, url = start_server(tmp_path, fake, "--shutdown-grace", "1", env=env, config_extra=PRICES)
    try:
        yield url, key, key_id
    finally:
        stop(proc)


def test_http_without_a_key_is_401(keyed_server):
    url, _, _ = keyed_server
    r = httpx.post(
        f"{url}/mcp",
        json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
        headers={"Accept": "application/json, text/event-stream"},
    )
    assert r.status_code == 401
    assert r.json()["error"]["metadata"]["error_code"] == "missing_api_key"
    bad = httpx.post(f"{url}/mcp", json={}, headers={"Authorization": "Bearer pf-not-a-key"})
    assert bad.status_code == 401


def test_http_with_a_key_runs_a_fusion_that_is_the_keys(tmp_path, keyed_server):
    url, key, key_id = keyed_server

    async def go() -> str:
        async with connect_http(url, key) as session:
            assert {t.name for t in (await session.list_tools()).tools} == TOOLS
            result = await session.call_tool("fusion", QUESTION)
            out = structured(result)
            assert out["status"] == "completed", text(result)
            runs = structured(await session.call_tool("fusion_runs", {}))["runs"]
            assert [r["id"] for r in runs] == [out["run_id"]]
            return out["run_id"]

    run_id = asyncio.run(go())
    assert stored_runs(tmp_path) == [(run_id, "completed", key_id)]
    listed = httpx.get(f"{url}/v1/fusion/runs", headers={"Authorization": f"Bearer {key}"}).json()["data"]
    assert [r["id"] for r in listed] == [run_id]


def test_http_session_cap(tmp_path, fake, keyed_server):
    url, key, _ = keyed_server

    async def go() -> None:
        async with connect_http(url, key) as session:
            assert structured(await session.call_tool("fusion", QUESTION))["status"] == "completed"
            assert structured(await session.call_tool("fusion", QUESTION))["status"] == "completed"
            refused = await session.call_tool("fusion", QUESTION)
            assert refused.is_error and "per-session cap" in text(refused)
        async with connect_http(url, key) as fresh:  # a new session has its own count
            assert structured(await fresh.call_tool("fusion", QUESTION))["status"] == "completed"

    asyncio.run(go())
    assert len(stored_runs(tmp_path)) == 3


def test_http_budget_refusal_is_a_tool_error_and_starts_no_run(tmp_path, keyed_server):
    url, _, _ = keyed_server
    poor, _ = make_key(tmp_path, budget_usd=1e-9)

    async def go() -> None:
        async with connect_http(url, poor) as session:
            refused = await session.call_tool("fusion", QUESTION)
            assert refused.is_error and "status 402" in text(refused)

    asyncio.run(go())
    assert stored_runs(tmp_path) == []


def test_http_sessionless_client_is_served(keyed_server):
    """The SDK's `Client` negotiates the 2026-07-28 protocol where it can (no Mcp-Session-Id): still
    authenticated, still capped (per key while it has no session)."""
    url, key, _ = keyed_server

    async def go() -> None:
        transport = streamable_http_client(
            f"{url}/mcp", http_client=httpx2.AsyncClient(headers={"Authorization": f"Bearer {key}"}, timeout=60)
        )
        async with Client(transport) as client:
            assert structured(await client.call_tool("fusion", QUESTION))["status"] == "completed"
            assert structured(await client.call_tool("fusion", QUESTION))["status"] == "completed"
            refused = await client.call_tool("fusion", QUESTION)
            assert refused.is_error and "per-session cap" in text(refused)

    asyncio.run(go())


def test_http_progress_then_a_slow_run_through_fusion_result(tmp_path, fake):
    script_panel(fake)
    env = {"PANELFUSE_MCP_WAIT_S": "1"}
    proc, url = start_server(tmp_path, fake, "--shutdown-grace", "1", env=env, config_extra=PRICES)
    seen: list[str] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        seen.append(message or "")

    async def go() -> None:
        async with connect_http(url) as session:  # auth off (no keys): loopback only
            fast = structured(await session.call_tool("fusion", QUESTION, progress_callback=on_progress))
            assert fast["status"] == "completed"
            assert sum(m.startswith("panel:") for m in seen) == 3 and seen[-1] == "answer: written"

            script_panel(fake, **SLOW)
            pending = structured(await session.call_tool("fusion", QUESTION))
            assert pending["status"] == "running" and pending["answer"] is None
            done = await until_done(session, pending["run_id"])
            assert done["status"] == "completed" and done["answer"] and done["cost"] > 0

    try:
        asyncio.run(go())
    finally:
        stop(proc)
    assert [r[1] for r in stored_runs(tmp_path)] == ["completed", "completed"]


# ---- the caps, unit ---------------------------------------------------------------------------------


def test_session_caps_per_minute_and_per_session():
    now = [0.0]
    caps = SessionCaps(per_session=5, per_minute=2, clock=lambda: now[0])
    assert caps.take("a") is None and caps.take("a") is None
    assert "a minute" in (caps.take("a") or "")
    assert caps.take("b") is None  # sessions are counted apart
    now[0] = 61.0
    assert caps.take("a") is None and caps.take("a") is None
    now[0] = 200.0
    assert caps.take("a") is None  # the fifth
    assert "per-session cap" in (caps.take("a") or "")
    caps.give_back("b")  # a fusion that never started gives its place back
    assert caps.take("b") is None and caps.take("b") is None
    now[0] = 200.0 + caps.idle_s + 1  # an idle session is forgotten
    assert caps.take("a") is None


# ---- the README's section, as written ----------------------------------------------------------------


def readme_mcp_section() -> str:
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    return re.split(r"\n##+ ", readme.split("### MCP\n", 1)[1], maxsplit=1)[0]  # to the next heading


def test_readme_mcp_snippets_work_as_written(tmp_path, fake, monkeypatch):
    section = readme_mcp_section()
    configs = [json.loads(block) for block in re.findall(r"```json\n(.*?)```", section, re.S)]
    assert configs[0]["mcpServers"]["panelfuse"] == {"command": "panelfuse", "args": ["mcp"]}
    http_config = configs[1]["mcpServers"]["panelfuse"]
    assert http_config["url"] == "http://127.0.0.1:8000/mcp" and http_config["headers"]["Authorization"]
    (code,) = re.findall(r"```python\n(.*?)```", section, re.S)

    # stdio: `panelfuse` on PATH, its config and store where a user's are (HOME is what the SDK passes on).
    script_panel(fake)
    home = tmp_path / "home"
    (home / ".config" / "panelfuse").mkdir(parents=True)
    (home / ".config" / "panelfuse" / "config.toml").write_text(Path(write_config(tmp_path, fake, PRICES)).read_text())
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    key, key_id = make_key(tmp_path)
    proc, url = start_server(tmp_path, fake, "--shutdown-grace", "1", config_extra=PRICES)
    namespace: dict[str, Any] = {}
    exec(compile(code.replace("http://127.0.0.1:8000", url), "README.md", "exec"), namespace)
    try:
        local = asyncio.run(namespace["ask_over_stdio"]("Why is the sky blue?"))
        remote = asyncio.run(namespace["ask_over_http"]("Why is the sky blue?", key))
    finally:
        stop(proc)
    assert local["status"] == remote["status"] == "completed"
    assert local["answer"] == remote["answer"] == "The sky is blue because air scatters short wavelengths."
    assert stored_runs(tmp_path) == [(remote["run_id"], "completed", key_id)]


def test_an_http_sessions_cap_tally_is_bound_to_its_caller():
    # Two keys presenting the same Mcp-Session-Id count against their own tallies, never each other's.
    from types import SimpleNamespace

    from panelfuse.server.mcp_server import FusionTools
    from panelfuse.service.caller import Principal

    tools = FusionTools(gateway=None, service=None, caps=SessionCaps(per_session=1, per_minute=5))  # type: ignore[arg-type]
    ctx = SimpleNamespace(headers={"mcp-session-id": "shared"})

    def caller(key_id: str) -> Principal:
        return Principal(key=SimpleNamespace(id=key_id) if key_id else None)  # type: ignore[arg-type]

    a, b = tools.session(ctx, caller("key_a")), tools.session(ctx, caller("key_b"))  # type: ignore[arg-type]
    assert a != b
    assert tools.caps.take(a) is None and tools.caps.take(b) is None  # one each: b is not refused for a's run
    assert tools.caps.take(a) is not None
