"""Documented OpenRouter Fusion requests behave as OpenRouter documents (issue 13, item 2), over real
HTTP: a gateway on loopback over the fake upstream, driven by the official `openrouter` SDK (the plugin
and the server tool), the `openai` SDK and raw httpx. One section per documented behaviour."""

from __future__ import annotations

import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import openai
import pytest
from openrouter import OpenRouter

from conftest import fake_providers
from gateway_helpers import Gateway, gateway_config
from panelfuse.config import FetchConfig, SearchServiceConfig, ToolsConfig
from panelfuse.pipeline.prompts import ANSWER_MARKER
from panelfuse.pipeline.run import Fusion
from panelfuse.providers.resolve import FusionRoute, ProviderRoute, resolve_model
from panelfuse.server.app import create_app
from panelfuse.service.plugin import spec_from_request
from panelfuse.service.requests import ChatCompletionRequest, FusionPlugin
from panelfuse.testing import Failure, Script
from panelfuse.tools.fetch import Fetcher, FetchPolicy
from panelfuse.tools.search import SearxngBackend
from panelfuse.tools.toolbox import Toolbox
from pipeline_helpers import PRICES, analysis_for, labels_in, script_panel, spec

Q = [{"role": "user", "content": "Why is the sky blue?"}]
CALL_FUSION = Script(tool_calls=[{"name": "panelfuse_fusion", "arguments": {"question": "Why is the sky blue?"}}])
TWO = ["fake/m1", "fake/m2"]


def post(gateway: Any, body: dict[str, Any], **kw: Any) -> httpx.Response:
    kw.setdefault("timeout", 30)
    return httpx.post(f"{gateway.url}/v1/chat/completions", json=body, **kw)


def tool_results(body: dict[str, Any]) -> list[dict[str, Any]]:
    return [json.loads(m["content"]) for m in body["messages"] if m["role"] == "tool"]


def offered(body: dict[str, Any]) -> list[str]:
    return [t["function"]["name"] for t in body.get("tools") or []]


def fusion_tool(**parameters: Any) -> dict[str, Any]:
    return {"type": "openrouter:fusion", "parameters": parameters}


@pytest.fixture
def orsdk(gateway):
    """The official OpenRouter SDK pointed at the gateway."""
    with OpenRouter(api_key="unused", server_url=f"{gateway.url}/v1") as client:
        yield client


# ---- a loopback web site (search + page) and a gateway whose toolbox uses it ----------------------

PAGE = "<html><head><title>Rayleigh</title></head><body><p>Short wavelengths scatter more.</p></body></html>"


class Site:
    def __init__(self) -> None:
        self.searches: list[str] = []
        site = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path.startswith("/search"):
                    site.searches.append(self.path)
                    results = [
                        {"title": f"Result {i}", "url": f"{site.url}/page{i}", "content": f"snippet {i}"}
                        for i in range(1, 4)
                    ]
                    self._send("application/json", json.dumps({"results": results}))
                else:
                    self._send("text/html", PAGE)

            def _send(self, kind: str, text: str) -> None:
                data = text.encode()
                self.send_response(200)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Site:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


