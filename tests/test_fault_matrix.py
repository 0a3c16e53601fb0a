"""Reliability: the regression tests of issue 15's bugs, then the fault matrix of docs/reliability.md
(one case per row of its table, run over HTTP against a real gateway on loopback and the fake upstream).
"""

from __future__ import annotations

import asyncio
import json
import socket
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
import uvicorn
from aiohttp import web

from gateway_helpers import PRICES, TEST_PRESET, Gateway
from panelfuse.config import Config, ProviderConfig, ToolsConfig
from panelfuse.providers.base import CAP_CHARS_PER_TOKEN
from panelfuse.server.app import create_app
from panelfuse.server.state import ServerSettings
from panelfuse.testing import Failure, FakeUpstream, Script
from pipeline_helpers import fusion, judge_script, script_panel, spec
from tools_helpers import PAGE_FACT

SLOW = 30.0  # seconds of latency: far past every deadline below, so only a deadline can end the wait
DEEP = "[" * 1200  # a judge output nested past Python's recursion limit

# --- regressions (the pipeline in process: fast) ----------------------------------------------------


async def run(f, question: str = "Why is the sky blue?", guard: float = 10.0):
    """Run to the end; `guard` seconds is the test's own bound (the run must have ended by then)."""
    stream = f.stream(question)
    async with asyncio.timeout(guard):
        events = [ev async for ev in stream]
    return stream.result, events


def types(events) -> list[str]:
    return [e.type for e in events]


@pytest.mark.parametrize(
    "raw",
    ['{"choices": ["x"]}', '{"choices": [], "usage": {"prompt_tokens": "abc"}}', '{"choices": [{"delta": 5}]}'],
)
@pytest.mark.parametrize("wire", ["fake", "fakeanthropic"])
async def test_a_members_malformed_chunk_fails_that_member_only(fake, raw, wire):
    if wire == "fakeanthropic":
        raw = '{"type": "message_start", "message": {"usage": {"input_tokens": "abc"}}}' if "abc" in raw else raw
        raw = raw.replace('"choices"', '"type": "content_block_delta", "delta"')
    script_panel(fake, m2=Script(failure=Failure.MALFORMED_CHUNK, raw_chunk=raw))
    members = [{"model": "fake/m1"}, {"model": f"{wire}/m2", "fallbacks": ["fake/m3"]}, {"model": "fake/m3"}]
    result, events = await run(fusion(fake, spec(members=members)))
    assert result.status == "completed" and result.degraded is False  # the fallback answered
    fallback = next(e for e in events if e.type == "panel.fallback")
    assert "malformed response from upstream" in fallback.data["reason"]
    assert result.panel[1].status == "ok" and result.panel[1].model == "fake/m3"


async def test_a_malformed_chunk_without_fallback_degrades_the_run(fake):
    script_panel(fake, m2=Script(failure=Failure.MALFORMED_CHUNK, raw_chunk='{"choices": ["x"]}'))
    result, _ = await run(fusion(fake, spec()))
    assert result.status == "completed" and result.degraded
    (failed,) = result.failed_models
    assert failed.member == "B" and failed.status == "failed" and "malformed response from upstream" in failed.error
    assert result.content == "The sky is blue because air scatters short wavelengths."


async def test_a_deeply_nested_judge_output_drops_the_analysis_not_the_run(fake):
    script_panel(fake, judge=Script(text=DEEP))
    result, events = await run(fusion(fake, spec()))
    assert result.status == "completed" and result.degraded and result.analysis is None
    assert len(fake.requests_for("judge")) == 2  # the repair retry, then the analysis is given up
    assert "nested deeper" in result.judge.error and "analysis.failed" in types(events)
    assert result.content == "The sky is blue because air scatters short wavelengths."


async def test_best_of_with_a_deeply_nested_judge_output_chooses_by_weight(fake):
    script_panel(fake, judge=Script(text=DEEP))
    members = [{"model": "fake/m1"}, {"model": "fake/m2", "weight": 2.0}, {"model": "fake/m3"}]
    result, _ = await run(fusion(fake, spec(mode="best-of", members=members)))
    assert result.status == "completed" and result.best_of.member == "B"
    assert result.content == "Shorter wavelengths scatter more." and "by weight" in result.best_of.reason


@pytest.mark.parametrize("text", ["", "  \n\t "])
async def test_an_empty_synthesizer_answer_is_a_failed_call(fake, text):
    script_panel(fake, synth=Script(text=text, failure=Failure.EMPTY if not text else None))
    result, events = await run(fusion(fake, spec()))
    assert result.status == "completed" and result.degraded
    assert "synthesis.failed" in types(events)
    assert "empty answer" in result.error and "the answer is member A's, verbatim" in result.error
    assert result.content == "Rayleigh scattering makes the sky blue."
    assert "".join(e.data["text"] for e in events if e.type == "final.delta") == result.content


