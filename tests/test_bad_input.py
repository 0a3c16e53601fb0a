"""Bad input is a 4xx in OpenAI's error shape, never a 500 or a dropped connection, and never a stored
half-run (issue 15). Each case goes over real HTTP to a gateway on loopback with the fake upstream
behind it; the store cases run on SQLite and on PostgreSQL (skipped without one, failed under CI=true)."""

from __future__ import annotations

import asyncio
import math
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import require_service
from gateway_helpers import Gateway
from panelfuse.providers.errors import RateLimitedError
from panelfuse.providers.retry import MAX_RETRY_AFTER, RetryPolicy, backoff_delay, parse_retry_after
from panelfuse.service.requests import MAX_JSON_DEPTH
from panelfuse.testing import FakeUpstream, Script
from pipeline_helpers import script_panel

PG_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
USER = [{"role": "user", "content": "q"}]


def assert_openai_error(r: httpx.Response, status: int = 400) -> dict[str, Any]:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert isinstance(err["message"], str) and err["message"]
    assert {"message", "type", "code", "param"} <= set(err)
    assert "Traceback" not in r.text
    return err


def run_ids(url: str) -> set[str]:
    r = httpx.get(f"{url}/v1/fusion/runs", params={"limit": 200})
    assert r.status_code == 200
    return {run["id"] for run in r.json()["data"]}


def post_raw(url: str, path: str, body: str, **kw: Any) -> httpx.Response:
    """A body sent exactly as written (1e400, a 401-digit integer, NaN: what json.dumps would not write)."""
    return httpx.post(f"{url}{path}", content=body, headers={"content-type": "application/json"}, timeout=30, **kw)


@pytest.fixture(scope="module")
def module_fake() -> Iterator[FakeUpstream]:
    with FakeUpstream() as fake:
        fake.default = Script(text="fine")
        yield fake


@pytest.fixture(scope="module")
def sqlite_gw(module_fake, tmp_path_factory) -> Iterator[Gateway]:
    db = tmp_path_factory.mktemp("bad_input") / "runs.db"
    gw = Gateway(module_fake, f"sqlite+aiosqlite:///{db}").start()
    yield gw
    gw.stop()


@pytest.fixture(scope="module")
def pg_gw(module_fake) -> Iterator[Gateway]:
    require_service(5432, "PostgreSQL")
    schema = f"pf_bad_{uuid.uuid4().hex[:10]}"
    gw = Gateway(module_fake, PG_URL, db_schema=schema).start()
    yield gw
    gw.stop()

    async def drop() -> None:
        import asyncpg

        conn = await asyncpg.connect("postgresql://postgres@127.0.0.1:5432/test")
        try:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        finally:
            await conn.close()

    asyncio.run(drop())


@pytest.fixture(params=["sqlite", "postgres"])
def any_gw(request) -> Gateway:
    return request.getfixturevalue("sqlite_gw" if request.param == "sqlite" else "pg_gw")


@pytest.fixture
def gw(sqlite_gw, module_fake) -> Gateway:
    module_fake.default = Script(text="fine")
    script_panel(module_fake)
    return sqlite_gw


def completed_run(gw: Gateway, fake: FakeUpstream) -> str:
    script_panel(fake)
    r = httpx.post(f"{gw.url}/v1/chat/completions", json={"model": "panelfuse/fusion", "messages": USER}, timeout=30)
    assert r.status_code == 200, r.text
    return r.json()["fusion"]["run_id"]


# 1. A non-finite weight: the run was stored `completed` and the response was a 500.