class ConfiguredGateway(Gateway):
    """The test gateway with its config adjusted (tools, presets)."""

    def __init__(self, fake: Any, db_url: str, **config: Any) -> None:
        import uvicorn

        from panelfuse.server.state import ServerSettings

        cfg = gateway_config(fake).model_copy(update=config)
        self.settings = ServerSettings(db_url=db_url, keepalive_s=0.2)
        self.app = create_app(self.settings, config=cfg)
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.server = uvicorn.Server(uvicorn.Config(self.app, log_level="warning", lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)


@pytest.fixture
def site():
    with Site() as s:
        yield s


@pytest.fixture
def web_gateway(fake, tmp_path, site):
    tools = ToolsConfig(
        search="searxng",
        searxng=SearchServiceConfig(url=site.url),
        fetch=FetchConfig(enabled=True, allow=["127.0.0.1"]),
        max_results=5,
    )
    gw = ConfiguredGateway(fake, f"sqlite+aiosqlite:///{tmp_path}/runs.db", tools=tools).start()
    yield gw
    gw.stop()


def searching_member(answer: str) -> Any:
    """A member that searches once, then answers."""

    def script(body: dict[str, Any]) -> Script:
        if any(m["role"] == "tool" for m in body["messages"]):
            return Script(text=answer)
        return Script(tool_calls=[{"name": "web_search", "arguments": {"query": "sky"}}])

    return script


# ---- 1. tools in OpenRouter's shape -----------------------------------------------------------------


def test_plugin_tools_in_openrouter_shape(fake, web_gateway, site):
    script_panel(fake, m1=searching_member("Blue scatters most."), m2=Script(text="Rayleigh."))
    with OpenRouter(api_key="unused", server_url=f"{web_gateway.url}/v1") as orc:
        r = orc.chat.send(
            model="openrouter/fusion",
            messages=Q,
            plugins=[
                {
                    "id": "fusion",
                    "analysis_models": TWO,
                    "model": "fake/judge",
                    "tools": [
                        {"type": "openrouter:web_search", "parameters": {"max_results": 2, "engine": "exa"}},
                        {"type": "openrouter:web_fetch", "parameters": {"max_content_tokens": 500}},
                    ],
                }
            ],
        )
    assert r.choices[0].message.content == "The sky is blue because air scatters short wavelengths."
    first = fake.requests_for("m1")[0].body
    assert offered(first) == ["web_search", "web_fetch"]
    # web_search's max_results is the toolbox's (3 results offered by the site, 2 kept); the rest is ignored
    result = next(m["content"] for m in fake.requests_for("m1")[1].body["messages"] if m["role"] == "tool")
    assert f"{site.url}/page1" in result and f"{site.url}/page2" in result and f"{site.url}/page3" not in result


def test_plugin_tools_mix_names_and_entries_and_empty_means_none(fake, web_gateway):
    script_panel(fake)
    r = post(
        web_gateway,
        {
            "model": "panelfuse/fusion",
            "messages": Q,
            "plugins": [
                {"id": "fusion", "analysis_models": TWO, "tools": ["web_fetch", {"type": "openrouter:datetime"}]}
            ],
        },
    )
    assert r.status_code == 200, r.text
    assert offered(fake.requests_for("m1")[0].body) == ["web_fetch"]  # an unknown tool type is ignored
    r = post(
        web_gateway,
        {
            "model": "panelfuse/fusion",
            "messages": Q,
            "plugins": [{"id": "fusion", "analysis_models": TWO, "tools": []}],
        },
    )
    assert r.status_code == 200 and offered(fake.requests_for("m1")[-1].body) == []


def test_server_tool_parameters_take_tools_in_openrouter_shape(fake, web_gateway):
    script_panel(fake)
    fake.script("outer", CALL_FUSION, Script(text="Answered."))
    with OpenRouter(api_key="unused", server_url=f"{web_gateway.url}/v1") as orc:
        r = orc.chat.send(
            model="fake/outer",
            messages=Q,
            tools=[
                {
                    "type": "openrouter:fusion",
                    "parameters": {
                        "analysis_models": TWO,
                        "model": "fake/judge",
                        "tools": [{"type": "openrouter:web_fetch", "parameters": {"max_uses": 2}}],
                    },
                }
            ],
        )
    assert r.choices[0].message.content == "Answered."
    assert offered(fake.requests_for("m1")[0].body) == ["web_fetch"]
    assert tool_results(fake.requests_for("outer")[1].body)[0]["status"] == "ok"


async def test_web_search_max_results_reaches_the_toolbox(fake):
    """The plugin's `openrouter:web_search` max_results, mapped by the service, bounds each search."""
    with Site() as site:
        plugin = FusionPlugin.model_validate(
            {"id": "fusion", "tools": [{"type": "openrouter:web_search", "parameters": {"max_results": 1}}]}
        )
        presets = {"p": {"members": ["fake/m1"], "judge": "fake/judge", "synthesizer": {"model": "fake/synth"}}}
        s = spec_from_request(ChatCompletionRequest(model="panelfuse/fusion", messages=Q), plugin, "p", "p", presets)
        assert s.panel_tools == ["web_search"] and s.search_max_results == 1
        toolbox = Toolbox(SearxngBackend(site.url), Fetcher(FetchPolicy(), allow=["127.0.0.1"]), max_results=5)
        script_panel(fake, m1=searching_member("Blue."))
        f = Fusion(s, providers=fake_providers(fake), prices=PRICES, toolbox=toolbox)
        await f.run("Why is the sky blue?")
        assert toolbox.max_results == 5  # the run used its own copy
    result = next(m["content"] for m in fake.requests_for("m1")[1].body["messages"] if m["role"] == "tool")
    assert result.count("URL:") == 1


# ---- 2. one successful panelist is enough -------------------------------------------------------------


def test_one_member_failing_of_two_still_answers(fake, client):
    script_panel(fake, m2=Script(failure=Failure.HTTP, status_code=500))
    r = client.chat.completions.create(
        model="panelfuse/fusion", messages=Q, extra_body={"plugins": [{"id": "fusion", "analysis_models": TWO}]}
    )
    assert r.choices[0].message.content == "The sky is blue because air scatters short wavelengths."
    fusion = r.model_extra["fusion"]
    assert fusion["degraded"] is True
    assert [f["model"] for f in fusion["failed_models"]] == ["fake/m2"]

    fake.script("outer", CALL_FUSION, Script(text="From one panelist."))
    r = client.chat.completions.create(
        model="fake/outer", messages=Q, tools=[fusion_tool(analysis_models=TWO, model="fake/judge")]
    )
    assert r.choices[0].message.content == "From one panelist."
    result = tool_results(fake.requests_for("outer")[1].body)[0]
    assert result["status"] == "ok"
    assert result["responses"] == [{"model": "fake/m1", "content": "Rayleigh scattering makes the sky blue."}]
    assert [f["model"] for f in result["failed_models"]] == ["fake/m2"]


def test_quorum_stays_an_option(fake, gateway):
    script_panel(fake, m2=Script(failure=Failure.HTTP, status_code=500))
    r = post(
        gateway,
        {
            "model": "panelfuse/fusion",
            "messages": Q,
            "plugins": [{"id": "fusion", "analysis_models": TWO, "quorum": 2}],
        },
    )
    assert r.status_code == 502 and "quorum is 2" in r.json()["error"]["message"]


# ---- 3. the plugin fills the server tool's parameters ---------------------------------------------------


def test_plugin_fills_the_server_tool_parameters(fake, orsdk):
    script_panel(fake)
    fake.script("outer", CALL_FUSION, Script(text="Answered."))
    r = orsdk.chat.send(
        model="fake/outer",
        messages=Q,
        plugins=[{"id": "fusion", "analysis_models": ["fake/m1", "fake/m2", "fake/m3"], "model": "fake/judge"}],
        tools=[{"type": "openrouter:fusion", "parameters": {"analysis_models": ["fake/m3"]}}],
    )
    assert r.choices[0].message.content == "Answered."
    # the tool's own analysis_models win; the plugin's judge fills the field the tool left unset
    assert fake.requests_for("m3") and not fake.requests_for("m1") and not fake.requests_for("m2")
    assert len(fake.requests_for("judge")) == 1
    assert tool_results(fake.requests_for("outer")[1].body)[0]["status"] == "ok"


# ---- 4. parameters.mode "fast" on the server tool ----------------------------------------------------------


def test_fast_mode_on_the_server_tool_is_the_first_member_alone(fake, client):
    script_panel(fake)
    fake.script("outer", CALL_FUSION, Script(text="Fast answer."))
    r = client.chat.completions.create(
        model="fake/outer", messages=Q, tools=[fusion_tool(analysis_models=TWO, model="fake/judge", mode="fast")]
    )
    assert r.choices[0].message.content == "Fast answer."
    assert not fake.requests_for("m2") and not fake.requests_for("judge") and not fake.requests_for("synth")
    result = tool_results(fake.requests_for("outer")[1].body)[0]
    assert result == {
        "status": "ok",
        "responses": [{"model": "fake/m1", "content": "Rayleigh scattering makes the sky blue."}],
        "failed_models": [],
    }
    assert r.model_extra["fusion"]["mode"] == "single"


# ---- 5. failure reasons ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("statuses", "reason"),
    [
        ((402, 402), "insufficient_credits"),
        ((429, 429), "rate_limited"),
        ((402, 429), "all_panels_failed"),  # a mix: neither reason alone would tell the caller what to do
        ((500, 402), "all_panels_failed"),
    ],
)
def test_failure_reasons_when_every_member_fails(fake, client, statuses, reason):
    m1, m2 = (Script(failure=Failure.HTTP, status_code=s, retry_after=0) for s in statuses)
    script_panel(fake, m1=m1, m2=m2)
    fake.script("outer", CALL_FUSION, Script(text="Answered without the panel."))
    r = client.chat.completions.create(
        model="fake/outer", messages=Q, tools=[fusion_tool(analysis_models=TWO, model="fake/judge")]
    )
    assert r.choices[0].message.content == "Answered without the panel."
    result = tool_results(fake.requests_for("outer")[1].body)[0]
    assert result["status"] == "error" and result["failure_reason"] == reason
    assert sorted(f["status_code"] for f in result["failed_models"]) == sorted(statuses)
    for model, status in zip(("m1", "m2"), statuses, strict=True):
        if status == 402:
            assert len(fake.requests_for(model)) == 1  # a 402 is never retried