async def test_an_empty_synthesizer_answer_falls_back(fake):
    script_panel(fake, synth=Script(text=" "), backup=Script(text="The backup's answer."))
    result, events = await run(fusion(fake, spec(synthesizer={"model": "fake/synth", "fallbacks": ["fake/backup"]})))
    assert result.status == "completed" and not result.degraded and result.content == "The backup's answer."
    assert "synthesis.fallback" in types(events)
    assert "".join(e.data["text"] for e in events if e.type == "final.delta") == "The backup's answer."


async def test_deadline_ms_bounds_the_whole_run(fake):
    # Every stage slow: only the run's deadline (1 s) can end it; per call (the old meaning) it took 3 s.
    script_panel(
        fake,
        m2=Script(latency=SLOW),
        m3=Script(latency=SLOW),
        judge=Script(latency=SLOW),
        synth=Script(latency=SLOW),
    )
    result, _ = await run(fusion(fake, spec(deadline_ms=1000)), guard=1.0 + 0.75)
    assert result.status == "completed" and result.degraded
    assert {f.status for f in result.failed_models} == {"timeout"}
    assert all("deadline passed" in f.error for f in result.failed_models)
    assert "deadline passed" in result.judge.error and "deadline passed" in result.error
    assert result.content == "Rayleigh scattering makes the sky blue."  # the one member that answered
    assert await fake.wait_idle_async(2.0)  # every upstream call was cancelled


async def test_a_run_past_its_deadline_in_the_panel_fails_naming_it(fake):
    script_panel(fake, m1=Script(latency=SLOW), m2=Script(latency=SLOW), m3=Script(latency=SLOW))
    result, events = await run(fusion(fake, spec(deadline_ms=600)), guard=0.6 + 0.75)
    assert result.status == "failed" and types(events)[-1] == "run.failed"
    assert "deadline passed" in result.error and len(result.failed_models) == 3
    assert await fake.wait_idle_async(2.0)


# --- the fault matrix (docs/reliability.md), over HTTP -----------------------------------------------

MATRIX_DOC = Path(__file__).resolve().parent.parent / "docs" / "reliability.md"
DEADLINE_MS = 2000  # every matrix run's deadline_ms
SLACK_S = 1.5  # the client's guard: an answer later than deadline + this fails the case
PROVIDER_TIMEOUT = 2.5  # [providers.fake] timeout: the per-call budget (the outer model's only bound)
MAX_TOKENS = 50  # max_completion_tokens of the matrix runs: the oversize cap is 50 * 32 characters
CAP = MAX_TOKENS * CAP_CHARS_PER_TOKEN
ANSWER = "The sky is blue because air scatters short wavelengths."
MEMBER_TEXTS = {
    "m1": "Rayleigh scattering makes the sky blue.",
    "m2": "Shorter wavelengths scatter more.",
    "m3": "Air molecules scatter blue light.",
}


def matrix_rows() -> list[tuple[str, str, str]]:
    """(stage, fault, behaviour) of every row of the doc's table."""
    text = MATRIX_DOC.read_text()
    block = text.split("<!-- fault-matrix:start -->")[1].split("<!-- fault-matrix:end -->")[0]
    rows = []
    for line in block.strip().splitlines()[2:]:  # after the header and its rule
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        rows.append((cells[0], cells[1], cells[2]))
    return rows