@pytest.mark.parametrize(
    "plugin",
    [
        '{"id": "fusion", "analysis_models": [{"model": "fake/m1", "weight": 1e400}]}',
        '{"id": "fusion", "weights": {"A": 1e400}}',
        '{"id": "fusion", "analysis_models": [{"model": "fake/m1", "weight": NaN}]}',
        '{"id": "fusion", "max_cost": Infinity}',
        '{"id": "fusion", "analysis_models": [{"model": "fake/m1", "weight": 1e9}]}',
    ],
)
def test_out_of_range_plugin_number_is_400_and_stores_no_run(gw, plugin):
    before = run_ids(gw.url)
    body = '{"model": "panelfuse/fusion", "messages": [{"role": "user", "content": "q"}], "plugins": [' + plugin + "]}"
    err = assert_openai_error(post_raw(gw.url, "/v1/chat/completions", body))
    assert "plugins" in err["param"]
    assert run_ids(gw.url) == before


# 2. A 401-digit max_tokens on a proxied model: OverflowError in the cost estimate.


@pytest.mark.parametrize("field", ["max_tokens", "max_completion_tokens"])
def test_huge_max_tokens_on_proxy_is_400(gw, field):
    body = '{"model": "fake/m1", "messages": [{"role": "user", "content": "q"}], "' + field + '": 1' + "0" * 400 + "}"
    err = assert_openai_error(post_raw(gw.url, "/v1/chat/completions", body))
    assert err["param"] == field


def test_huge_max_output_tokens_on_responses_is_400(gw):
    body = '{"model": "fake/m1", "input": "q", "max_output_tokens": 1' + "0" * 400 + "}"
    assert assert_openai_error(post_raw(gw.url, "/v1/responses", body))["param"] == "max_output_tokens"


# 3. Retry-After: inf, nan, negative, huge, a date, garbage. The parser never raises nor returns a
# figure that is not a finite number of seconds in 0 … MAX_RETRY_AFTER.


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("inf", None),
        ("-inf", None),
        ("Infinity", None),
        ("nan", None),
        ("1e400", None),
        ("garbage", None),
        ("", None),
        (None, None),
        ("-1", 0.0),
        ("2", 2.0),
        (" 1.5 ", 1.5),
        ("99999999", MAX_RETRY_AFTER),
        ("Wed, 21 Oct 2015 07:28:00 GMT", 0.0),
    ],
)
def test_parse_retry_after_cases(header, expected):
    assert parse_retry_after(header) == expected


def test_parse_retry_after_reads_an_http_date():
    now = datetime(2026, 12, 2, 12, 0, 0, tzinfo=UTC)
    assert parse_retry_after(format_datetime(now + timedelta(seconds=30), usegmt=True), now=now) == 30.0


@given(st.one_of(st.none(), st.text(max_size=60), st.from_regex(r"[+-]?[0-9]{0,400}(\.[0-9]*)?(e[+-]?[0-9]{1,4})?")))
@settings(max_examples=300, deadline=None)
def test_parse_retry_after_never_raises(header):
    seconds = parse_retry_after(header)
    assert seconds is None or (math.isfinite(seconds) and 0.0 <= seconds <= MAX_RETRY_AFTER)


@given(st.floats(allow_nan=True, allow_infinity=True) | st.none(), st.integers(1, 10))
@settings(max_examples=200, deadline=None)
def test_backoff_delay_is_finite_for_any_retry_after(retry_after, attempt):
    """Even a RateLimitedError built with a non-finite figure (not through the parser) waits a finite time."""
    import random

    err = RateLimitedError("slow down", retry_after=retry_after, status_code=429)
    delay = backoff_delay(RetryPolicy(), attempt, err, random.Random(0))
    assert math.isfinite(delay) and 0.0 <= delay <= MAX_RETRY_AFTER