def test_every_member_402_on_the_alias_names_the_reason(fake, gateway):
    script_panel(
        fake, m1=Script(failure=Failure.HTTP, status_code=402), m2=Script(failure=Failure.HTTP, status_code=402)
    )
    r = post(
        gateway, {"model": "panelfuse/fusion", "messages": Q, "plugins": [{"id": "fusion", "analysis_models": TWO}]}
    )
    assert r.status_code == 502
    assert r.json()["error"]["metadata"]["failure_reason"] == "insufficient_credits"
    assert len(fake.requests_for("m1")) == 1 and len(fake.requests_for("m2")) == 1


# ---- 6. aliases, the depth header, the judge of the server tool ------------------------------------------


def test_server_tool_on_a_fusion_alias_configures_its_fusion(fake, client):
    script_panel(fake)
    r = client.chat.completions.create(
        model="openrouter/fusion",
        messages=Q,
        tools=[fusion_tool(analysis_models=["fake/m2"])],
        tool_choice="required",  # OpenRouter's way to force fusion: the alias always fuses
    )
    assert r.choices[0].message.content == "The sky is blue because air scatters short wavelengths."
    assert fake.requests_for("m2") and not fake.requests_for("m1") and not fake.requests_for("m3")


@pytest.mark.parametrize("header", ["X-OpenRouter-Fusion-Depth", "X-Panelfuse-Fusion-Depth"])
def test_a_request_at_fusion_depth_starts_no_fusion(fake, gateway, header):
    script_panel(fake)
    fake.script("outer", Script(text="The outer model alone."))
    depth = {header: "1"}
    # the alias: its answer model, called directly (as OpenRouter's alias without its fusion tool)
    r = post(gateway, {"model": "openrouter/fusion", "messages": Q}, headers=depth)
    assert r.status_code == 200, r.text
    assert r.json()["model"] == "fake/synth"
    assert r.json()["choices"][0]["message"]["content"] == "The sky is blue because air scatters short wavelengths."
    # the server tool: the outer model runs without it, tool_choice that forced it dropped
    body = {"model": "fake/outer", "messages": Q, "tools": [fusion_tool(model="fake/judge")], "tool_choice": "required"}
    r = post(gateway, body, headers=depth)
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == "The outer model alone."
    sent = fake.requests_for("outer")[-1].body
    assert "tools" not in sent and "tool_choice" not in sent
    # the plugin on a plain model: ignored
    r = post(gateway, {"model": "fake/outer", "messages": Q, "plugins": [{"id": "fusion"}]}, headers=depth)
    assert r.status_code == 200
    assert not fake.requests_for("m1") and not fake.requests_for("judge")