class Site:
    """A loopback web site in its own thread (the gateway's loop is another thread's): pages for
    web_fetch and a SearXNG API whose query picks the fault."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def start(self) -> Site:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self._serve(), self.loop).result(10)
        return self

    async def _serve(self) -> None:
        app = web.Application()
        app.router.add_get("/page", _answer(web.Response, text=f"<p>{PAGE_FACT}</p>", content_type="text/html"))
        app.router.add_get("/big", _answer(web.Response, text="deep " * 200_000, content_type="text/plain"))
        app.router.add_get("/slow", self._slow)
        app.router.add_get("/broken", _answer(web.Response, status=500, text="boom"))
        app.router.add_get("/search", self._search)
        self.runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
        await self.runner.setup()
        await web.SockSite(self.runner, self.sock).start()

    @staticmethod
    async def _slow(request: web.Request) -> web.Response:
        await asyncio.sleep(SLOW)
        return web.Response(text="late")

    async def _search(self, request: web.Request) -> web.Response:
        q = request.query.get("q", "")
        if "slow" in q:
            await asyncio.sleep(SLOW)
        if "broken" in q:
            return web.Response(status=500, text="search is down")
        if "garbled" in q:
            return web.Response(text='{"results": [', content_type="application/json")
        return web.json_response({"results": [{"title": "Sky", "url": f"{self.url}/page", "content": "blue"}]})

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


def _answer(make: Callable[..., web.Response], **kw: Any) -> Callable[[web.Request], Any]:
    """An aiohttp handler (a coroutine function, as aiohttp wants) answering the same every time."""

    async def handler(request: web.Request) -> web.Response:
        return make(**kw)

    return handler


class MatrixGateway(Gateway):
    """The loopback gateway with the matrix's config: a provider that refuses connections (`dead/`),
    the fake with a per-call timeout, web_search on the site's SearXNG and web_fetch allowed to it."""

    def __init__(self, fake: FakeUpstream, site: Site, db_url: str) -> None:
        dead = socket.socket()
        dead.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused
        self.dead = dead
        config = Config(
            default_provider="fake",
            default_preset="test",
            providers={
                "fake": ProviderConfig(
                    kind="openai_compat", base_url=fake.openai_base_url, api_key="k", timeout=PROVIDER_TIMEOUT
                ),
                "dead": ProviderConfig(
                    kind="openai_compat", base_url=f"http://127.0.0.1:{dead.getsockname()[1]}/v1", api_key="k"
                ),
            },
            presets={"test": TEST_PRESET},
            prices=PRICES,
            tools=ToolsConfig(
                search="searxng",
                searxng={"url": site.url},
                fetch={"enabled": True, "allow": ["127.0.0.1"], "read_timeout": 30},
                tool_timeout=30,
                result_tokens=100,
            ),
        )
        self.settings = ServerSettings(db_url=db_url, keepalive_s=0.2)
        self.app = create_app(self.settings, config=config)
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.server = uvicorn.Server(uvicorn.Config(self.app, log_level="warning", lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def stop(self) -> None:
        super().stop()
        self.dead.close()


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    with FakeUpstream() as fake:
        site = Site().start()
        gw = MatrixGateway(fake, site, f"sqlite+aiosqlite:///{tmp_path_factory.mktemp('matrix')}/runs.db").start()
        try:
            yield Env(fake, site, gw)
        finally:
            gw.stop()
            site.stop()


@dataclass
class Env:
    fake: FakeUpstream
    site: Site
    gw: MatrixGateway


@dataclass
class Outcome:
    """What the client saw (status, JSON body or stream text) and the stored run, if there is one."""

    case: str
    status: int
    body: dict[str, Any]
    run: dict[str, Any] | None
    fake: FakeUpstream
    stream_text: str = ""

    def asked(self, role: str) -> int:
        return len(self.fake.requests_for(f"{self.case}-{role}"))

    @property
    def fusion(self) -> dict[str, Any]:
        return self.body["fusion"]

    @property
    def content(self) -> str:
        return self.body["choices"][0]["message"]["content"]

    @property
    def error(self) -> str:
        return self.body["error"]["message"]

    def member(self, label: str) -> dict[str, Any]:
        return next(m for m in self.fusion["panel"] if m["member"] == label)

    def events(self) -> list[str]:
        return [e["type"] for e in self.run_events]

    run_events: list[dict[str, Any]] = field(default_factory=list)


def ask(
    env: Env,
    case: str,
    *,
    scripts: dict[str, Any] | None = None,
    providers: dict[str, str] | None = None,
    plugin: dict[str, Any] | None = None,
    member_fallbacks: dict[str, list[str]] | None = None,
    judge_fallbacks: list[str] | None = None,
    record: bool = True,
) -> Outcome:
    """One fusion over HTTP with this case's own models (`<case>-m1`…, so cases never share scripts);
    the client's timeout is the guard: deadline_ms + SLACK_S."""
    fake = env.fake
    scripts = {**{k: Script(text=v) for k, v in MEMBER_TEXTS.items()}, "synth": Script(text=ANSWER), **(scripts or {})}
    scripts.setdefault("judge", judge_script)
    for role, script in scripts.items():
        fake.script(f"{case}-{role}", *(script if isinstance(script, tuple) else (script,)))
    providers = providers or {}

    def model(role: str) -> str:
        return f"{providers.get(role, 'fake')}/{case}-{role}"

    fusion: dict[str, Any] = {
        "id": "fusion",
        "analysis_models": [model(r) for r in ("m1", "m2", "m3")],
        "model": model("judge"),
        "synthesizer": model("synth"),
        "deadline_ms": DEADLINE_MS,
        "max_completion_tokens": MAX_TOKENS,
        "tools": [],
    }
    if member_fallbacks:
        fusion["fallbacks"] = {model(r): [model(f) for f in fs] for r, fs in member_fallbacks.items()}
    if judge_fallbacks:
        fusion["judge_fallbacks"] = [model(r) for r in judge_fallbacks]
    fusion.update(plugin or {})
    body = {"model": "panelfuse/fusion", "messages": [{"role": "user", "content": "Why blue?"}], "plugins": [fusion]}
    r = httpx.post(f"{env.gw.url}/v1/chat/completions", json=body, timeout=DEADLINE_MS / 1000 + SLACK_S)
    data = r.json()
    run_id = r.headers.get("x-panelfuse-run-id") or data.get("error", {}).get("metadata", {}).get("run_id")
    out = Outcome(case, r.status_code, data, None, fake)
    if run_id and record:
        out.run = stored(env, run_id)
        events = httpx.get(f"{env.gw.url}/v1/fusion/runs/{run_id}/events", timeout=10).text
        out.run_events = [json.loads(line[5:]) for line in events.splitlines() if line.startswith("data:")]
    check_stored_matches(out)
    return out


def stored(env: Env, run_id: str) -> dict[str, Any]:
    """The stored run once it has its outcome (the record is written as the run ends)."""
    for _ in range(100):
        run = httpx.get(f"{env.gw.url}/v1/fusion/runs/{run_id}", timeout=10).json()
        if run["status"] != "running":
            return run
        time.sleep(0.02)
    return run


def check_stored_matches(out: Outcome) -> None:
    """The stored run says exactly what the client saw: status, degraded, error, failed models."""
    if out.run is None:
        return
    run = out.run
    if out.status == 200:
        fusion = out.fusion
        assert run["status"] == "completed" and run["content"] == out.content
        assert run["degraded"] == fusion["degraded"] and run["error"] == fusion["error"]
        assert run["result"]["failed_models"] == fusion["failed_models"]
    else:
        meta = out.body["error"]["metadata"]
        assert run["status"] == "failed" and out.error == f"fusion failed: {run['error']}"
        assert run["result"]["failed_models"] == meta["failed_models"]


# --- the cases: one per row (stage, fault) -------------------------------------------------------------

ANALYSIS = json.dumps(
    {
        "consensus": ["the sky scatters blue light"],
        "contradictions": [],
        "partial_coverage": [],
        "unique_insights": [{"model": "A", "insight": "Rayleigh"}],
        "blind_spots": [],
        "anomalies": [],
    }
)
Case = Callable[[Env, str], None]


def oversize() -> Script:
    """An upstream that ignores max_tokens: 2,000 tokens, far past the cap (and cheap for the fake)."""
    return Script(failure=Failure.OVERSIZE, oversize_tokens=2000)


CASES: dict[tuple[str, str], Case] = {}


def case(stage: str, fault: str) -> Callable[[Case], Case]:
    def register(fn: Case) -> Case:
        CASES[(stage, fault)] = fn
        return fn

    return register


def completed(out: Outcome, *, degraded: bool) -> None:
    assert out.status == 200, out.body
    assert out.fusion["status"] == "completed" and out.fusion["degraded"] is degraded


def member_failed(out: Outcome, status: str, needle: str = "", *, code: int | None = None) -> None:
    completed(out, degraded=True)
    (failed,) = out.fusion["failed_models"]
    assert failed["member"] == "B" and failed["status"] == status and needle in failed["error"]
    if code is not None:
        assert failed["status_code"] == code


def run_failed(out: Outcome, *needles: str) -> None:
    assert out.status == 502 and out.body["error"]["metadata"]["error_code"] == "fusion_failed"
    assert all(n in out.error for n in needles), out.error


def no_analysis(out: Outcome, needle: str = "") -> None:
    completed(out, degraded=True)
    assert out.fusion["analysis"] is None and needle in out.fusion["judge"]["error"]
    assert out.content == ANSWER  # the synthesizer still answered


def verbatim(out: Outcome, needle: str) -> None:
    completed(out, degraded=True)
    assert out.content == MEMBER_TEXTS["m1"] and "synthesis.failed" in out.events()
    assert "the answer is member A's, verbatim" in out.fusion["error"] and needle in out.fusion["error"]


# panelist: the fault is member B's (m2)


@case("panelist", "timeout")
def _(env: Env, c: str) -> None:
    out = ask(env, c, scripts={"m2": Script(text="one two three", token_rate=0.2)})  # stalls after a token
    member_failed(out, "timeout", "deadline passed")


@case("panelist", "connection refused")
def _(env: Env, c: str) -> None:
    out = ask(
        env, c, scripts={"backup": Script(text="backup")}, providers={"m2": "dead"}, member_fallbacks={"m2": ["backup"]}
    )
    completed(out, degraded=False)
    assert out.member("B")["model"] == f"fake/{c}-backup" and "panel.fallback" in out.events()


@case("panelist", "500")
def _(env: Env, c: str) -> None:
    out = ask(env, c, scripts={"m2": Script(text="m2", failure=Failure.HTTP_500, fail_times=1)})
    completed(out, degraded=False)
    assert out.asked("m2") == 2


@case("panelist", "500 on every member")
def _(env: Env, c: str) -> None:
    out = ask(env, c, scripts={m: Script(failure=Failure.HTTP_500) for m in ("m1", "m2", "m3")})
    run_failed(out, "only 0 of 3 members answered")
    assert [f["member"] for f in out.body["error"]["metadata"]["failed_models"]] == ["A", "B", "C"]
    assert out.asked("judge") == 0 and out.asked("synth") == 0


@case("panelist", "429 with Retry-After")
def _(env: Env, c: str) -> None:
    out = ask(env, c, scripts={"m2": Script(failure=Failure.RATE_LIMIT, retry_after=0.1, fail_times=1)})
    completed(out, degraded=False)
    assert out.asked("m2") == 2


@case("panelist", "402")
def _(env: Env, c: str) -> None:
    out = ask(env, c, scripts={"m2": Script(failure=Failure.HTTP, status_code=402)})
    member_failed(out, "failed", code=402)
    assert out.asked("m2") == 1


@case("panelist", "stream cut midway")
def _(env: Env, c: str) -> None:
    out = ask(env, c, scripts={"m2": Script(text="one two three four five six", failure=Failure.CUT)})
    member_failed(out, "failed")
    assert out.asked("m2") == 1  # text had streamed: not retried


@case("panelist", "malformed SSE")
def _(env: Env, c: str) -> None:
    member_failed(ask(env, c, scripts={"m2": Script(failure=Failure.MALFORMED_SSE)}), "failed", "malformed SSE data")


@case("panelist", "invalid or partial JSON")
def _(env: Env, c: str) -> None:
    out = ask(env, c, scripts={"m2": Script(failure=Failure.MALFORMED_CHUNK)})
    member_failed(out, "failed", "malformed response from upstream")


@case("panelist", "empty completion")
def _(env: Env, c: str) -> None:
    member_failed(ask(env, c, scripts={"m2": Script(failure=Failure.EMPTY)}), "empty")


@case("panelist", "refusal")
def _(env: Env, c: str) -> None:
    member_failed(ask(env, c, scripts={"m2": Script(failure=Failure.REFUSAL)}), "refused")


@case("panelist", "very slow first byte")
def _(env: Env, c: str) -> None:
    member_failed(ask(env, c, scripts={"m2": Script(latency=SLOW)}), "timeout", "deadline passed")


@case("panelist", "oversize answer")
def _(env: Env, c: str) -> None:
    out = ask(env, c, scripts={"m2": oversize()})
    completed(out, degraded=False)
    assert len(out.member("B")["content"]) == CAP


# judge


def judge_case(env: Env, c: str, judge: Any, **kw: Any) -> Outcome:
    return ask(env, c, scripts={"judge": judge}, **kw)


@case("judge", "timeout")
def _(env: Env, c: str) -> None:
    no_analysis(judge_case(env, c, Script(text=ANALYSIS, token_rate=0.2)), "deadline passed")


@case("judge", "connection refused")
def _(env: Env, c: str) -> None:
    out = ask(
        env, c, scripts={"backup": Script(text=ANALYSIS)}, providers={"judge": "dead"}, judge_fallbacks=["backup"]
    )
    completed(out, degraded=False)
    assert (
        out.fusion["analysis"]["consensus"] == ["the sky scatters blue light"] and "analysis.fallback" in out.events()
    )


@case("judge", "500")
def _(env: Env, c: str) -> None:
    out = judge_case(env, c, Script(text=ANALYSIS, failure=Failure.HTTP_500, fail_times=1))
    completed(out, degraded=False)
    assert out.asked("judge") == 2


@case("judge", "429 with Retry-After")
def _(env: Env, c: str) -> None:
    out = judge_case(env, c, Script(text=ANALYSIS, failure=Failure.RATE_LIMIT, retry_after=0.1, fail_times=1))
    completed(out, degraded=False)
    assert out.asked("judge") == 2


@case("judge", "402")
def _(env: Env, c: str) -> None:
    out = judge_case(env, c, Script(failure=Failure.HTTP, status_code=402))
    no_analysis(out, "402")
    assert out.asked("judge") == 1


@case("judge", "stream cut midway")
def _(env: Env, c: str) -> None:
    no_analysis(judge_case(env, c, Script(text=ANALYSIS, failure=Failure.CUT)))


@case("judge", "malformed SSE")
def _(env: Env, c: str) -> None:
    no_analysis(judge_case(env, c, Script(text=ANALYSIS, failure=Failure.MALFORMED_SSE)), "malformed SSE data")


@case("judge", "invalid or partial JSON")
def _(env: Env, c: str) -> None:
    out = judge_case(env, c, (Script(text="the answers mostly agree"), Script(text=ANALYSIS)))
    completed(out, degraded=False)
    assert out.asked("judge") == 2 and out.fusion["analysis"]["consensus"] == ["the sky scatters blue light"]


@case("judge", "deeply nested JSON")
def _(env: Env, c: str) -> None:
    out = judge_case(env, c, Script(text=DEEP))
    no_analysis(out, "nested deeper")
    assert out.asked("judge") == 2


@case("judge", "empty completion")
def _(env: Env, c: str) -> None:
    out = judge_case(env, c, Script(failure=Failure.EMPTY))
    no_analysis(out, "not a JSON object")
    assert out.asked("judge") == 2


@case("judge", "refusal")
def _(env: Env, c: str) -> None:
    out = judge_case(env, c, Script(failure=Failure.REFUSAL))
    no_analysis(out, "refused")
    assert out.asked("judge") == 1


@case("judge", "very slow first byte")
def _(env: Env, c: str) -> None:
    no_analysis(judge_case(env, c, Script(latency=SLOW)), "deadline passed")


@case("judge", "oversize answer")
def _(env: Env, c: str) -> None:
    out = judge_case(env, c, oversize())
    no_analysis(out)
    assert out.asked("judge") == 2


# synthesizer


def synth_case(env: Env, c: str, synth: Any, **kw: Any) -> Outcome:
    return ask(env, c, scripts={"synth": synth}, **kw)


@case("synthesizer", "timeout")
def _(env: Env, c: str) -> None:
    run_failed(synth_case(env, c, Script(text=ANSWER, token_rate=0.2)), "mid-answer", "deadline passed")


@case("synthesizer", "connection refused")
def _(env: Env, c: str) -> None:
    verbatim(ask(env, c, providers={"synth": "dead"}), "connection failed")


@case("synthesizer", "500")
def _(env: Env, c: str) -> None:
    out = synth_case(env, c, Script(text=ANSWER, failure=Failure.HTTP_500, fail_times=1))
    completed(out, degraded=False)
    assert out.content == ANSWER and out.asked("synth") == 2


@case("synthesizer", "429 with Retry-After")
def _(env: Env, c: str) -> None:
    out = synth_case(env, c, Script(text=ANSWER, failure=Failure.RATE_LIMIT, retry_after=0.1, fail_times=1))
    completed(out, degraded=False)
    assert out.content == ANSWER and out.asked("synth") == 2


@case("synthesizer", "402")
def _(env: Env, c: str) -> None:
    out = synth_case(env, c, Script(failure=Failure.HTTP, status_code=402))
    verbatim(out, "402")
    assert out.asked("synth") == 1


@case("synthesizer", "stream cut midway")
def _(env: Env, c: str) -> None:
    run_failed(synth_case(env, c, Script(text=ANSWER, failure=Failure.CUT, token_rate=50)), "mid-answer")


@case("synthesizer", "malformed SSE")
def _(env: Env, c: str) -> None:
    # Before any of the answer (a bad line drops the other events of its network read, so "after some
    # text" would depend on how the bytes were split).
    out = synth_case(env, c, Script(text=ANSWER, failure=Failure.MALFORMED_SSE, cut_after_tokens=0))
    verbatim(out, "malformed SSE data")


@case("synthesizer", "invalid or partial JSON")
def _(env: Env, c: str) -> None:
    out = synth_case(env, c, Script(text=ANSWER, failure=Failure.MALFORMED_CHUNK))
    run_failed(out, "mid-answer", "malformed response from upstream")


@case("synthesizer", "empty completion")
def _(env: Env, c: str) -> None:
    verbatim(synth_case(env, c, Script(failure=Failure.EMPTY)), "empty answer")


@case("synthesizer", "refusal")
def _(env: Env, c: str) -> None:
    verbatim(synth_case(env, c, Script(failure=Failure.REFUSAL)), "refused")


@case("synthesizer", "very slow first byte")
def _(env: Env, c: str) -> None:
    verbatim(synth_case(env, c, Script(latency=SLOW)), "deadline passed")


@case("synthesizer", "oversize answer")
def _(env: Env, c: str) -> None:
    out = synth_case(env, c, oversize())
    completed(out, degraded=False)
    assert len(out.content) == CAP and out.body["choices"][0]["finish_reason"] == "length"


# server-tool outer model: a plain model offered the fusion as a server tool


def ask_outer(env: Env, c: str, outer: Script, *, provider: str = "fake") -> httpx.Response:
    env.fake.script(f"{c}-outer", outer)
    tool = {"type": "panelfuse:fusion", "parameters": {"analysis_models": ["fake/m1", "fake/m2"], "model": "fake/j"}}
    body = {
        "model": f"{provider}/{c}-outer",
        "messages": [{"role": "user", "content": "Why blue?"}],
        "tools": [tool],
        "max_tokens": MAX_TOKENS,
    }
    return httpx.post(f"{env.gw.url}/v1/chat/completions", json=body, timeout=PROVIDER_TIMEOUT + SLACK_S)


def outer_error(r: httpx.Response, status: int, needle: str) -> None:
    assert r.status_code == status and needle in r.json()["error"]["message"], r.text


@case("server-tool outer model", "timeout")
def _(env: Env, c: str) -> None:
    outer_error(ask_outer(env, c, Script(latency=SLOW)), 504, "upstream timed out")


@case("server-tool outer model", "connection refused")
def _(env: Env, c: str) -> None:
    outer_error(ask_outer(env, c, Script(), provider="dead"), 502, "connection failed")


@case("server-tool outer model", "500")
def _(env: Env, c: str) -> None:
    r = ask_outer(env, c, Script(text="fine", failure=Failure.HTTP_500, fail_times=1))
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == "fine"
    assert len(env.fake.requests_for(f"{c}-outer")) == 2


@case("server-tool outer model", "429 with Retry-After")
def _(env: Env, c: str) -> None:
    r = ask_outer(env, c, Script(text="fine", failure=Failure.RATE_LIMIT, retry_after=0.1, fail_times=1))
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == "fine"
    assert len(env.fake.requests_for(f"{c}-outer")) == 2


@case("server-tool outer model", "invalid or partial JSON")
def _(env: Env, c: str) -> None:
    outer_error(ask_outer(env, c, Script(failure=Failure.MALFORMED_CHUNK)), 502, "malformed response from upstream")


@case("server-tool outer model", "402")
def _(env: Env, c: str) -> None:
    r = ask_outer(env, c, Script(failure=Failure.HTTP, status_code=402))
    error = r.json()["error"]
    assert r.status_code == 502 and error["metadata"]["status_code"] == 402, r.text  # the upstream's own status kept
    assert len(env.fake.requests_for(f"{c}-outer")) == 1  # never retried


@case("server-tool outer model", "stream cut midway")
def _(env: Env, c: str) -> None:
    outer_error(ask_outer(env, c, Script(text="one two three four", failure=Failure.CUT, cut_after_tokens=2)), 502, "")


@case("server-tool outer model", "malformed SSE")
def _(env: Env, c: str) -> None:
    outer_error(ask_outer(env, c, Script(text="one two", failure=Failure.MALFORMED_SSE)), 502, "malformed")


@case("server-tool outer model", "empty completion")
def _(env: Env, c: str) -> None:
    r = ask_outer(env, c, Script(failure=Failure.EMPTY))
    assert r.status_code == 200 and not r.json()["choices"][0]["message"]["content"]  # as the upstream answered


@case("server-tool outer model", "refusal")
def _(env: Env, c: str) -> None:
    r = ask_outer(env, c, Script(failure=Failure.REFUSAL))
    message = r.json()["choices"][0]["message"]
    assert r.status_code == 200 and (message.get("refusal") or message.get("content"))  # the refusal, passed on


@case("server-tool outer model", "very slow first byte")
def _(env: Env, c: str) -> None:
    outer_error(ask_outer(env, c, Script(text="late", latency=PROVIDER_TIMEOUT * 4)), 504, "upstream timed out")


@case("server-tool outer model", "oversize answer")
def _(env: Env, c: str) -> None:
    r = ask_outer(env, c, oversize())
    choice = r.json()["choices"][0]
    assert r.status_code == 200 and len(choice["message"]["content"]) == CAP and choice["finish_reason"] == "length"


# tool call (web_fetch) and search backend (web_search), through member A's tool loop


def tool_case(env: Env, c: str, tool: str, args: dict[str, str]) -> tuple[Outcome, str]:
    """Member A calls `tool` once, then answers; returns the outcome and the tool result it read."""

    def m1(body: dict[str, Any]) -> Script:
        if body.get("tool_choice") == "none":
            return Script(text=MEMBER_TEXTS["m1"])
        return Script(tool_calls=[{"name": tool, "arguments": args}])

    out = ask(env, c, scripts={"m1": m1}, plugin={"tools": [tool], "max_tool_calls": 1})
    completed(out, degraded=False)
    assert out.member("A")["content"] == MEMBER_TEXTS["m1"]
    last = env.fake.requests_for(f"{c}-m1")[-1].body
    (result,) = [m["content"] for m in last["messages"] if m["role"] == "tool"]
    return out, result


@case("tool call", "timeout")
def _(env: Env, c: str) -> None:
    _out, result = tool_case(env, c, "web_fetch", {"url": f"{env.site.url}/slow"})
    assert "timed out" in result


@case("tool call", "connection refused")
def _(env: Env, c: str) -> None:
    _out, result = tool_case(env, c, "web_fetch", {"url": f"http://127.0.0.1:{env.gw.dead.getsockname()[1]}/x"})
    assert "web_fetch" in result and PAGE_FACT not in result


@case("tool call", "500")
def _(env: Env, c: str) -> None:
    _out, result = tool_case(env, c, "web_fetch", {"url": f"{env.site.url}/broken"})
    assert "500" in result


@case("tool call", "oversize answer")
def _(env: Env, c: str) -> None:
    _out, result = tool_case(env, c, "web_fetch", {"url": f"{env.site.url}/big"})
    assert "deep" in result and len(result) < 100 * 16  # cut to result_tokens=100


@case("search backend", "timeout")
def _(env: Env, c: str) -> None:
    _out, result = tool_case(env, c, "web_search", {"query": "slow"})
    assert "timed out" in result


@case("search backend", "connection refused")
def _(env: Env, c: str) -> None:
    # The search backend is configured per gateway: a second gateway whose SearXNG address refuses
    # connections (bound, never listening).
    refusing = socket.socket()
    refusing.bind(("127.0.0.1", 0))
    nowhere = SimpleNamespace(url=f"http://127.0.0.1:{refusing.getsockname()[1]}")
    gw = MatrixGateway(env.fake, nowhere, f"sqlite+aiosqlite:///{tempfile.mkdtemp()}/runs.db").start()  # type: ignore
    try:
        _out, result = tool_case(Env(env.fake, env.site, gw), c, "web_search", {"query": "sky"})
    finally:
        gw.stop()
        refusing.close()
    assert "web_search" in result and "Sky" not in result


@case("search backend", "500")
def _(env: Env, c: str) -> None:
    _out, result = tool_case(env, c, "web_search", {"query": "broken"})
    assert "web_search" in result and "Sky" not in result


@case("search backend", "invalid or partial JSON")
def _(env: Env, c: str) -> None:
    _out, result = tool_case(env, c, "web_search", {"query": "garbled"})
    assert "web_search" in result and "Sky" not in result


# store


@case("store", "write error")
def _(env: Env, c: str) -> None:
    store = env.gw.state.store

    async def broken(*args: Any, **kwargs: Any) -> None:
        raise OSError("disk I/O error (injected)")

    store.finish_run = broken  # an instance attribute: the class's method is left alone
    try:
        out = ask(env, c, record=False)
    finally:
        del store.finish_run
    completed(out, degraded=False)
    assert out.content == ANSWER


# the proxy path (a plain model): the adapter's typed error reaches the client in OpenAI's shape


@case("proxy", "invalid or partial JSON")
def _(env: Env, c: str) -> None:
    env.fake.script(f"{c}-plain", Script(failure=Failure.MALFORMED_CHUNK))
    body = {"model": f"fake/{c}-plain", "messages": [{"role": "user", "content": "hi"}]}
    r = httpx.post(f"{env.gw.url}/v1/chat/completions", json=body, timeout=PROVIDER_TIMEOUT + SLACK_S)
    assert r.status_code == 502 and "malformed response from upstream" in r.json()["error"]["message"]


@case("proxy", "malformed SSE")
def _(env: Env, c: str) -> None:
    env.fake.script(f"{c}-plain", Script(text="one two three four five", failure=Failure.MALFORMED_CHUNK))
    body = {"model": f"fake/{c}-plain", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    r = httpx.post(f"{env.gw.url}/v1/chat/completions", json=body, timeout=PROVIDER_TIMEOUT + SLACK_S)
    frames = [json.loads(line[5:]) for line in r.text.splitlines() if line.startswith("data: {")]
    assert r.status_code == 200 and "[DONE]" not in r.text
    assert frames[-1]["choices"][0]["finish_reason"] == "error"
    assert "malformed response from upstream" in frames[-1]["error"]["message"]


ROWS = matrix_rows()


def test_the_doc_and_the_cases_agree():
    rows = [(stage, fault) for stage, fault, _ in ROWS]
    assert len(rows) == len(set(rows)), "a row appears twice in docs/reliability.md"
    assert set(rows) == set(CASES), {
        "rows without a case": set(rows) - set(CASES),
        "cases without a row": set(CASES) - set(rows),
    }
    assert {b for _, _, b in ROWS} <= VOCABULARY


VOCABULARY = {"retry", "fallback", "degrade", "repair", "verbatim", "fail", "cut", "tool-error", "pass-through", "log"}


@pytest.mark.parametrize(("stage", "fault", "behaviour"), ROWS, ids=[f"{s}|{f}" for s, f, _ in ROWS])
def test_fault_matrix(env, stage, fault, behaviour):
    run_case = CASES.get((stage, fault))
    assert run_case is not None, f"docs/reliability.md has a row with no case: {stage} | {fault}"
    slug = "".join(ch if ch.isalnum() else "-" for ch in f"{stage}-{fault}".lower())
    run_case(env, slug)