class _RateLimited(BaseHTTPRequestHandler):
    """An OpenAI-wire upstream that answers every call 429 with the Retry-After it is given, raw (the fake
    upstream formats its header from a float, so it cannot send `inf` or a date)."""

    retry_after = "inf"

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length") or 0))
        body = b'{"error": {"message": "slow down", "type": "rate_limit_error"}}'
        self.send_response(429)
        self.send_header("content-type", "application/json")
        self.send_header("retry-after", type(self).retry_after)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.mark.parametrize(
    "header", ["inf", "nan", "-1", "1e400", "garbage", format_datetime(datetime(2099, 1, 1, tzinfo=UTC), usegmt=True)]
)
def test_upstream_429_with_bad_retry_after_is_429_not_500(tmp_path, header):
    _RateLimited.retry_after = header
    upstream = ThreadingHTTPServer(("127.0.0.1", 0), _RateLimited)
    thread = threading.Thread(target=upstream.serve_forever, daemon=True)
    thread.start()
    fake_like = SimpleNamespace(openai_base_url=f"http://127.0.0.1:{upstream.server_address[1]}/v1")
    gw = Gateway(fake_like, f"sqlite+aiosqlite:///{tmp_path}/runs.db").start()  # type: ignore[arg-type]
    try:
        r = httpx.post(f"{gw.url}/v1/chat/completions", json={"model": "fake/m1", "messages": USER}, timeout=60)
        assert_openai_error(r, 429)
        retry = r.headers.get("retry-after")
        assert retry is None or (retry.isdigit() and int(retry) <= MAX_RETRY_AFTER)
    finally:
        gw.stop()
        upstream.shutdown()
        upstream.server_close()


def test_fake_upstream_rate_limit_with_retry_after_still_a_429(gw, module_fake):
    """The fake's own Retry-After (a float it formats): a long one is capped, never a 500."""
    module_fake.script("m1", Script(failure="429", retry_after=10**7))
    r = httpx.post(f"{gw.url}/v1/chat/completions", json={"model": "fake/m1", "messages": USER}, timeout=60)
    assert_openai_error(r, 429)
    assert int(r.headers["retry-after"]) <= MAX_RETRY_AFTER


# 4. The fusion server tool with parameters that are not an object.


@pytest.mark.parametrize("params", ["x", 3, ["model"], True])
def test_fusion_tool_parameters_not_an_object_is_400(gw, params):
    before = run_ids(gw.url)
    tools = [{"type": "openrouter:fusion", "parameters": params}]
    r = httpx.post(f"{gw.url}/v1/chat/completions", json={"model": "fake/m1", "messages": USER, "tools": tools})
    err = assert_openai_error(r)
    assert err["param"] == "tools[0].parameters"
    assert run_ids(gw.url) == before


def test_fusion_tool_parameters_not_an_object_on_responses_is_400(gw):
    tools = [{"type": "openrouter:fusion", "parameters": "x"}]
    r = httpx.post(f"{gw.url}/v1/responses", json={"model": "fake/m1", "input": "q", "tools": tools})
    assert_openai_error(r)


# 5. A fusion alias where a plain model must be: the server tool's judge or synthesizer, a member,
# the plugin's synthesizer, a re-synthesis.


@pytest.mark.parametrize(
    ("params", "param"),
    [
        ({"model": "panelfuse/fusion"}, "model"),
        ({"synthesizer": "openrouter/fusion"}, "synthesizer"),
        ({"analysis_models": ["fake/m1", "panelfuse/fusion-test"]}, "analysis_models[1]"),
        ({"judge_fallbacks": ["panelfuse/fusion"]}, "judge_fallbacks"),
    ],
)
def test_fusion_alias_in_server_tool_is_400(gw, params, param):
    before = run_ids(gw.url)
    tools = [{"type": "openrouter:fusion", "parameters": params}]
    r = httpx.post(f"{gw.url}/v1/chat/completions", json={"model": "fake/m1", "messages": USER, "tools": tools})
    err = assert_openai_error(r)
    assert err["param"] == param and "fusion alias" in err["message"]
    assert run_ids(gw.url) == before


def test_fusion_alias_as_plugin_synthesizer_is_400(gw):
    plugin = {"id": "fusion", "synthesizer": "panelfuse/fusion"}
    body = {"model": "panelfuse/fusion", "messages": USER, "plugins": [plugin]}
    err = assert_openai_error(httpx.post(f"{gw.url}/v1/chat/completions", json=body))
    assert err["param"] == "synthesizer"