def test_openrouter_fusion_preset_aliases(fake, tmp_path):
    fast = {"members": TWO, "judge": "fake/judge", "synthesizer": {"model": "fake/synth"}, "max_tokens": 50}
    presets = {**gateway_config(fake).presets, "fast": fast}
    gw = ConfiguredGateway(fake, f"sqlite+aiosqlite:///{tmp_path}/runs.db", presets=presets).start()
    try:
        script_panel(fake)
        for model in ("openrouter/fusion-flash", "openrouter/fusion-general-fast", "openrouter/fusion-fast"):
            r = post(gw, {"model": model, "messages": Q})
            assert r.status_code == 200, (model, r.text)
            assert r.json()["fusion"]["preset"] == "fast"
        assert not fake.requests_for("m3")
        r = post(gw, {"model": "openrouter/fusion:nitro", "messages": Q})
        assert r.status_code == 200 and r.json()["fusion"]["preset"] == "test"
    finally:
        gw.stop()


def test_openrouter_fusion_ids_resolve():
    providers, presets = ["openrouter", "fake"], ["quality", "budget", "fast", "test"]
    assert resolve_model("openrouter/fusion-flash", providers, "fake", presets) == FusionRoute("fast")
    assert resolve_model("openrouter/fusion-flash", providers, "fake") == FusionRoute("fast")
    assert resolve_model("openrouter/fusion-budget", providers, "fake", presets) == FusionRoute("budget")
    assert resolve_model("openrouter/fusion-flash:free", providers, "fake", presets) == FusionRoute("fast")
    assert resolve_model("panelfuse/fusion-flash", providers, "fake", presets) == FusionRoute("fast")
    # an openrouter/fusion-… id that names no preset is OpenRouter's business, proxied as before
    assert resolve_model("openrouter/fusion-pro", providers, "fake", presets) == ProviderRoute(
        "openrouter", "fusion-pro"
    )


