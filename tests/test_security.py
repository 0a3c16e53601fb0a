"""Security over real HTTP (docs/security.md): passthrough keys, the Host check, body limits, upstream
error scrubbing, local model files, no internals in errors, run scoping, CORS."""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway_helpers import Gateway, gateway_config
from panelfuse.config import Config, ProviderConfig
from panelfuse.providers.errors import REDACTED, AuthError, scrub
from panelfuse.providers.local import LocalProvider
from panelfuse.providers.registry import Providers
from panelfuse.server.access import host_allowed
from panelfuse.server.app import create_app
from panelfuse.service.caller import ModelPolicy, Principal
from panelfuse.service.errors import ServiceError
from panelfuse.store import RunStore
from panelfuse.testing import Failure, FakeUpstream, Script
from pipeline_helpers import script_panel

OPERATOR_KEY = "upstream-key"  # gateway_helpers' key for the `fake` provider
OTHER_KEY = "other-operator-key-0042"
Q = [{"role": "user", "content": "q"}]


@pytest.fixture
def db(tmp_path):
    return f"sqlite+aiosqlite:///{tmp_path}/runs.db"


def two_provider_config(fake: FakeUpstream) -> Config:
    """The test gateway's config plus a second provider (`other`) with its own operator key."""
    cfg = gateway_config(fake)
    cfg.providers["other"] = ProviderConfig(kind="openai_compat", base_url=fake.openai_base_url, api_key=OTHER_KEY)
    cfg.presets["mixed"] = {**cfg.presets["test"], "members": ["fake/m1", "other/m2", "fake/m3"]}
    return cfg


class ConfiguredGateway(Gateway):
    """gateway_helpers.Gateway with a config of the test's choosing."""

    def __init__(self, fake: FakeUpstream, db_url: str, config: Config, **settings: Any) -> None:
        super().__init__(fake, db_url, **settings)
        self.app = create_app(self.settings, config=config)
        self.server.config.app = self.app


@pytest.fixture
def started() -> Iterator[list[Gateway]]:
    gateways: list[Gateway] = []
    yield gateways
    for gw in gateways:
        gw.stop()


def start(started: list[Gateway], gw: Gateway) -> Gateway:
    started.append(gw.start())
    return gw


async def _create_key(db: str, name: str, **kw: Any) -> Any:
    store = await RunStore.open(db)
    try:
        return await store.keys.create(name, **kw)
    finally:
        await store.close()


def post(gw: Gateway, body: dict[str, Any], token: str | None = None, **kw: Any) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    headers.update(kw.pop("headers", {}))
    return httpx.post(f"{gw.url}/v1/chat/completions", json=body, headers=headers, timeout=30, **kw)


def error_code(r: httpx.Response) -> str:
    return r.json()["error"]["metadata"]["error_code"]


def authorizations(fake: FakeUpstream) -> list[str]:
    return [r.headers.get("authorization", "") for r in fake.requests]


# --- 1. passthrough keys ----------------------------------------------------------------------------


@pytest.mark.parametrize("auth", [True, False])
def test_passthrough_token_never_spends_the_operators_keys(fake, db, started, auth):
    if auth:
        asyncio.run(_create_key(db, "team"))
    gw = start(started, ConfiguredGateway(fake, db, two_provider_config(fake), passthrough_keys=True, auth=auth))
    script_panel(fake)
    fake.script("plain", Script(text="ok"))
    token = "caller-own-key-123456"  # no known prefix: the default provider's (`fake`)

    # The caller's own provider: every call of a five-call fusion carries the caller's token.
    r = post(gw, {"model": "panelfuse/fusion", "messages": Q}, token)
    assert r.status_code == 200, r.text
    assert authorizations(fake) and set(authorizations(fake)) == {f"Bearer {token}"}

    # Another provider, directly or as a panel member: refused up front, naming it, nothing sent.
    before = len(fake.requests)
    for body in (
        {"model": "other/plain", "messages": Q},
        {"model": "panelfuse/fusion-mixed", "messages": Q},
        {"model": "panelfuse/fusion", "messages": Q, "plugins": [{"id": "fusion", "synthesizer": "other/synth"}]},
    ):
        r = post(gw, body, token)
        assert r.status_code == 403, (body, r.text)
        assert error_code(r) == "passthrough_provider_not_allowed" and "other" in r.json()["error"]["message"]
    assert len(fake.requests) == before
    assert not any(OTHER_KEY in a or OPERATOR_KEY in a for a in authorizations(fake))