@pytest.mark.parametrize(("field", "alias"), [("model", "panelfuse/fusion"), ("synthesizer", "openrouter/fusion")])
def test_resynthesize_with_a_fusion_alias_is_400(gw, module_fake, field, alias):
    run_id = completed_run(gw, module_fake)
    before = run_ids(gw.url)
    r = httpx.post(f"{gw.url}/v1/fusion/runs/{run_id}/resynthesize", json={field: alias}, timeout=30)
    err = assert_openai_error(r)
    assert err["param"] == field and alias in err["message"]
    assert run_ids(gw.url) == before


# 6. JSON nested deep: pydantic's serializer (and the JSON encoders) gave up with a 500 at ~600 levels.


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/chat/completions", '{"model": "fake/m1", "messages": [{"role": "user", "content": "q"}], "m": %s}'),
        (
            "/v1/chat/completions",
            '{"model": "panelfuse/fusion", "messages": [{"role": "user", "content": "q"}], "x": %s}',
        ),
        (
            "/v1/chat/completions",
            '{"model": "panelfuse/fusion", "messages": [{"role": "user", "content": "q"}], '
            '"response_format": {"type": "json_schema", "json_schema": %s}}',
        ),
        (
            "/v1/chat/completions",
            '{"model": "panelfuse/fusion", "messages": [{"role": "user", "content": '
            '[{"type": "text", "text": "q", "x": %s}]}]}',
        ),
        (
            "/v1/chat/completions",
            '{"model": "panelfuse/fusion", "messages": [{"role": "user", "content": "q"}], '
            '"plugins": [{"id": "fusion", "reasoning": {"x": %s}}]}',
        ),
        ("/v1/responses", '{"model": "panelfuse/fusion", "input": "q", "metadata": {"a": "b"}, "text": {"x": %s}}'),
        ("/v1/fusion/estimate", '{"messages": [{"role": "user", "content": "q"}], "plugins": [%s]}'),
    ],
)
@pytest.mark.parametrize("depth", [600, 5000])
def test_deeply_nested_body_is_400(gw, path, body, depth):
    before = run_ids(gw.url)
    err = assert_openai_error(post_raw(gw.url, path, body % nested(depth)))
    assert err["code"] == 400 and "nested" in err["message"]
    assert run_ids(gw.url) == before


def test_nesting_up_to_the_limit_is_accepted(gw):
    """The body is level 1, `metadata` level 2: MAX_JSON_DEPTH - 1 levels inside it is the most allowed."""
    ok = '{"model": "fake/m1", "messages": [{"role": "user", "content": "q"}], "metadata": %s}'
    assert post_raw(gw.url, "/v1/chat/completions", ok % nested(MAX_JSON_DEPTH - 1)).status_code == 200
    assert_openai_error(post_raw(gw.url, "/v1/chat/completions", ok % nested(MAX_JSON_DEPTH)))


# 7. NUL in path and query parameters: PostgreSQL refuses the lookup (a 500 before).


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v1/fusion/runs/abc%00def"),
        ("GET", "/v1/fusion/runs/abc%00def/events"),
        ("DELETE", "/v1/fusion/runs/abc%00def"),
        ("GET", "/v1/fusion/runs?before=x%00"),
        ("GET", "/v1/fusion/runs?status=done%00"),
        ("GET", "/v1/fusion/runs?preset=a%00&mode=b"),
        ("GET", "/v1/generation?id=a%00b"),
    ],
)
def test_nul_in_path_or_query_is_4xx(any_gw, method, path):
    r = httpx.request(method, f"{any_gw.url}{path}", timeout=10)
    assert r.status_code in (400, 404), r.text
    assert_openai_error(r, r.status_code)


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/fusion/runs/abc%00def/feedback", {"score": 1}),
        ("/v1/fusion/runs/abc%00def/resynthesize", {}),
        ("/v1/responses", {"model": "fake/m1", "input": "q", "previous_response_id": "resp_a\x00b"}),
        ("/v1/chat/completions", {"model": "fake/m1\x00", "messages": USER}),
    ],
)
def test_nul_in_ids_of_a_body_is_4xx(any_gw, path, body):
    r = httpx.post(f"{any_gw.url}{path}", json=body, timeout=30)
    assert r.status_code in (400, 404), r.text
    assert_openai_error(r, r.status_code)