@pytest.mark.parametrize("member", ["openrouter/fusion", "panelfuse/fusion", "openrouter/fusion-flash"])
def test_a_fusion_alias_as_a_member_is_a_400_up_front(fake, gateway, member):
    r = post(
        gateway,
        {
            "model": "panelfuse/fusion",
            "messages": Q,
            "plugins": [{"id": "fusion", "analysis_models": ["fake/m1", member]}],
        },
    )
    assert r.status_code == 400 and "fusion alias" in r.json()["error"]["message"]
    assert not fake.requests  # nothing was called


def test_server_tool_judge_defaults_to_the_outer_model(fake, client):
    script_panel(fake)

    def outer(body: dict[str, Any]) -> Script:
        if body.get("response_format"):  # the judge's analysis call
            return Script(text=json.dumps(analysis_for(labels_in(body))))
        if any(m["role"] == "tool" for m in body["messages"]):
            return Script(text="The outer model answers.")
        return CALL_FUSION

    fake.script("outer", outer)
    r = client.chat.completions.create(model="fake/outer", messages=Q, tools=[fusion_tool(analysis_models=TWO)])
    assert r.choices[0].message.content == "The outer model answers."
    assert not fake.requests_for("judge")
    assert len(fake.requests_for("outer")) == 3  # the call, the judge's analysis, the answer
    assert r.model_extra["fusion"]["judge"]["model"] == "fake/outer"


# ---- 7. finish_reason from the completion that wrote the answer ---------------------------------------------