def test_passthrough_is_refused_with_auth_on_unless_the_operator_allowed_it(fake, db, started):
    asyncio.run(_create_key(db, "team"))
    gw = start(started, Gateway(fake, db))
    fake.script("plain", Script(text="ok"))
    r = post(gw, {"model": "fake/plain", "messages": Q}, "caller-own-key-123456")
    assert r.status_code == 401 and error_code(r) == "invalid_api_key"
    assert not fake.requests


def test_passthrough_providers_have_no_operator_key_even_if_asked_directly(fake):
    """Defence in depth: the passthrough caller's providers hold no operator key for any provider."""
    from panelfuse.service.caller import providers_for

    providers = Providers(two_provider_config(fake), env={"OPENROUTER_API_KEY": "sk-or-operator-0001"})
    caller = Principal(passthrough_id="pt_x", upstream_keys={"fake": "caller-key-000001"})
    mine = providers_for(caller, providers)
    assert mine.configs["fake"].resolved_api_key(mine.env) == "caller-key-000001"
    for name in ("other", "openrouter"):
        assert not mine.configs[name].resolved_api_key(mine.env)


def test_check_models_refuses_unpaid_providers_for_passthrough_only():
    caller = Principal(passthrough_id="pt_x", upstream_keys={"fake": "k"})
    caller.check_models(["fake/a", "fake/b"])
    with pytest.raises(ServiceError) as caught:
        caller.check_models(["fake/a", "openrouter/b", "local/smollm2"])
    assert caught.value.status == 403 and "local, openrouter" in caught.value.message
    Principal().check_models(["openrouter/b", "anything/else"])  # the operator's own in-process calls


# --- 2. Host header check (DNS rebinding) -------------------------------------------------------------


def raw_get(gw: Gateway, path: str, host: str, token: str | None = None) -> tuple[int, bytes]:
    """A GET with exactly this Host header (httpx would also send the URL's)."""
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    with socket.create_connection(("127.0.0.1", gw.port), timeout=10) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n{auth}Connection: close\r\n\r\n".encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


@pytest.mark.parametrize(
    ("host", "allowed"),
    [
        ("localhost", True),
        ("LOCALHOST:8000", True),
        ("127.0.0.1:9", True),
        ("127.8.9.10", True),
        ("[::1]:8000", True),
        ("[::1]", True),
        ("evil.example", False),
        ("evil.example:8000", False),
        ("localhost.evil.example", False),
        ("127.0.0.1.nip.io", False),
        ("10.0.0.5", False),
        ("", False),
        ("myhost.lan:80", True),  # in the allow-list below
    ],
)
def test_host_allowed(host, allowed):
    assert host_allowed(host, frozenset({"myhost.lan"})) is allowed


def test_a_rebound_host_is_refused_while_auth_is_off(fake, db, started):
    gw = start(started, Gateway(fake, db, allowed_hosts="panel.lan, other.lan"))
    status, body = raw_get(gw, "/v1/fusion/runs", "attacker.example")
    assert status == 403
    assert b'"host_not_allowed"' in body and b'"permission_error"' in body
    status, _ = raw_get(gw, "/api/v1/fusion/runs", f"attacker.example:{gw.port}")
    assert status == 403
    for host in (f"localhost:{gw.port}", f"127.0.0.1:{gw.port}", f"[::1]:{gw.port}", "panel.lan", "OTHER.LAN:1"):
        assert raw_get(gw, "/v1/fusion/runs", host)[0] == 200, host


def test_any_host_is_accepted_when_auth_is_on(fake, db, started):
    key = asyncio.run(_create_key(db, "team"))
    gw = start(started, Gateway(fake, db))
    assert raw_get(gw, "/v1/fusion/runs", "gateway.example.com", key.secret)[0] == 200
    assert raw_get(gw, "/v1/fusion/runs", "gateway.example.com")[0] == 401


