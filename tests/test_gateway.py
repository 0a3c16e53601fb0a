"""The gateway over real HTTP on loopback, driven by the official OpenAI SDK and plain httpx; upstream
is the fake. The store is SQLite here; test_gateway_postgres.py runs the store paths on PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import openai
import pytest

from gateway_helpers import Gateway
from panelfuse.testing import Failure, Script
from pipeline_helpers import analysis_for, script_panel


def post(gateway, body, **kw):
    kw.setdefault("timeout", 30)
    return httpx.post(f"{gateway.url}/v1/chat/completions", json=body, **kw)


# --- the fusion alias, non-streaming and streaming -------------------------------------------------


def test_fusion_alias_with_the_openai_sdk(fake, client):
    script_panel(fake)
    r = client.chat.completions.create(model="panelfuse/fusion", messages=[{"role": "user", "content": "Why blue?"}])
    assert r.object == "chat.completion"
    assert r.choices[0].message.content == "The sky is blue because air scatters short wavelengths."
    assert r.model == "fake/synth"
    assert r.system_fingerprint.startswith("panelfuse-")
    fusion = r.model_extra["fusion"]
    assert [m["status"] for m in fusion["panel"]] == ["ok", "ok", "ok"]
    assert fusion["analysis"]["consensus"] == ["the sky scatters blue light"]
    assert fusion["degraded"] is False and fusion["preset"] == "test"
    usage = r.usage.model_extra
    assert usage["cost"] > 0 and set(usage["cost_details"]["panel"]) == {"A", "B", "C"}
    assert r.usage.prompt_tokens > 0


def test_fusion_plugin_in_extra_body_configures_the_run(fake, client):
    script_panel(fake, judge=Script(text=json.dumps({"best": "B", "reason": "clearest"})))
    r = client.chat.completions.create(
        model="openrouter/fusion",
        messages=[{"role": "user", "content": "q"}],
        extra_body={
            "plugins": [
                {
                    "id": "fusion",
                    "analysis_models": ["fake/m1", "fake/m2"],
                    "mode": "best-of",
                    "model": "fake/judge",
                    "include_panel": False,
                }
            ]
        },
    )
    assert r.choices[0].message.content == "Shorter wavelengths scatter more."
    fusion = r.model_extra["fusion"]
    assert fusion["mode"] == "best-of" and len(fusion["panel"]) == 2
    assert "content" not in fusion["panel"][0]  # include_panel: false
    assert not fake.requests_for("m3")


def test_fusion_streaming_carries_progress_and_usage(fake, client):
    script_panel(fake)
    stream = client.chat.completions.create(
        model="panelfuse/fusion", messages=[{"role": "user", "content": "q"}], stream=True
    )
    chunks = list(stream)
    events = [c.model_extra["fusion"]["event"] for c in chunks if "event" in (c.model_extra.get("fusion") or {})]
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert text == "The sky is blue because air scatters short wavelengths."
    assert events[0] == "run.started" and "panel.completed" in events and "analysis.completed" in events
    # the last chunk: finish_reason, usage and the final fusion object together
    assert chunks[-1].usage is not None and chunks[-1].usage.model_extra["cost"] > 0
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert [c.choices[0].finish_reason for c in chunks[:-1]] == [None] * (len(chunks) - 1)


def test_streaming_sends_keepalives_while_the_panel_works(fake, gateway):
    script_panel(fake, m1=Script(text="slow", latency=0.8))
    with httpx.stream(
        "POST",
        f"{gateway.url}/v1/chat/completions",
        timeout=30,
        json={"model": "panelfuse/fusion", "stream": True, "messages": [{"role": "user", "content": "q"}]},
    ) as r:
        body = r.read().decode()
    assert ": keep-alive" in body
    assert body.rstrip().endswith("data: [DONE]")


# --- the proxy path --------------------------------------------------------------------------------


def test_plain_model_is_proxied(fake, client):
    fake.script("plain", Script(text="just one model", cost=0.01))
    r = client.chat.completions.create(model="fake/plain", messages=[{"role": "user", "content": "hi"}], seed=3)
    assert r.choices[0].message.content == "just one model"
    assert r.model == "fake/plain"
    assert r.usage.model_extra["cost"] == 0.01
    assert fake.requests_for("plain")[0].body["seed"] == 3
    assert "fusion" not in r.model_extra  # the response model adds no fields a plain completion lacks
    stream = client.chat.completions.create(
        model="fake/plain", messages=[{"role": "user", "content": "hi"}], stream=True
    )
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == "just one model"


def test_proxied_tool_calls_come_back(fake, client):
    fake.script("plain", Script(tool_calls=[{"name": "lookup", "arguments": {"q": "x"}}]))
    r = client.chat.completions.create(
        model="fake/plain",
        messages=[{"role": "user", "content": "hi"}],
        tools=[{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}],
    )
    call = r.choices[0].message.tool_calls[0]
    assert call.function.name == "lookup" and json.loads(call.function.arguments) == {"q": "x"}
    assert r.choices[0].finish_reason == "tool_calls"


def test_upstream_404_passes_through(fake, client):
    fake.script("gone", Script(failure=Failure.HTTP, status_code=404))
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="fake/gone", messages=[{"role": "user", "content": "hi"}])
    assert info.value.body["metadata"]["error_code"] == "model_not_found" and str(info.value.code) == "404"


# --- errors: OpenAI's shape, the right status, never a 500 ------------------------------------------


@pytest.mark.parametrize(
    ("body", "status", "needle"),
    [
        ({"model": "panelfuse/fusion", "messages": "hi"}, 400, "messages"),
        (
            {"model": "panelfuse/fusion", "messages": [{"role": "user", "content": "q"}], "temperature": "hot"},
            400,
            "temperature",
        ),
        (
            {
                "model": "panelfuse/fusion",
                "messages": [{"role": "user", "content": "q"}],
                "plugins": [{"id": "fusion", "colour": "blue"}],
            },
            400,
            "colour",
        ),
        (
            {
                "model": "panelfuse/fusion",
                "messages": [{"role": "user", "content": "q"}],
                "plugins": [{"id": "fusion", "analysis_models": [f"fake/m{i}" for i in range(9)]}],
            },
            400,
            "analysis_models",
        ),
        ({"model": "panelfuse/fusion-nope", "messages": [{"role": "user", "content": "q"}]}, 404, "nope"),
        ({"model": "panelfuse/fusion", "messages": [{"role": "user", "content": "q"}], "n": 2}, 400, "n > 1"),
        (
            {
                "model": "panelfuse/fusion",
                "messages": [{"role": "user", "content": "q"}],
                "tools": [{"type": "function", "function": {"name": "f"}}],
            },
            400,
            "function tools",
        ),
        (
            {"model": "fake/plain", "messages": [{"role": "user", "content": "q"}], "plugins": [{"id": "fusion"}]},
            400,
            "plain model",
        ),
        ({"model": "panelfuse/fusion", "messages": [{"role": "assistant", "content": "q"}]}, 400, "user message"),
        (
            {
                "model": "panelfuse/fusion",
                "messages": [{"role": "user", "content": "q"}],
                "plugins": [{"id": "fusion", "max_cost": 0.0000001}],
            },
            400,
            "max_cost",
        ),
    ],
)
def test_bad_requests_get_openai_errors(gateway, body, status, needle):
    r = post(gateway, body)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) >= {"message", "type", "param", "code", "metadata"}
    assert err["code"] == status  # OpenRouter's integer code (its SDK requires it), OpenAI's type beside
    assert needle in err["message"]


def test_malformed_json_is_a_400(gateway):
    r = httpx.post(
        f"{gateway.url}/v1/chat/completions",
        content=b'{"model": "x", "messages": [',
        headers={"content-type": "application/json"},
    )
    assert r.status_code == 400
    assert r.json()["error"]["metadata"]["error_code"] == "invalid_json"


def test_oversize_body_is_a_413(fake, tmp_path):
    gw = Gateway(fake, f"sqlite+aiosqlite:///{tmp_path}/runs.db", max_body_bytes=1000).start()
    try:
        r = post(gw, {"model": "fake/plain", "messages": [{"role": "user", "content": "x" * 5000}]})
        assert r.status_code == 413
        assert r.json()["error"]["metadata"]["error_code"] == "body_too_large"
    finally:
        gw.stop()


def test_running_apps_collect_young_garbage_less_often_and_the_last_one_restores_the_setting(fake, tmp_path):
    import gc

    from panelfuse.server.collector import YOUNG_GC_THRESHOLD

    saved = gc.get_threshold()
    before = (777, *saved[1:])  # a setting no app makes, whatever else is running
    gc.set_threshold(*before)
    tuned = (YOUNG_GC_THRESHOLD, *before[1:])
    try:
        first = Gateway(fake, f"sqlite+aiosqlite:///{tmp_path}/a.db").start()
        second = None
        try:
            assert gc.get_threshold() == tuned
            second = Gateway(fake, f"sqlite+aiosqlite:///{tmp_path}/b.db").start()
            body = {"model": "fake/plain", "messages": [{"role": "user", "content": "hi"}]}
            assert post(second, body).status_code == 200
        finally:
            first.stop()  # the first app stops while the second still runs
        try:
            assert gc.get_threshold() == tuned
        finally:
            if second is not None:
                second.stop()
        assert gc.get_threshold() == before
    finally:
        gc.set_threshold(*saved)


def test_every_member_failing_is_a_502_naming_each(fake, gateway):
    script_panel(
        fake,
        m1=Script(failure=Failure.HTTP, status_code=401),
        m2=Script(failure=Failure.HTTP, status_code=403),
        m3=Script(failure=Failure.HTTP, status_code=400),
    )
    r = post(gateway, {"model": "panelfuse/fusion", "messages": [{"role": "user", "content": "q"}]})
    assert r.status_code == 502
    err = r.json()["error"]
    assert all(f"({m})" in err["message"] for m in ("fake/m1", "fake/m2", "fake/m3"))
    assert {f["model"] for f in err["metadata"]["failed_models"]} == {"fake/m1", "fake/m2", "fake/m3"}
    run = httpx.get(f"{gateway.url}/v1/fusion/runs/{err['metadata']['run_id']}").json()
    assert run["status"] == "failed"


# --- the store and the runs API ---------------------------------------------------------------------


def test_runs_are_stored_listed_replayed_and_deleted(fake, gateway, client):
    script_panel(fake)
    raw = client.chat.completions.with_raw_response.create(
        model="panelfuse/fusion", messages=[{"role": "user", "content": "q"}]
    )
    run_id = raw.headers["x-panelfuse-run-id"]
    completion = raw.parse()
    assert completion.model_extra["fusion"]["run_id"] == run_id

    run = httpx.get(f"{gateway.url}/v1/fusion/runs/{run_id}").json()
    assert run["status"] == "completed" and run["content"] == completion.choices[0].message.content
    assert run["result"]["panel"][0]["content"] == "Rayleigh scattering makes the sky blue."
    assert run["prompt_version"] == completion.model_extra["fusion"]["prompt_version"]
    assert run["cost"] == pytest.approx(completion.usage.model_extra["cost"])

    listing = httpx.get(f"{gateway.url}/v1/fusion/runs", params={"status": "completed"}).json()
    assert [r["id"] for r in listing["data"]] == [run_id]

    with httpx.stream("GET", f"{gateway.url}/v1/fusion/runs/{run_id}/events", params={"after": 3}) as r:
        lines = [ln for ln in r.iter_lines() if ln.startswith("id: ")]
    seqs = [int(ln[4:]) for ln in lines]
    assert seqs[0] == 4 and seqs == sorted(seqs) and len(seqs) > 5

    fb = httpx.post(f"{gateway.url}/v1/fusion/runs/{run_id}/feedback", json={"score": 1, "comment": "good"})
    assert fb.status_code == 200
    assert httpx.get(f"{gateway.url}/v1/fusion/runs/{run_id}").json()["feedback_score"] == 1

    assert httpx.delete(f"{gateway.url}/v1/fusion/runs/{run_id}").json()["deleted"] is True
    gone = httpx.get(f"{gateway.url}/v1/fusion/runs/{run_id}")
    assert gone.status_code == 404 and gone.json()["error"]["metadata"]["error_code"] == "run_not_found"


def test_resynthesize_bills_only_the_new_calls(fake, gateway, client):
    script_panel(fake)
    first = client.chat.completions.create(model="panelfuse/fusion", messages=[{"role": "user", "content": "q"}])
    run_id = first.model_extra["fusion"]["run_id"]
    member_calls = len(fake.requests_for("m1")) + len(fake.requests_for("m2")) + len(fake.requests_for("m3"))
    fake.script("judge2", Script(text=json.dumps({"best": "C", "reason": "r"})))
    r = httpx.post(
        f"{gateway.url}/v1/fusion/runs/{run_id}/resynthesize",
        json={"model": "fake/judge2", "mode": "best-of"},
        timeout=30,
    )
    assert r.status_code == 200, r.text
    data = r.json()
    assert data["choices"][0]["message"]["content"] == "Air molecules scatter blue light."
    assert data["fusion"]["parent_run_id"] == run_id
    assert len(fake.requests_for("m1")) + len(fake.requests_for("m2")) + len(fake.requests_for("m3")) == member_calls
    assert all(m["cost"] is None for m in data["fusion"]["panel"])  # not billed again
    judge_cost = data["usage"]["cost_details"]["analysis"]
    assert data["usage"]["cost"] == pytest.approx(judge_cost)


def test_estimate_models_health_and_metrics(fake, gateway):
    est = httpx.post(
        f"{gateway.url}/v1/fusion/estimate", json={"messages": [{"role": "user", "content": "x" * 400}]}
    ).json()
    p = 104
    judge_prompt = p + 3 * 100 + 400
    expected = 3 * (p + 200) / 1e6 + (judge_prompt * 3 + 600) / 1e6 + ((judge_prompt + 100) * 3 + 600) / 1e6
    assert est["total"] == pytest.approx(expected)
    models = {m["id"] for m in httpx.get(f"{gateway.url}/v1/models").json()["data"]}
    assert {"panelfuse/fusion", "openrouter/fusion", "panelfuse/fusion-local", "panelfuse/fusion-test"} <= models
    health = httpx.get(f"{gateway.url}/healthz").json()
    assert health["status"] == "ok" and health["store"] == "ok"
    script_panel(fake)
    post(gateway, {"model": "panelfuse/fusion", "messages": [{"role": "user", "content": "q"}]})
    metrics = httpx.get(f"{gateway.url}/metrics").text
    assert 'panelfuse_requests_total{method="POST",route="/v1/chat/completions",status="200"}' in metrics
    assert "panelfuse_runs_total" in metrics
    openapi = httpx.get(f"{gateway.url}/openapi.json").json()
    assert "ChatCompletionRequest" in openapi["components"]["schemas"]
    assert "FusionPlugin" in json.dumps(openapi) or "plugins" in json.dumps(openapi)


# --- disconnects, background runs, resume -----------------------------------------------------------


async def test_disconnect_cancels_the_run_and_its_upstream_calls(fake, gateway):
    script_panel(
        fake,
        m1=Script(text="slow " * 100, token_rate=5),
        m2=Script(text="slow", latency=30),
        m3=Script(text="slow", latency=30),
    )
    async with httpx.AsyncClient(timeout=30) as http:
        async with http.stream(
            "POST",
            f"{gateway.url}/v1/chat/completions",
            json={"model": "panelfuse/fusion", "stream": True, "messages": [{"role": "user", "content": "q"}]},
        ) as r:
            run_id = r.headers["x-panelfuse-run-id"]
            async for line in r.aiter_lines():
                if "panel.delta" in line:
                    break  # the client goes away mid-panel
    assert await fake.wait_idle_async(10)
    assert fake.disconnects == 3
    async with httpx.AsyncClient() as http:
        for _ in range(100):
            run = (await http.get(f"{gateway.url}/v1/fusion/runs/{run_id}")).json()
            if run["status"] != "running":
                break
            await asyncio.sleep(0.05)
    assert run["status"] == "cancelled"


async def test_background_run_survives_disconnect_and_resumes_by_seq(fake, gateway):
    script_panel(fake, m1=Script(text="one two three four", token_rate=20))
    last_seq = 0
    async with httpx.AsyncClient(timeout=30) as http:
        async with http.stream(
            "POST",
            f"{gateway.url}/v1/chat/completions",
            json={
                "model": "panelfuse/fusion",
                "stream": True,
                "plugins": [{"id": "fusion", "background": True}],
                "messages": [{"role": "user", "content": "q"}],
            },
        ) as r:
            run_id = r.headers["x-panelfuse-run-id"]
            async for line in r.aiter_lines():
                if line.startswith("data: {"):
                    fusion = json.loads(line[6:]).get("fusion") or {}
                    last_seq = fusion.get("seq", last_seq)
                    if fusion.get("event") == "panel.started":
                        break
        async with http.stream(
            "GET", f"{gateway.url}/v1/fusion/runs/{run_id}/events", headers={"Last-Event-ID": str(last_seq)}
        ) as r:
            seqs, types = [], []
            async for line in r.aiter_lines():
                if line.startswith("id: "):
                    seqs.append(int(line[4:]))
                if line.startswith("event: "):
                    types.append(line[7:])
    assert seqs[0] == last_seq + 1 and seqs == list(range(last_seq + 1, last_seq + 1 + len(seqs)))
    assert types[-1] == "run.completed"
    async with httpx.AsyncClient() as http:
        run = (await http.get(f"{gateway.url}/v1/fusion/runs/{run_id}")).json()
    assert run["status"] == "completed" and run["background"] is True


def test_non_streaming_disconnect_cancels(fake, gateway):
    slow = {m: Script(text="x", latency=30) for m in ("m1", "m2", "m3")}
    script_panel(fake, **slow)
    with pytest.raises(httpx.ReadTimeout):
        post(gateway, {"model": "panelfuse/fusion", "messages": [{"role": "user", "content": "q"}]}, timeout=0.5)
    assert fake.wait_idle(10)
    assert fake.disconnects == 3
    runs = httpx.get(f"{gateway.url}/v1/fusion/runs").json()["data"]
    for _ in range(100):
        if runs and runs[0]["status"] != "running":
            break
        time.sleep(0.05)
        runs = httpx.get(f"{gateway.url}/v1/fusion/runs").json()["data"]
    assert runs[0]["status"] == "cancelled"


def test_a_non_streamed_proxied_call_stops_when_its_client_leaves(fake, gateway):
    fake.script("m1", Script(text="x", latency=30))
    with pytest.raises(httpx.ReadTimeout):
        post(gateway, {"model": "fake/m1", "messages": [{"role": "user", "content": "q"}]}, timeout=0.5)
    assert fake.wait_idle(10)  # the upstream call was cancelled, not left to run its 30 s
    assert fake.disconnects == 1


def test_a_crash_leaves_interrupted_runs(fake, tmp_path):
    db = f"sqlite+aiosqlite:///{tmp_path}/runs.db"

    async def leave_a_running_row():
        from panelfuse.store import RunStore

        store = await RunStore.open(db)
        await store.create_run(
            "run_crashed",
            spec={},
            request={"messages": []},
            request_model="panelfuse/fusion",
            preset="test",
            mode="synthesize",
            prompt_version="x",
        )
        await store.close()

    asyncio.run(leave_a_running_row())
    # A restarted gateway treats runs with no heartbeat for stale_after_s as abandoned by a dead process.
    gw = Gateway(fake, db, stale_after_s=0).start()
    try:
        run = httpx.get(f"{gw.url}/v1/fusion/runs/run_crashed").json()
        assert run["status"] == "interrupted"
    finally:
        gw.stop()


def test_analysis_for_helper_names_labels():
    assert analysis_for(["A", "B"])["unique_insights"][0]["model"] == "A"


def test_preset_alias_and_include_usage_stream(fake, client):
    script_panel(fake)
    r = client.chat.completions.create(model="panelfuse/fusion-test", messages=[{"role": "user", "content": "q"}])
    assert r.model_extra["fusion"]["preset"] == "test"
    stream = client.chat.completions.create(
        model="panelfuse/fusion-test",
        messages=[{"role": "user", "content": "q"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert chunks[-1].usage.total_tokens > 0
    # the SSE event order, as the SDK saw it
    order = [c.model_extra["fusion"]["event"] for c in chunks if "event" in (c.model_extra.get("fusion") or {})]
    firsts = [
        order.index(e)
        for e in (
            "run.started",
            "panel.started",
            "panel.completed",
            "analysis.started",
            "analysis.completed",
            "final.completed",
            "run.completed",
        )
    ]
    assert firsts == sorted(firsts)


def test_runs_list_pages_and_filters(fake, gateway):
    script_panel(fake)
    for i in range(5):
        mode = "best-of" if i % 2 else "synthesize"
        if mode == "best-of":
            fake.script("judge", Script(text=json.dumps({"best": "A", "reason": "r"})))
        else:
            from pipeline_helpers import judge_script

            fake.script("judge", judge_script)
        r = post(
            gateway,
            {
                "model": "panelfuse/fusion",
                "messages": [{"role": "user", "content": f"q{i}"}],
                "plugins": [{"id": "fusion", "mode": mode}],
            },
        )
        assert r.status_code == 200, r.text
    seen, cursor = [], None
    while True:
        params = {"limit": 2, **({"before": cursor} if cursor else {})}
        page = httpx.get(f"{gateway.url}/v1/fusion/runs", params=params).json()
        seen += [r["id"] for r in page["data"]]
        cursor = page["next_cursor"]
        if not page["has_more"]:
            break
    assert len(seen) == 5 and len(set(seen)) == 5
    best_of = httpx.get(f"{gateway.url}/v1/fusion/runs", params={"mode": "best-of"}).json()["data"]
    assert len(best_of) == 2 and all(r["mode"] == "best-of" for r in best_of)
    bad = httpx.get(f"{gateway.url}/v1/fusion/runs", params={"before": "garbage"})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "before"


def _counter(text: str, line_prefix: str) -> float:
    for line in text.splitlines():
        if line.startswith(line_prefix):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_metrics_counters_move(fake, gateway):
    script_panel(fake, m2=Script(failure=Failure.HTTP, status_code=401))
    key = 'panelfuse_upstream_errors_total{model="fake/m2",status="failed"}'
    before = _counter(httpx.get(f"{gateway.url}/metrics").text, key)
    completed_degraded = 'panelfuse_runs_total{degraded="true",status="completed"}'
    runs_before = _counter(httpx.get(f"{gateway.url}/metrics").text, completed_degraded)
    r = post(gateway, {"model": "panelfuse/fusion", "messages": [{"role": "user", "content": "q"}]})
    assert r.status_code == 200
    text = httpx.get(f"{gateway.url}/metrics").text
    assert _counter(text, key) == before + 1
    assert _counter(text, completed_degraded) == runs_before + 1
    assert _counter(text, 'panelfuse_cost_usd_total{stage="panel"}') > 0


async def test_a_silent_run_keeps_its_heartbeat(fake, gateway, monkeypatch):
    """No events for a while (a slow member) must not make the run look abandoned to a restarting replica."""
    from panelfuse.service import runs as runs_module

    monkeypatch.setattr(runs_module, "HEARTBEAT_INTERVAL", 0.05)
    monkeypatch.setattr(runs_module, "FLUSH_INTERVAL", 0.05)  # the flusher's tick is when a beat is due
    script_panel(fake, m1=Script(text="slow", latency=2.0))
    async with httpx.AsyncClient(timeout=30) as http:
        task = asyncio.create_task(
            http.post(
                f"{gateway.url}/v1/chat/completions",
                json={"model": "panelfuse/fusion", "messages": [{"role": "user", "content": "q"}]},
            )
        )
        seen: set[str] = set()
        for _ in range(200):
            listed = (await http.get(f"{gateway.url}/v1/fusion/runs")).json()["data"]
            if listed and listed[0]["status"] == "running":
                seen.add(listed[0]["updated_at"])
            if len(seen) >= 3 or task.done():
                break
            await asyncio.sleep(0.05)
        assert len(seen) >= 3  # updated_at moved while the run waited on its slow member
        assert (await task).status_code == 200


def test_resynthesize_carries_the_fusion_depth_header(fake, gateway, client):
    # Every call made for a fusion carries the recursion guard, the re-synthesis's judge included.
    script_panel(fake)
    first = client.chat.completions.create(model="panelfuse/fusion", messages=[{"role": "user", "content": "q"}])
    run_id = first.model_extra["fusion"]["run_id"]
    fake.script("judge2", Script(text=json.dumps({"best": "A", "reason": "r"})))
    r = httpx.post(
        f"{gateway.url}/v1/fusion/runs/{run_id}/resynthesize", json={"model": "fake/judge2", "mode": "best-of"}
    )
    assert r.status_code == 200, r.text
    assert fake.requests_for("judge2")[0].headers["x-panelfuse-fusion-depth"] == "1"
    # a mode without a judge has nothing to re-run: a clear 400, not a run
    r = httpx.post(f"{gateway.url}/v1/fusion/runs/{run_id}/resynthesize", json={"mode": "single"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "mode"


def test_a_synthesizer_failure_is_in_the_stream_and_the_stored_run(fake, gateway):
    script_panel(fake, synth=Script(failure=Failure.HTTP, status_code=400))
    body = {
        "model": "panelfuse/fusion",
        "messages": [{"role": "user", "content": "q"}],
        "stream": True,
        "plugins": [{"id": "fusion", "synthesizer": "fake/synth"}],
    }
    events = []
    with httpx.stream("POST", f"{gateway.url}/v1/chat/completions", json=body, timeout=30) as r:
        for line in r.iter_lines():
            if line.startswith("data: {"):
                chunk = json.loads(line[6:])
                if "event" in (chunk.get("fusion") or {}):
                    events.append(chunk["fusion"])
    failed = [e for e in events if e["type"] == "synthesis.failed"]
    assert failed and failed[0]["model"] == "fake/synth" and failed[0]["stage"] == "synthesis"
    run_id = events[0]["run_id"]
    stored = httpx.get(f"{gateway.url}/v1/fusion/runs/{run_id}/events").text
    assert "synthesis.failed" in stored
    # nothing had streamed, so the answer is a member's own, verbatim, and the run says so
    run = httpx.get(f"{gateway.url}/v1/fusion/runs/{run_id}").json()
    assert run["status"] == "completed" and run["degraded"] and "synthesis failed" in run["error"]
