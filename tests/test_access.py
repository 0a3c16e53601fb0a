"""Access control over real HTTP: keys, scoping, allowlists, budgets, rate limits, passthrough."""

from __future__ import annotations

import asyncio
import logging
import time

import httpx
import pytest

from gateway_helpers import Gateway
from panelfuse.store import RunStore
from panelfuse.testing import Script
from pipeline_helpers import script_panel


def run_async(coro):
    return asyncio.run(coro)


async def _create_key(db: str, name: str, **kw):
    store = await RunStore.open(db)
    try:
        return await store.keys.create(name, **kw)
    finally:
        await store.close()


@pytest.fixture
def db(tmp_path):
    return f"sqlite+aiosqlite:///{tmp_path}/runs.db"


@pytest.fixture
def keyed(fake, db):
    """A gateway with two keys and an admin key already in the store (so auth is on)."""
    keys = {
        "a": run_async(_create_key(db, "team-a")),
        "b": run_async(_create_key(db, "team-b", models=["fake/m[123]", "fake/judge", "fake/synth"])),
        "admin": run_async(_create_key(db, "ops", is_admin=True)),
    }
    gw = Gateway(fake, db).start()
    yield gw, {k: v.secret for k, v in keys.items()}
    gw.stop()


def call(gw, key, body=None, **kw):
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    body = body or {"model": "panelfuse/fusion", "messages": [{"role": "user", "content": "q"}]}
    return httpx.post(f"{gw.url}/v1/chat/completions", json=body, headers=headers, timeout=30, **kw)


def test_keys_are_required_once_one_exists(fake, keyed):
    gw, keys = keyed
    script_panel(fake)
    missing = call(gw, None)
    assert missing.status_code == 401 and missing.json()["error"]["metadata"]["error_code"] == "missing_api_key"
    bad = call(gw, "pf-not-a-real-key")
    assert bad.status_code == 401 and bad.json()["error"]["metadata"]["error_code"] == "invalid_api_key"
    assert "pf-not-a-real-key" not in bad.text
    assert call(gw, keys["a"]).status_code == 200


def test_revoked_key_gets_401(fake, keyed, db):
    gw, keys = keyed
    script_panel(fake)
    assert call(gw, keys["a"]).status_code == 200

    async def revoke():
        store = await RunStore.open(db)
        try:
            return await store.keys.revoke("team-a")
        finally:
            await store.close()

    assert run_async(revoke()) == 1
    assert call(gw, keys["a"]).status_code == 401


def test_a_key_sees_only_its_own_runs_and_the_admin_sees_all(fake, keyed):
    gw, keys = keyed
    script_panel(fake)
    run_a = call(gw, keys["a"]).json()["fusion"]["run_id"]
    run_b = call(gw, keys["b"]).json()["fusion"]["run_id"]

    def runs(key):
        r = httpx.get(f"{gw.url}/v1/fusion/runs", headers={"Authorization": f"Bearer {key}"})
        return {x["id"] for x in r.json()["data"]}

    assert runs(keys["a"]) == {run_a}
    assert runs(keys["b"]) == {run_b}
    assert runs(keys["admin"]) == {run_a, run_b}
    hidden = httpx.get(f"{gw.url}/v1/fusion/runs/{run_b}", headers={"Authorization": f"Bearer {keys['a']}"})
    assert hidden.status_code == 404
    deleted = httpx.delete(f"{gw.url}/v1/fusion/runs/{run_b}", headers={"Authorization": f"Bearer {keys['a']}"})
    assert deleted.status_code == 404
    assert runs(keys["b"]) == {run_b}


def test_allowlist_is_checked_on_every_resolved_model(fake, keyed):
    gw, keys = keyed
    script_panel(fake)
    # key b may use m1..m3, the judge and the synthesizer of the test preset, nothing else
    assert call(gw, keys["b"]).status_code == 200
    r = call(
        gw,
        keys["b"],
        {
            "model": "panelfuse/fusion",
            "messages": [{"role": "user", "content": "q"}],
            "plugins": [{"id": "fusion", "synthesizer": "fake/forbidden"}],
        },
    )
    assert r.status_code == 403 and "fake/forbidden" in r.json()["error"]["message"]
    r = call(
        gw,
        keys["b"],
        {
            "model": "panelfuse/fusion",
            "messages": [{"role": "user", "content": "q"}],
            "plugins": [
                {"id": "fusion", "analysis_models": [{"model": "fake/m1", "fallbacks": ["fake/other"]}, "fake/m2"]}
            ],
        },
    )
    assert r.status_code == 403 and "fake/other" in r.json()["error"]["message"]
    r = call(gw, keys["b"], {"model": "fake/plain", "messages": [{"role": "user", "content": "q"}]})
    assert r.status_code == 403
    assert not fake.requests_for("other") and not fake.requests_for("plain")
    assert not fake.requests_for("forbidden")


def test_no_key_material_in_logs_runs_or_errors(fake, keyed, db, caplog, tmp_path):
    gw, keys = keyed
    script_panel(fake)
    caplog.set_level(logging.DEBUG)
    call(gw, keys["a"])
    call(gw, keys["a"] + "x")
    call(gw, keys["b"], {"model": "fake/nope", "messages": [{"role": "user", "content": "q"}]})
    gw.stop()
    secrets = list(keys.values())
    logged = caplog.text
    database = (tmp_path / "runs.db").read_bytes() + b"".join(p.read_bytes() for p in tmp_path.glob("runs.db-*"))
    for secret in secrets:
        assert secret not in logged
        assert secret.encode() not in database
        assert secret[10:30].encode() not in database  # not even a fragment beyond the display prefix