# --- 3. chunked bodies over the limit ----------------------------------------------------------------


def test_a_chunked_body_over_the_limit_is_413_and_stores_nothing(fake, db, started):
    gw = start(started, Gateway(fake, db))
    script_panel(fake)
    limit = gw.settings.max_body_bytes
    head = b'{"model": "panelfuse/fusion", "messages": [{"role": "user", "content": "'

    def chunks() -> Iterator[bytes]:
        yield head
        sent = len(head)
        while sent <= limit + 1024 * 1024:
            yield b"a" * 65536
            sent += 65536
        yield b'"}]}'

    r = httpx.post(
        f"{gw.url}/v1/chat/completions",
        content=chunks(),
        headers={"Content-Type": "application/json"},
        timeout=60,
    )
    assert r.status_code == 413
    assert error_code(r) == "body_too_large" and r.json()["error"]["type"] == "invalid_request_error"
    assert not fake.requests
    assert httpx.get(f"{gw.url}/v1/fusion/runs").json()["data"] == []


# --- 4. upstream error text scrubbed ------------------------------------------------------------------


def echoing(key: str) -> Script:
    message = f"Incorrect API key provided: {key}. Header was 'Authorization: Bearer {key}'; try sk-or-v1-0123456789ab"
    return Script(failure=Failure.HTTP, status_code=401, error_message=message)