@pytest.mark.parametrize(
    ("mode", "writer", "cut"),
    [
        ("synthesize", "synth", True),
        ("judge-writes", "judge", True),
        ("single", "m1", True),
        ("synthesize", "synth", False),
    ],
)
async def test_finish_reason_comes_from_the_answer(fake, mode, writer, cut):
    script_panel(fake)
    finish = "length" if cut else "stop"
    if writer == "judge":
        head = json.dumps(analysis_for(["A", "B", "C"]))
        fake.script("judge", Script(text=f"{head}\n{ANSWER_MARKER}\nA cut answ", finish_reason=finish))
    else:
        fake.script(writer, Script(text="A cut answ", finish_reason=finish))
    result = await Fusion(spec(mode=mode), providers=fake_providers(fake), prices=PRICES).run("q")
    assert result.finish_reason == finish


async def test_best_of_answers_finish_with_stop(fake):
    script_panel(fake, m1=Script(text="cut", finish_reason="length"), judge=Script(text='{"best": "A", "reason": "r"}'))
    result = await Fusion(spec(mode="best-of"), providers=fake_providers(fake), prices=PRICES).run("q")
    assert result.content == "cut" and result.finish_reason == "stop"


# ---- 8. the request's max_tokens, temperature, stop, seed: the answer's ---------------------------------


def test_request_settings_apply_to_the_answer_only(fake, client, gateway):
    script_panel(fake)
    client.chat.completions.create(
        model="panelfuse/fusion",
        messages=Q,
        max_tokens=33,
        temperature=0.3,
        stop=["END"],
        seed=7,
        extra_body={"plugins": [{"id": "fusion", "analysis_models": TWO, "reasoning": {"effort": "low"}}]},
    )
    synth = fake.requests_for("synth")[0].body
    assert (synth["max_tokens"], synth["temperature"], synth["stop"], synth["seed"]) == (33, 0.3, ["END"], 7)
    member, judge = fake.requests_for("m1")[0].body, fake.requests_for("judge")[0].body
    assert member["max_tokens"] == 100 and judge["max_tokens"] == 100  # the spec's per-call limit
    assert "stop" not in member and "seed" not in member and "temperature" not in member
    assert judge["temperature"] == 0 and "stop" not in judge and "seed" not in judge
    assert member["reasoning"] == judge["reasoning"] == {"effort": "low"}  # the judge gets it too
    # the plan's estimate uses the answer's limit for the synthesizer only
    est = httpx.post(
        f"{gateway.url}/v1/fusion/estimate",
        json={"model": "panelfuse/fusion", "messages": Q, "max_completion_tokens": 33},
    ).json()
    limits = {c["who"]: c["max_tokens"] for c in est["calls"]}
    assert limits == {"A": 100, "B": 100, "C": 100, "judge": 100, "synthesizer": 33}


def test_max_completion_tokens_of_the_plugin_is_per_inner_call(fake, client):
    script_panel(fake)
    client.chat.completions.create(
        model="panelfuse/fusion",
        messages=Q,
        extra_body={"plugins": [{"id": "fusion", "analysis_models": TWO, "max_completion_tokens": 64}]},
    )
    assert fake.requests_for("m1")[0].body["max_tokens"] == 64
    assert fake.requests_for("judge")[0].body["max_tokens"] == 64
    assert fake.requests_for("synth")[0].body["max_tokens"] == 64


# ---- 9. the server tool's usage, cost details and annotations -----------------------------------------------


