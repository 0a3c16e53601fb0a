"""A/B experiments through the gateway over real HTTP, against the fake upstream: assignment by the
sticky unit, each request answered by its arm and recorded with it, pausing and stopping, shadow arms
(never in the caller's way, bounded by their budget and concurrency cap), feedback, the admin API."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import openai
import pytest

from gateway_helpers import Gateway, gateway_config
from panelfuse.store import ExperimentRequest, ExperimentStore, RunStore
from panelfuse.testing import Failure, Script
from pipeline_helpers import script_panel

SINGLE_TEXT = "Rayleigh scattering makes the sky blue."  # fake/m1's scripted answer (script_panel)
FUSION_TEXT = "The sky is blue because air scatters short wavelengths."  # the synthesizer's
QUESTION = [{"role": "user", "content": "Why is the sky blue?"}]


def experiment(**over: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "models": ["gpt-default"],
        "sticky": "user",
        "arms": [
            {"name": "single", "model": "fake/m1", "share": 1},
            {"name": "fusion", "model": "panelfuse/fusion", "fusion": {"preset": "test"}, "share": 1},
        ],
    }
    data.update(over)
    return data


def start(fake, tmp_path, **experiments: dict[str, Any]) -> tuple[Gateway, str]:
    db = f"sqlite+aiosqlite:///{tmp_path}/runs.db"
    config = gateway_config(fake).model_copy(update={"experiments": {}})
    config = config.model_validate({**config.model_dump(exclude={"source"}), "experiments": experiments})
    return Gateway(fake, db, config=config).start(), db


def stored(db: str, name: str) -> list[ExperimentRequest]:
    async def read() -> list[ExperimentRequest]:
        store = await RunStore.open(db)
        try:
            return await ExperimentStore(store.database).requests(name)
        finally:
            await store.close()

    return asyncio.run(read())


def wait_for_records(db: str, name: str, count: int, timeout: float = 20.0) -> list[ExperimentRequest]:
    """Records are written as each request ends, in the background: wait until `count` are there."""
    deadline = time.monotonic() + timeout
    while True:
        rows = stored(db, name)
        if len(rows) >= count or time.monotonic() > deadline:
            return rows
        time.sleep(0.05)


def ask(gw: Gateway, user: str | None = None, *, model: str = "gpt-default", **kw: Any) -> httpx.Response:
    body: dict[str, Any] = {"model": model, "messages": QUESTION, **kw}
    if user is not None:
        body["user"] = user
    return httpx.post(f"{gw.url}/v1/chat/completions", json=body, timeout=30)


@pytest.fixture
def ab(fake, tmp_path):
    script_panel(fake)
    gw, db = start(fake, tmp_path, ab=experiment())
    yield gw, db
    gw.stop()


def arm_of(response: httpx.Response) -> str:
    """Which arm answered, from the answer itself (the single model's text or the synthesizer's)."""
    content = response.json()["choices"][0]["message"]["content"]
    return {SINGLE_TEXT: "single", FUSION_TEXT: "fusion"}[content]


def test_each_request_is_answered_by_its_arm_and_recorded_with_it(fake, ab):
    gw, db = ab
    users = [f"u{i}" for i in range(16)]
    answered = {}
    for user in users:
        r = ask(gw, user)
        assert r.status_code == 200, r.text
        answered[user] = arm_of(r)
    assert set(answered.values()) == {"single", "fusion"}  # 16 users, two even arms: both get some
    rows = wait_for_records(db, "ab", len(users))
    assert len(rows) == len(users) and not any(r.shadow for r in rows)
    by_response = {r.response_id: r for r in rows}
    assert all(r.status == "completed" and r.cost is not None and r.cost > 0 for r in rows)
    fusion_rows = [r for r in rows if r.arm == "fusion"]
    single_rows = [r for r in rows if r.arm == "single"]
    assert len(fusion_rows) == list(answered.values()).count("fusion")
    # A fusion arm's record is its run's: the same cost, five calls (3 members, judge, synthesizer).
    for row in fusion_rows:
        assert row.run_id is not None and row.calls == 5
        run = asyncio.run(_run(db, row.run_id))
        assert run is not None and run.cost == pytest.approx(row.cost)
    # A single arm's record is its generation's: one call, the generation's cost.
    for row in single_rows:
        assert row.calls == 1 and row.run_id is None and row.response_id in by_response
        assert row.cost == pytest.approx((10 * 1.0 + 20 * 2.0) / 1_000_000)


async def _run(db: str, run_id: str):
    store = await RunStore.open(db)
    try:
        return await store.get_run(run_id)
    finally:
        await store.close()


def test_a_user_stays_in_one_arm(fake, ab):
    gw, db = ab
    for user in ("alice", "bob", "carol", "dave"):
        arms = {arm_of(ask(gw, user)) for _ in range(3)}
        assert len(arms) == 1, user
    rows = wait_for_records(db, "ab", 12)
    by_unit: dict[str, set[str]] = {}
    for row in rows:
        by_unit.setdefault(row.unit, set()).add(row.arm)
    assert len(by_unit) == 4 and all(len(a) == 1 for a in by_unit.values())
    assert not any("alice" in r.unit for r in rows)  # the unit is stored hashed


def test_other_models_are_not_part_of_the_experiment(fake, ab):
    gw, db = ab
    r = ask(gw, "alice", model="fake/m2")
    assert r.status_code == 200
    time.sleep(0.3)
    assert stored(db, "ab") == []


def test_a_paused_arm_gets_no_traffic_and_a_stopped_experiment_sends_all_to_the_chosen_arm(fake, ab):
    gw, db = ab
    admin = f"{gw.url}/v1/experiments/ab"
    assert httpx.post(f"{admin}/arms/fusion/pause").status_code == 200
    assert {arm_of(ask(gw, f"p{i}")) for i in range(10)} == {"single"}
    assert httpx.post(f"{admin}/arms/single/pause").status_code == 409  # the last live arm
    assert httpx.post(f"{admin}/arms/fusion/resume").json()["paused_arms"] == []
    stopped = httpx.post(f"{admin}/stop", json={"chosen_arm": "fusion"}).json()
    assert stopped["status"] == "stopped" and stopped["chosen_arm"] == "fusion"
    assert {arm_of(ask(gw, f"s{i}")) for i in range(4)} == {"fusion"}
    rows = wait_for_records(db, "ab", 10)
    time.sleep(0.3)
    rows = stored(db, "ab")
    assert len(rows) == 10 and {r.arm for r in rows} == {"single"}  # after the stop: not recorded
    assert httpx.post(f"{admin}/start").json()["status"] == "running"


def test_a_shadow_arm_never_changes_or_delays_the_primary_answer(fake, tmp_path):
    script_panel(fake)
    # The shadow's members are slow; the caller's answer comes from the single model, as without it.
    for member in ("m2", "m3"):
        fake.script(member, Script(text="slow", latency=1.0, prompt_tokens=10, completion_tokens=20))
    arms = [
        {"name": "single", "model": "fake/m1", "share": 1},
        {"name": "fusion", "model": "panelfuse/fusion", "fusion": {"preset": "test"}, "shadow": True},
    ]
    gw, db = start(fake, tmp_path, sh=experiment(arms=arms))
    try:
        r = ask(gw, "alice")
        assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == SINGLE_TEXT
        assert r.json()["model"] == "fake/m1"
        # The answer came back before the shadow's slow members had answered.
        assert len(fake.requests_for("m2")) <= 1 and not [x for x in stored(db, "sh") if x.shadow]
        rows = wait_for_records(db, "sh", 2)
        primary = [x for x in rows if not x.shadow]
        shadow = [x for x in rows if x.shadow]
        assert len(primary) == 1 and primary[0].arm == "single"
        assert len(shadow) == 1 and shadow[0].arm == "fusion" and shadow[0].status == "completed"
        assert shadow[0].unit == primary[0].unit and shadow[0].run_id is not None
        run = asyncio.run(_run(db, shadow[0].run_id))
        assert run is not None and run.key_id is None and run.background  # no key pays for it
        assert run.cost == pytest.approx(shadow[0].cost)
    finally:
        gw.stop()


def test_shadows_past_the_concurrency_cap_are_skipped(fake, tmp_path):
    script_panel(fake)
    fake.script("m1", Script(text=SINGLE_TEXT, prompt_tokens=10, completion_tokens=20))
    fake.script("m2", Script(text="slow shadow", latency=1.5, prompt_tokens=10, completion_tokens=20))
    arms = [
        {"name": "single", "model": "fake/m1", "share": 1},
        {"name": "other", "model": "fake/m2", "shadow": True},
    ]
    gw, db = start(fake, tmp_path, cap=experiment(arms=arms, shadow={"budget_usd": 10, "max_concurrent": 1}))
    try:
        for i in range(3):
            assert ask(gw, f"u{i}").status_code == 200
        rows = wait_for_records(db, "cap", 6)
        shadows = [x for x in rows if x.shadow]
        assert sorted(x.status for x in shadows) == ["completed", "skipped", "skipped"]
        skipped = [x for x in shadows if x.status == "skipped"]
        assert all("concurrency cap" in (x.error or "") and x.cost is None for x in skipped)
        assert len(fake.requests_for("m2")) == 1  # the skipped shadows made no call
    finally:
        gw.stop()


def test_shadows_stop_at_their_budget(fake, tmp_path):
    script_panel(fake)
    # Each shadow (a single model, max_tokens 1024 by default) has a worst case of about $0.00206 and
    # costs $0.00201 (1000 tokens out at $2/M): a $0.005 budget takes two, then refuses the third.
    fake.script("m2", Script(text="a long shadow answer", prompt_tokens=10, completion_tokens=1000))
    arms = [
        {"name": "single", "model": "fake/m1", "share": 1},
        {"name": "other", "model": "fake/m2", "shadow": True},
    ]
    gw, db = start(fake, tmp_path, b=experiment(arms=arms, shadow={"budget_usd": 0.005, "max_concurrent": 4}))
    try:
        for i in range(3):
            assert ask(gw, f"u{i}").status_code == 200
            wait_for_records(db, "b", 2 * (i + 1))  # one at a time: each shadow has settled before the next
        shadows = [x for x in stored(db, "b") if x.shadow]
        assert [x.status for x in shadows] == ["completed", "completed", "skipped"]
        assert "budget" in (shadows[2].error or "")
        assert sum(x.cost or 0.0 for x in shadows) <= 0.005
        assert len(fake.requests_for("m2")) == 2  # the refused shadow made no call
    finally:
        gw.stop()


def test_a_zero_shadow_budget_starts_no_shadow(fake, tmp_path):
    script_panel(fake)
    arms = [
        {"name": "single", "model": "fake/m1", "share": 1},
        {"name": "fusion", "model": "panelfuse/fusion", "fusion": {"preset": "test"}, "shadow": True},
    ]
    gw, db = start(fake, tmp_path, z=experiment(arms=arms, shadow={"budget_usd": 0}))
    try:
        assert ask(gw, "u").status_code == 200
        rows = wait_for_records(db, "z", 2)
        assert sorted((x.shadow, x.status) for x in rows) == [(False, "completed"), (True, "skipped")]
        assert not fake.requests_for("judge") and not fake.requests_for("synth")
    finally:
        gw.stop()


def test_pausing_a_shadow_arm_cancels_its_runs_in_flight(fake, tmp_path):
    script_panel(fake)
    fake.script("m3", Script(text="very slow", latency=30.0))
    arms = [
        {"name": "single", "model": "fake/m1", "share": 1},
        {"name": "fusion", "model": "panelfuse/fusion", "fusion": {"preset": "test", "quorum": 3}, "shadow": True},
    ]
    gw, db = start(fake, tmp_path, p=experiment(arms=arms))
    try:
        assert ask(gw, "u").status_code == 200
        deadline = time.monotonic() + 10
        while not fake.requests_for("m3") and time.monotonic() < deadline:
            time.sleep(0.05)
        assert httpx.post(f"{gw.url}/v1/experiments/p/arms/fusion/pause").status_code == 200
        shadow = [x for x in wait_for_records(db, "p", 2) if x.shadow]
        assert len(shadow) == 1 and shadow[0].status == "cancelled"
    finally:
        gw.stop()


def test_feedback_reaches_the_experiments_record(fake, ab):
    gw, db = ab
    ids = {}
    for user in (f"f{i}" for i in range(12)):
        r = ask(gw, user)
        ids[arm_of(r)] = r.json()["id"]
        if len(ids) == 2:
            break
    assert set(ids) == {"single", "fusion"}
    wait_for_records(db, "ab", 2)
    for arm, answer_id in ids.items():
        r = httpx.post(f"{gw.url}/v1/feedback", json={"id": answer_id, "score": 0.5 if arm == "fusion" else -1})
        assert r.status_code == 200, r.text
    scores = {r.arm: r.feedback_score for r in stored(db, "ab") if r.response_id in ids.values()}
    assert scores == {"fusion": 0.5, "single": -1}
    missing = httpx.post(f"{gw.url}/v1/feedback", json={"id": "chatcmpl-nothing", "score": 1})
    assert missing.status_code == 404 and missing.json()["error"]["metadata"]["error_code"] == "not_found"


def test_the_admin_api_creates_experiments_that_take_traffic(fake, tmp_path):
    script_panel(fake)
    gw, db = start(fake, tmp_path)
    try:
        body = {"name": "api-made", **experiment(models=["my-alias"])}
        created = httpx.post(f"{gw.url}/v1/experiments", json=body)
        assert created.status_code == 201 and created.json()["source"] == "api"
        assert httpx.post(f"{gw.url}/v1/experiments", json=body).status_code == 409
        listed = httpx.get(f"{gw.url}/v1/experiments").json()["data"]
        assert [e["name"] for e in listed] == ["api-made"]
        with openai.OpenAI(base_url=f"{gw.url}/v1", api_key="unused", max_retries=0) as sdk:
            answer = sdk.chat.completions.create(model="my-alias", messages=QUESTION, user="zoe")
        assert answer.choices[0].message.content in (SINGLE_TEXT, FUSION_TEXT)
        assert len(wait_for_records(db, "api-made", 1)) == 1
        bad = dict(body, name="bad", arms=[{"name": "x", "model": "m", "share": 1}])
        r = httpx.post(f"{gw.url}/v1/experiments", json=bad)
        assert r.status_code == 400 and "arms" in r.text
        bad_plugin = dict(body, name="bad2")
        bad_plugin["arms"] = [
            {"name": "a", "model": "fake/m1", "share": 1},
            {"name": "b", "model": "panelfuse/fusion", "fusion": {"quorum": "many"}, "share": 1},
        ]
        r = httpx.post(f"{gw.url}/v1/experiments", json=bad_plugin)
        assert r.status_code == 400 and r.json()["error"]["param"] == "arms[1].fusion.quorum"
        assert httpx.get(f"{gw.url}/v1/experiments/nope").status_code == 404
        assert httpx.post(f"{gw.url}/v1/experiments/api-made/arms/nope/pause").status_code == 404
    finally:
        gw.stop()


def test_only_the_admin_manages_experiments(fake, tmp_path):
    async def keys(db: str):
        store = await RunStore.open(db)
        try:
            return (
                await store.keys.create("team"),
                await store.keys.create("ops", is_admin=True),
                await store.keys.create("other"),
            )
        finally:
            await store.close()

    db = f"sqlite+aiosqlite:///{tmp_path}/runs.db"
    team, ops, other = asyncio.run(keys(db))
    script_panel(fake)
    config = gateway_config(fake).model_validate(
        {**gateway_config(fake).model_dump(exclude={"source"}), "experiments": {"ab": experiment()}}
    )
    gw = Gateway(fake, db, config=config).start()
    try:
        as_team = {"Authorization": f"Bearer {team.secret}"}
        as_ops = {"Authorization": f"Bearer {ops.secret}"}
        r = httpx.get(f"{gw.url}/v1/experiments", headers=as_team)
        assert r.status_code == 403 and r.json()["error"]["metadata"]["error_code"] == "forbidden"
        assert httpx.post(f"{gw.url}/v1/experiments/ab/stop", headers=as_team).status_code == 403
        assert httpx.get(f"{gw.url}/v1/experiments", headers=as_ops).json()["data"][0]["name"] == "ab"
        # An answer's feedback comes from the key that asked, or the admin; another key gets a 404.
        body = {"model": "gpt-default", "messages": QUESTION, "user": "u1"}
        answer = httpx.post(f"{gw.url}/v1/chat/completions", json=body, headers=as_team, timeout=30).json()
        wait_for_records(db, "ab", 1)
        as_other = {"Authorization": f"Bearer {other.secret}"}
        score = {"id": answer["id"], "score": 1}
        assert httpx.post(f"{gw.url}/v1/feedback", json=score, headers=as_other).status_code == 404
        assert httpx.post(f"{gw.url}/v1/feedback", json=score, headers=as_team).status_code == 200
    finally:
        gw.stop()


def test_a_config_experiments_state_survives_a_restart(fake, tmp_path):
    script_panel(fake)
    gw, _ = start(fake, tmp_path, ab=experiment())
    try:
        assert httpx.post(f"{gw.url}/v1/experiments/ab/arms/fusion/pause").status_code == 200
    finally:
        gw.stop()
    changed = experiment(description="now with a description")
    gw, _ = start(fake, tmp_path, ab=changed)
    try:
        got = httpx.get(f"{gw.url}/v1/experiments/ab").json()
        assert got["paused_arms"] == ["fusion"] and got["definition"]["description"] == "now with a description"
    finally:
        gw.stop()


def test_a_cached_primary_answer_is_recorded_as_cached_and_shadows_never_use_the_cache(fake, tmp_path):
    script_panel(fake)
    arms = [
        {"name": "cached", "model": "panelfuse/fusion", "fusion": {"preset": "test", "cache_ttl_s": 3600}, "share": 1},
        {
            "name": "shadow",
            "model": "panelfuse/fusion",
            "fusion": {"preset": "test", "cache_ttl_s": 3600},
            "shadow": True,
        },
    ]
    gw, db = start(fake, tmp_path, c=experiment(arms=arms))
    try:
        for _ in range(2):
            assert ask(gw, "same-user").status_code == 200
            time.sleep(0.1)
        rows = wait_for_records(db, "c", 4)
        primary = sorted((x for x in rows if not x.shadow), key=lambda x: x.cached)
        shadows = [x for x in rows if x.shadow]
        assert [(x.cached, x.calls) for x in primary] == [(False, 5), (True, 0)]
        assert primary[1].cost == 0
        assert len(shadows) == 2 and all(not x.cached and x.calls == 5 for x in shadows)
    finally:
        gw.stop()


@pytest.mark.parametrize("stream", [False, True])
def test_a_proxied_arm_that_fails_is_recorded_failed(fake, tmp_path, stream):
    script_panel(fake)
    # 500 before any answer (both ways), or a stream cut midway (an error chunk after some tokens).
    failure = Script(failure=Failure.CUT, cut_after_tokens=2) if stream else Script(failure=Failure.HTTP_500)
    fake.script("m1", failure)
    arms = [{"name": "single", "model": "fake/m1", "share": 1}, {"name": "other", "model": "fake/m1", "share": 1}]
    gw, db = start(fake, tmp_path, f=experiment(arms=arms))
    try:
        with httpx.Client(timeout=30) as client:
            body = {"model": "gpt-default", "messages": QUESTION, "user": "u", "stream": stream}
            r = client.post(f"{gw.url}/v1/chat/completions", json=body)
            assert r.status_code == 200 if stream else r.status_code >= 500, r.text
            if stream:
                assert '"error"' in r.text
        (row,) = wait_for_records(db, "f", 1)
        assert row.status == "failed" and row.error and row.calls == 1 and not row.shadow
    finally:
        gw.stop()


def test_a_failure_to_open_a_proxied_stream_is_recorded_failed(fake, tmp_path):
    script_panel(fake)
    fake.script("m1", Script(failure=Failure.HTTP_500))
    arms = [{"name": "single", "model": "fake/m1", "share": 1}, {"name": "other", "model": "fake/m1", "share": 1}]
    gw, db = start(fake, tmp_path, o=experiment(arms=arms))
    try:
        body = {"model": "gpt-default", "messages": QUESTION, "user": "u", "stream": True}
        r = httpx.post(f"{gw.url}/v1/chat/completions", json=body, timeout=30)
        assert r.status_code >= 500
        (row,) = wait_for_records(db, "o", 1)
        assert row.status == "failed" and row.error
    finally:
        gw.stop()