def test_nul_in_feedback_comment_is_400(any_gw, module_fake):
    run_id = completed_run(any_gw, module_fake)
    r = httpx.post(f"{any_gw.url}/v1/fusion/runs/{run_id}/feedback", json={"score": 1, "comment": "a\x00b"})
    assert assert_openai_error(r)["param"] == "comment"


# 8. Out-of-range integer query parameters: `after` past 2^31 answered 200, then dropped the connection.


@pytest.mark.parametrize("after", [str(10**25), str(2**31), "-1", "1e3", "abc"])
def test_events_after_out_of_range_is_400(any_gw, module_fake, after):
    run_id = completed_run(any_gw, module_fake)
    r = httpx.get(f"{any_gw.url}/v1/fusion/runs/{run_id}/events", params={"after": after}, timeout=10)
    assert assert_openai_error(r)["param"] == "query.after"


def test_last_event_id_out_of_range_is_400(any_gw, module_fake):
    run_id = completed_run(any_gw, module_fake)
    headers = {"Last-Event-ID": str(10**25)}
    r = httpx.get(f"{any_gw.url}/v1/fusion/runs/{run_id}/events", headers=headers, timeout=10)
    assert assert_openai_error(r)["param"] == "Last-Event-ID"


def test_events_after_at_the_bound_is_an_empty_replay(any_gw, module_fake):
    run_id = completed_run(any_gw, module_fake)
    with httpx.stream("GET", f"{any_gw.url}/v1/fusion/runs/{run_id}/events", params={"after": 2**31 - 1}) as r:
        assert r.status_code == 200
        assert not [ln for ln in r.iter_lines() if ln.startswith("id: ")]


@pytest.mark.parametrize("query", [{"limit": str(10**25)}, {"limit": "0"}, {"limit": "-5"}])
def test_list_limit_out_of_range_is_400(any_gw, query):
    assert_openai_error(httpx.get(f"{any_gw.url}/v1/fusion/runs", params=query))


# 9. Everything else a caller can get wrong in a chat request: a 400 naming the field.