def test_server_tool_response_carries_citations_costs_and_tool_counts(fake, web_gateway, site):
    script_panel(fake, m1=searching_member("Blue light scatters (see the sources)."), m2=Script(text="Rayleigh."))
    fake.script("outer", CALL_FUSION, Script(text=f"See {site.url}/page1 for more.", cost=0.001))
    with openai.OpenAI(base_url=f"{web_gateway.url}/v1", api_key="unused", max_retries=0) as c:
        r = c.chat.completions.create(
            model="fake/outer", messages=Q, tools=[fusion_tool(analysis_models=TWO, model="fake/judge")]
        )
    annotations = [a.model_dump() for a in r.choices[0].message.annotations or []]
    urls = [a["url_citation"]["url"] for a in annotations]
    assert f"{site.url}/page1" in urls and all(a["type"] == "url_citation" for a in annotations)
    cited = next(a["url_citation"] for a in annotations if a["url_citation"]["url"] == f"{site.url}/page1")
    assert r.choices[0].message.content[cited["start_index"] : cited["end_index"]] == f"{site.url}/page1"
    usage = r.usage.model_extra
    assert usage["server_tool_use_details"] == {
        "tool_calls_requested": 1,
        "tool_calls_executed": 1,
        "web_search_requests": 1,
    }
    details = usage["cost_details"]
    assert set(details["panel"]) == {"A", "B"} and details["outer"] > 0
    # streamed, the same citations arrive in a delta before the last chunk
    fake.script("outer", CALL_FUSION, Script(text=f"See {site.url}/page1 for more.", cost=0.001))
    with openai.OpenAI(base_url=f"{web_gateway.url}/v1", api_key="unused", max_retries=0) as c:
        chunks = list(
            c.chat.completions.create(
                model="fake/outer",
                messages=Q,
                tools=[fusion_tool(analysis_models=TWO, model="fake/judge")],
                stream=True,
            )
        )
    streamed = [a for ch in chunks for a in (ch.choices[0].delta.model_extra or {}).get("annotations") or []]
    assert f"{site.url}/page1" in [a["url_citation"]["url"] for a in streamed]
    assert usage["cost"] == pytest.approx(
        details["outer"] + sum(v or 0 for v in details["panel"].values()) + (details["analysis"] or 0)
    )


# ---- 10. tool_choice "required" forces the fusion once --------------------------------------------------------


def test_tool_choice_required_forces_the_fusion_once(fake, client):
    script_panel(fake)
    fake.script("outer", CALL_FUSION, Script(text="Answered after the panel."))
    r = client.chat.completions.create(
        model="fake/outer",
        messages=Q,
        tools=[fusion_tool(analysis_models=TWO, model="fake/judge")],
        tool_choice="required",
    )
    assert r.choices[0].message.content == "Answered after the panel."
    first, second = fake.requests_for("outer")
    assert first.body["tool_choice"] == "required" and second.body["tool_choice"] == "auto"
    assert r.usage.model_extra["server_tool_use_details"]["tool_calls_executed"] == 1


def test_errors_are_typed_errors_in_the_openrouter_sdk(gateway):
    # OpenRouter's integer code with OpenAI's type and param beside it: the official SDK raises its
    # typed error (it needs `error.code` to be an integer), with our reason in the metadata.
    from openrouter import OpenRouter, errors

    with OpenRouter(api_key="unused", server_url=f"{gateway.url}/api/v1") as orc:
        with pytest.raises(errors.NotFoundResponseError) as info:
            orc.chat.send(model="panelfuse/fusion-nope", messages=Q)
    err = info.value.data.error
    assert err.code == 404 and err.metadata["error_code"] == "model_not_found"
    with pytest.raises(openai.NotFoundError) as raised:
        openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="unused", max_retries=0).chat.completions.create(
            model="panelfuse/fusion-nope", messages=Q
        )
    assert raised.value.body["type"] == "not_found_error" and raised.value.body["param"] == "model"


def test_a_fusion_completion_names_its_generation(fake, gateway):
    script_panel(fake)
    r = httpx.post(
        f"{gateway.url}/api/v1/chat/completions", json={"model": "panelfuse/fusion", "messages": Q}, timeout=30
    )
    assert r.status_code == 200
    gen_id = r.headers["x-generation-id"]
    assert gen_id == r.json()["id"]
    stats = httpx.get(f"{gateway.url}/api/v1/generation", params={"id": gen_id}).json()["data"]
    assert stats["total_cost"] == pytest.approx(r.json()["usage"]["cost"])