def test_budget_refuses_with_402_when_the_worst_case_does_not_fit(fake, db):
    key = run_async(_create_key(db, "tight", budget_usd=0.0000001))
    gw = Gateway(fake, db).start()
    try:
        script_panel(fake)
        r = call(gw, key.secret)
        assert r.status_code == 402
        err = r.json()["error"]
        assert err["metadata"]["error_code"] == "insufficient_budget" and err["type"] == "insufficient_quota"
        assert fake.requests == []
    finally:
        gw.stop()


def test_in_process_rate_limit_gives_429_with_retry_after(fake, db):
    key = run_async(_create_key(db, "slow", rpm=2))
    gw = Gateway(fake, db).start()
    try:
        fake.script("plain", Script(text="ok"))
        body = {"model": "fake/plain", "messages": [{"role": "user", "content": "q"}]}
        codes = [call(gw, key.secret, body).status_code for _ in range(3)]
        assert codes == [200, 200, 429]
        limited = call(gw, key.secret, body)
        assert int(limited.headers["retry-after"]) >= 1
        assert limited.json()["error"]["metadata"]["error_code"] == "rate_limited"
    finally:
        gw.stop()


def test_concurrent_run_limit(fake, db):
    key = run_async(_create_key(db, "one-at-a-time", max_concurrent=1))
    gw = Gateway(fake, db).start()
    try:
        script_panel(fake, m1=Script(text="slow", latency=1.0))

        async def two():
            async with httpx.AsyncClient(timeout=30) as http:
                h = {"Authorization": f"Bearer {key.secret}"}
                body = {"model": "panelfuse/fusion", "messages": [{"role": "user", "content": "q"}]}
                first = asyncio.create_task(http.post(f"{gw.url}/v1/chat/completions", json=body, headers=h))
                await asyncio.sleep(0.3)
                second = await http.post(f"{gw.url}/v1/chat/completions", json=body, headers=h)
                return (await first).status_code, second.status_code

        assert run_async(two()) == (200, 429)
        assert call(gw, key.secret).status_code == 200  # the slot was given back
    finally:
        gw.stop()


def test_passthrough_sends_the_callers_own_key_upstream(fake, db):
    gw = Gateway(fake, db, passthrough_keys=True).start()
    try:
        fake.script("plain", Script(text="ok"))
        r = call(gw, "caller-own-upstream-key", {"model": "fake/plain", "messages": [{"role": "user", "content": "q"}]})
        assert r.status_code == 200
        assert fake.requests_for("plain")[-1].headers["authorization"] == "Bearer caller-own-upstream-key"
        # and without passthrough the gateway's own key is used
        call(gw, None, {"model": "fake/plain", "messages": [{"role": "user", "content": "q"}]})
        assert fake.requests_for("plain")[-1].headers["authorization"] == "Bearer upstream-key"
    finally:
        gw.stop()


def test_auth_defaults(fake, db):
    open_gw = Gateway(fake, db).start()  # loopback, no key: open
    try:
        fake.script("plain", Script(text="ok"))
        body = {"model": "fake/plain", "messages": [{"role": "user", "content": "q"}]}
        assert call(open_gw, None, body).status_code == 200
    finally:
        open_gw.stop()
    forced = Gateway(fake, db, auth=True).start()
    try:
        assert (
            call(forced, None, {"model": "fake/plain", "messages": [{"role": "user", "content": "q"}]}).status_code
            == 401
        )
    finally:
        forced.stop()


def test_retention_blanks_old_runs_content(fake, db):
    script_panel(fake)
    gw = Gateway(fake, db).start()
    try:
        run_id = call(gw, None).json()["fusion"]["run_id"]
    finally:
        gw.stop()
    gw = Gateway(fake, db, retain_days=0.0).start()  # everything finished is "old"
    try:
        for _ in range(100):
            run = httpx.get(f"{gw.url}/v1/fusion/runs/{run_id}").json()
            if run["content"] == "":
                break
            time.sleep(0.05)
        assert run["content"] == "" and run["result"] is None
        assert run["cost"] > 0  # the bill stays
    finally:
        gw.stop()


def test_a_client_leaving_a_proxied_stream_gives_its_reservation_and_slot_back(fake, db):
    # The response's task is cancelled at every await once the client is gone: settling must still
    # finish (budget reservation released at the streamed cost, the concurrency slot freed).
    key = run_async(_create_key(db, "leaver", budget_usd=10.0, max_concurrent=1))
    gw = Gateway(fake, db).start()
    try:
        fake.script("m1", Script(text="word " * 400, token_rate=40))
        body = {"model": "fake/m1", "messages": [{"role": "user", "content": "q"}], "stream": True}
        headers = {"Authorization": f"Bearer {key.secret}"}
        with httpx.stream("POST", f"{gw.url}/v1/chat/completions", json=body, headers=headers, timeout=30) as r:
            assert r.status_code == 200
            next(r.iter_lines())  # the first chunk arrived; then the client leaves mid-answer

        async def reserved() -> float:
            store = await RunStore.open(db)
            try:
                fresh = await store.keys.get(key.key.id)
                assert fresh is not None
                return fresh.reserved_usd
            finally:
                await store.close()

        for _ in range(100):  # waits for the gateway to notice the disconnect; asserts no duration
            if run_async(reserved()) == 0.0:
                break
            time.sleep(0.1)
        assert run_async(reserved()) == 0.0
        fake.script("m1", Script(text="ok"))
        assert call(gw, key.secret, {**body, "stream": False}).status_code == 200  # the slot is free
    finally:
        gw.stop()