def test_an_upstream_error_echoing_the_key_is_scrubbed_everywhere(fake, db, started, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    gw = start(started, Gateway(fake, db))
    # A proxied call: the error comes back to the caller.
    fake.script("plain", echoing(OPERATOR_KEY))
    r = post(gw, {"model": "fake/plain", "messages": Q})
    assert r.status_code == 401 and REDACTED in r.text
    # A fusion: a failed member's error goes into the result and the stored run.
    script_panel(fake, m1=echoing(OPERATOR_KEY))
    r = post(gw, {"model": "panelfuse/fusion", "messages": Q})
    assert r.status_code == 200
    run_id = r.json()["fusion"]["run_id"]
    stored = httpx.get(f"{gw.url}/v1/fusion/runs/{run_id}")
    events = httpx.get(f"{gw.url}/v1/fusion/runs/{run_id}/events", timeout=10)
    assert REDACTED in stored.text
    gw.stop()
    started.clear()
    database = b"".join(p.read_bytes() for p in tmp_path.glob("runs.db*"))
    for text in (r.text, stored.text, events.text, caplog.text, database.decode("latin-1")):
        assert OPERATOR_KEY not in text
        assert "sk-or-v1-0123456789ab" not in text


@given(st.text(max_size=200), st.sampled_from(["sk-", "sk-or-v1-", "sk-ant-api03-", "pf-", "Bearer "]))
def test_scrub_removes_key_shaped_text_and_caps_length(noise, prefix):
    secret = prefix + "AbCdEf0123456789"
    out = scrub(f"{noise} {secret} {noise}")
    assert secret not in out and "AbCdEf0123456789" not in out
    assert len(scrub(noise * 50)) <= 1001


def test_a_provider_error_never_carries_a_registered_key():
    from panelfuse.providers.errors import register_secret

    register_secret("a-configured-key-777")
    err = AuthError("denied for a-configured-key-777", status_code=401, provider="x", model="m")
    assert "a-configured-key-777" not in str(err) and "a-configured-key-777" not in err.message


# --- 5. local model files -----------------------------------------------------------------------------


@pytest.fixture
def no_local_files(monkeypatch) -> list[str]:
    """Records any attempt to find or load a local model file (there must be none)."""
    touched: list[str] = []

    def model_path(self: LocalProvider, model: str) -> Any:
        touched.append(model)
        raise AssertionError("a request reached the filesystem")

    monkeypatch.setattr(LocalProvider, "model_path", model_path)
    return touched


@pytest.mark.parametrize(
    "model",
    [
        "local//etc/hosts.gguf",
        "local/../../secret.gguf",
        "local/~/models/x.gguf",
        "local/EXISTING",  # a real .gguf file on the server
        "local/missing.gguf",
        "local/C:\\models\\x.gguf",
    ],
)
def test_a_request_cannot_name_a_local_model_file(fake, db, started, tmp_path, no_local_files, model):
    real = tmp_path / "real.gguf"
    real.write_bytes(b"GGUF")
    model = model.replace("EXISTING", str(real))
    cfg = gateway_config(fake)
    cfg.providers["local"] = ProviderConfig(kind="local", models={"mine": str(real)})
    gw = start(started, ConfiguredGateway(fake, db, cfg))
    plugin = {"id": "fusion", "analysis_models": [model, "fake/m2"]}
    for body in ({"model": model, "messages": Q}, {"model": "panelfuse/fusion", "messages": Q, "plugins": [plugin]}):
        r = post(gw, body)
        assert r.status_code == 400, r.text
        assert error_code(r) == "model_not_found"
        assert "exist" not in r.json()["error"]["message"] and "not found" not in r.json()["error"]["message"]
    assert no_local_files == [] and not fake.requests
    assert httpx.get(f"{gw.url}/v1/fusion/runs").json()["data"] == []


def test_the_local_policy_allows_configured_names_and_the_bundled_model_only(tmp_path):
    cfg = Config(providers={"local": ProviderConfig(kind="local", models={"mine": str(tmp_path / "m.gguf")})})
    policy = ModelPolicy.of(Providers(cfg, env={}))
    assert policy.refused(["local/mine", "local/smollm2", "openrouter/x/y.gguf"]) == []
    assert policy.refused([f"local/{tmp_path}/m.gguf", "local/other"]) == [f"local/{tmp_path}/m.gguf", "local/other"]


@given(st.text(min_size=1, max_size=80).filter(lambda s: s not in ("mine", "smollm2")))
def test_no_other_local_id_is_allowed(name):
    policy = ModelPolicy(frozenset({"local"}), frozenset({"local/mine", "local/smollm2"}))
    assert policy.refused([f"local/{name}"]) == [f"local/{name}"]


# --- 6. no internals ----------------------------------------------------------------------------------


def test_runs_do_not_show_the_servers_pid_or_host(fake, db, started):
    gw = start(started, Gateway(fake, db))
    script_panel(fake)
    run_id = post(gw, {"model": "panelfuse/fusion", "messages": Q}).json()["fusion"]["run_id"]
    for body in (httpx.get(f"{gw.url}/v1/fusion/runs/{run_id}").json(), httpx.get(f"{gw.url}/v1/fusion/runs").json()):
        text = str(body)
        assert "owner_pid" not in text and "'host'" not in text


def test_an_unexpected_error_shows_no_traceback_or_server_path(fake, db, started, monkeypatch):
    import os

    from panelfuse.server import runs_api

    gw = start(started, Gateway(fake, db))
    script_panel(fake)
    run_id = post(gw, {"model": "panelfuse/fusion", "messages": Q}).json()["fusion"]["run_id"]

    def broken(*_: Any, **__: Any) -> Any:
        raise RuntimeError(f"boom in {__file__} at {os.getcwd()}")

    monkeypatch.setattr(runs_api, "_run_or_404", broken)
    r = httpx.get(f"{gw.url}/v1/fusion/runs/{run_id}", timeout=10)
    assert r.status_code == 500 and r.json()["error"]["metadata"]["error_code"] == "internal_error"
    assert "Traceback" not in r.text and __file__ not in r.text and os.getcwd() not in r.text
    assert "boom" not in r.text


# --- docs/security.md: run scoping on every endpoint, CORS ----------------------------------------------


@pytest.fixture
def two_keys(fake, db, started):
    a = asyncio.run(_create_key(db, "team-a"))
    b = asyncio.run(_create_key(db, "team-b"))
    gw = start(started, Gateway(fake, db))
    script_panel(fake)
    return gw, a.secret, b.secret


def _endpoints(run_id: str, generation_id: str) -> list[tuple[str, str, dict[str, Any] | None]]:
    return [
        ("GET", f"/v1/fusion/runs/{run_id}", None),
        ("GET", f"/v1/fusion/runs/{run_id}/events", None),
        ("POST", f"/v1/fusion/runs/{run_id}/feedback", {"score": 1}),
        ("POST", f"/v1/fusion/runs/{run_id}/resynthesize", {}),
        ("GET", f"/v1/generation?id={generation_id}", None),
        ("DELETE", f"/v1/fusion/runs/{run_id}", None),  # last: it removes the run
    ]


def test_a_key_cannot_reach_another_keys_run_on_any_endpoint(fake, two_keys):
    gw, a, b = two_keys
    r = post(gw, {"model": "panelfuse/fusion", "messages": Q}, b)
    run_id, generation_id = r.json()["fusion"]["run_id"], r.json()["id"]
    listed = httpx.get(f"{gw.url}/v1/fusion/runs", headers={"Authorization": f"Bearer {a}"})
    assert run_id not in listed.text
    for method, path, body in _endpoints(run_id, generation_id):
        r = httpx.request(method, f"{gw.url}{path}", json=body, headers={"Authorization": f"Bearer {a}"}, timeout=10)
        assert r.status_code == 404, (method, path, r.status_code, r.text)
    owner = httpx.get(f"{gw.url}/v1/fusion/runs/{run_id}", headers={"Authorization": f"Bearer {b}"})
    assert owner.status_code == 200


def test_cors_is_closed_by_default(gateway):
    r = httpx.options(
        f"{gateway.url}/v1/chat/completions",
        headers={
            "Origin": "https://attacker.example",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type",
        },
    )
    assert "access-control-allow-origin" not in r.headers
    r = httpx.get(f"{gateway.url}/v1/fusion/runs", headers={"Origin": "https://attacker.example"})
    assert "access-control-allow-origin" not in r.headers


# --- 7. a request cannot make the server call a host outside the configuration -----------------------


class Listener:
    """A socket that counts the connections it is offered."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self.stopping = False
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while not self.stopping:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.connections += 1
            conn.close()

    def close(self) -> None:
        self.stopping = True
        self.thread.join(timeout=5)
        self.sock.close()


def test_a_model_id_cannot_reach_a_host_outside_the_configuration(fake, db, started):
    listener = Listener()
    try:
        gw = start(started, Gateway(fake, db))
        fake.script("plain", Script(text="ok"))
        url = f"http://127.0.0.1:{listener.port}"
        for body in (
            {"model": f"{url}/x", "messages": Q},
            {"model": f"evil/{url}/v1", "messages": Q},
            {"model": "fake/plain", "messages": Q, "provider": {"order": [url, "evil"], "allow_fallbacks": True}},
            {"model": "panelfuse/fusion", "messages": Q, "plugins": [{"id": "fusion", "synthesizer": f"{url}/s"}]},
        ):
            post(gw, body)
        assert listener.connections == 0
        # Whatever a request names goes to the configured base URL (the fake upstream) or nowhere.
        assert all(r.path.startswith("/v1/") for r in fake.requests)
    finally:
        listener.close()


async def test_a_passthrough_caller_never_gets_the_operators_search_key(fake, db):
    """The gateway builds its toolbox once, from the operator's environment; a caller passing their
    own upstream key plans with a toolbox from their providers' (empty) environment instead."""
    from panelfuse.config import SearchServiceConfig, ToolsConfig
    from panelfuse.server.state import GatewayState, ServerSettings
    from panelfuse.service.fusion import FusionService
    from panelfuse.spec import spec_from_preset

    cfg = gateway_config(fake)
    cfg.tools = ToolsConfig(search="brave", brave=SearchServiceConfig(api_key_env="BRAVE_KEY"))
    providers = Providers(cfg, env={"BRAVE_KEY": "operator-brave-key-0001"})
    store = await RunStore.open(db)
    try:
        service = FusionService(GatewayState.build(cfg, store, ServerSettings(db_url=db), providers))
        spec = spec_from_preset("test", cfg.presets)
        operator = service.plan(Principal(), spec, Q)
        caller = Principal(passthrough_id="pt_x", upstream_keys={"fake": "caller-key-000001"})
        passthrough = service.plan(caller, spec, Q)
        assert operator.fusion.toolbox.can_search()  # the operator's runs search with the operator's key
        assert not passthrough.fusion.toolbox.can_search()
        assert passthrough.fusion.toolbox is not operator.fusion.toolbox
    finally:
        await store.close()