BAD_CHAT_BODIES: list[tuple[dict[str, Any], str]] = [
    ({"model": "fake/m1", "messages": []}, "messages"),
    ({"model": "fake/m1", "messages": "hello"}, "messages"),
    ({"model": "fake/m1", "messages": [{"role": "wizard", "content": "x"}]}, "messages[0].role"),
    ({"model": "fake/m1", "messages": [{"role": "user", "content": [{"type": "hologram"}]}]}, "messages[0].content"),
    ({"model": "fake/m1", "messages": [{"role": "user", "content": [{"type": "text"}]}]}, "messages[0].content"),
    ({"model": "fake/m1", "messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
    ({"model": "fake/m1", "messages": USER * 5000}, "messages"),
    ({"model": "", "messages": USER}, "model"),
    ({"model": "m" * 600, "messages": USER}, "model"),
    ({"model": 5, "messages": USER}, "model"),
    ({"model": "fake/m1", "messages": USER, "temperature": "hot"}, "temperature"),
    ({"model": "fake/m1", "messages": USER, "temperature": 2.5}, "temperature"),
    ({"model": "fake/m1", "messages": USER, "top_p": -0.1}, "top_p"),
    ({"model": "fake/m1", "messages": USER, "n": 0}, "n"),
    ({"model": "fake/m1", "messages": USER, "n": 1000}, "n"),
    ({"model": "fake/m1", "messages": USER, "max_tokens": 0}, "max_tokens"),
    ({"model": "fake/m1", "messages": USER, "max_tokens": "many"}, "max_tokens"),
    ({"model": "fake/m1", "messages": USER, "seed": 2**64}, "seed"),
    ({"model": "fake/m1", "messages": USER, "stop": ["x"] * 100}, "stop"),
    ({"model": "fake/m1", "messages": USER, "tools": [{"type": "function"}] * 200}, "tools"),
    ({"model": "fake/m1", "messages": USER, "stream": "yes please"}, "stream"),
    ({"model": "panelfuse/fusion", "messages": USER, "plugins": [{"id": "fusion", "quorum": 99}]}, "plugins"),
    ({"model": "panelfuse/fusion", "messages": USER, "plugins": [{"id": "fusion", "deadline_ms": 10**12}]}, "plugins"),
    ({"model": "panelfuse/fusion", "messages": USER, "plugins": [{"id": "fusion", "grace_ms": -1}]}, "plugins"),
    ({"model": "panelfuse/fusion", "messages": USER, "plugins": [{"id": "fusion", "max_cost": 10**30}]}, "plugins"),
    ({"model": "panelfuse/fusion", "messages": USER, "plugins": [{"id": "fusion", "weights": {"A": -1}}]}, "plugins"),
    (
        {"model": "panelfuse/fusion", "messages": USER, "plugins": [{"id": "fusion", "max_completion_tokens": 10**9}]},
        "plugins",
    ),
    ({"model": "panelfuse/fusion", "messages": USER, "max_tokens": 500_000}, "fusion.answer.max_tokens"),
]


@pytest.mark.parametrize(("body", "param"), BAD_CHAT_BODIES, ids=[p for _, p in BAD_CHAT_BODIES])
def test_bad_chat_body_is_400_naming_the_field(gw, body, param):
    before = run_ids(gw.url)
    err = assert_openai_error(httpx.post(f"{gw.url}/v1/chat/completions", json=body, timeout=30))
    assert str(err["param"]).startswith(param), err
    assert run_ids(gw.url) == before


BAD_RESPONSES_BODIES: list[tuple[dict[str, Any], str]] = [
    ({"model": "fake/m1", "input": "q", "temperature": "hot"}, "temperature"),
    ({"model": "fake/m1", "input": "q", "max_output_tokens": 0}, "max_output_tokens"),
    ({"model": "fake/m1", "input": 5}, "input"),
    ({"model": "fake/m1", "input": [{"role": "wizard", "content": "x"}]}, "input"),
    ({"model": "fake/m1", "input": [{"role": "user", "content": [{"type": "hologram"}]}]}, "input"),
    ({"model": "fake/m1", "input": "q", "metadata": {"a": 1}}, "metadata"),
    ({"model": "", "input": "q"}, "model"),
]


@pytest.mark.parametrize(("body", "param"), BAD_RESPONSES_BODIES, ids=[p for _, p in BAD_RESPONSES_BODIES])
def test_bad_responses_body_is_400_in_the_same_shape(gw, body, param):
    err = assert_openai_error(httpx.post(f"{gw.url}/v1/responses", json=body, timeout=30))
    assert str(err["param"]).startswith(param), err


def test_non_finite_number_anywhere_in_the_body_is_400(gw):
    body = '{"model": "fake/m1", "messages": [{"role": "user", "content": "q"}], "frequency_penalty": NaN}'
    err = assert_openai_error(post_raw(gw.url, "/v1/chat/completions", body))
    assert err["param"] == "frequency_penalty" and "finite" in err["message"]


@pytest.mark.parametrize("field", ["instructions", "user", "metadata"])
def test_lone_surrogate_on_responses_is_400(gw, field):
    """The Responses API echoes these fields into its response object, which could not be encoded: a 500."""
    value = '{"k": "a\\ud800"}' if field == "metadata" else '"a\\ud800"'
    body = '{"model": "fake/m1", "input": "q", "' + field + '": ' + value + "}"
    err = assert_openai_error(post_raw(gw.url, "/v1/responses", body))
    assert err["param"].startswith(field) and "Unicode" in err["message"]
