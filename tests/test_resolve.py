"""Model-id resolution (providers/resolve.py's table): one test per row of the table, and the registry's use."""

from __future__ import annotations

import pytest

from panelfuse.config import Config, ProviderConfig
from panelfuse.providers.anthropic import AnthropicProvider
from panelfuse.providers.errors import NotFoundError
from panelfuse.providers.local import LocalProvider
from panelfuse.providers.openai_compat import OpenAICompatProvider
from panelfuse.providers.registry import Providers
from panelfuse.providers.resolve import (
    FusionRoute,
    ProviderRoute,
    UnknownModelError,
    canonical_preset,
    resolve_model,
)

CONFIGURED = ["local", "openrouter", "anthropic", "openai", "ollama", "mybox"]
PRESETS = ["quality", "budget", "fast", "local"]


def route(model: str, providers=CONFIGURED, default: str = "openrouter", presets=None):
    return resolve_model(model, providers, default, presets)


# ---- row 1: fusion aliases -----------------------------------------------------------------------


@pytest.mark.parametrize("alias", ["panelfuse/fusion", "openrouter/fusion", "  panelfuse/fusion  "])
def test_plain_fusion_aliases_have_no_preset(alias: str) -> None:
    assert route(alias) == FusionRoute(preset=None)
    assert route(alias, presets=PRESETS) == FusionRoute(preset=None)


def test_openrouter_fusion_is_fusion_even_though_openrouter_is_a_provider() -> None:
    assert "openrouter" in CONFIGURED
    assert isinstance(route("openrouter/fusion"), FusionRoute)
    assert route("openrouter/fusion-x") == ProviderRoute("openrouter", "fusion-x")  # only the exact alias


@pytest.mark.parametrize("preset", ["quality", "budget", "fast", "local"])
def test_fusion_with_preset(preset: str) -> None:
    assert route(f"panelfuse/fusion-{preset}", presets=PRESETS) == FusionRoute(preset=preset)


@pytest.mark.parametrize(
    ("synonym", "preset"),
    [("general-budget", "budget"), ("general-high", "quality"), ("general-fast", "fast")],
)
def test_openrouter_preset_synonyms(synonym: str, preset: str) -> None:
    assert route(f"panelfuse/fusion-{synonym}", presets=PRESETS) == FusionRoute(preset=preset)
    assert canonical_preset(synonym) == preset
    assert canonical_preset("mine") == "mine"


def test_unknown_preset_with_known_list_is_unknown_model() -> None:
    with pytest.raises(UnknownModelError, match="nosuch"):
        route("panelfuse/fusion-nosuch", presets=PRESETS)
    assert issubclass(UnknownModelError, LookupError)


def test_any_preset_accepted_without_a_preset_list() -> None:
    assert route("panelfuse/fusion-custom") == FusionRoute(preset="custom")


def test_user_preset_in_list() -> None:
    assert route("panelfuse/fusion-team", presets=[*PRESETS, "team"]) == FusionRoute(preset="team")


# ---- row 2: <provider>/<rest> with a configured provider ------------------------------------------


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        ("local/smollm2", ("local", "smollm2")),
        ("openrouter/openai/gpt-5.5", ("openrouter", "openai/gpt-5.5")),
        ("anthropic/claude-sonnet-4-5", ("anthropic", "claude-sonnet-4-5")),
        ("openai/gpt-5.5", ("openai", "gpt-5.5")),
        ("ollama/llama3.2:3b", ("ollama", "llama3.2:3b")),
        ("mybox/qwen/qwen3-8b", ("mybox", "qwen/qwen3-8b")),
        ("local//models/tiny.gguf", ("local", "/models/tiny.gguf")),
    ],
)
def test_configured_provider_prefix(model: str, expected: tuple[str, str]) -> None:
    r = route(model)
    assert isinstance(r, ProviderRoute)
    assert (r.provider, r.model) == expected
    assert r.qualified == f"{expected[0]}/{expected[1]}"


def test_openai_prefix_only_when_openai_is_configured() -> None:
    with_openai = route("openai/gpt-5.5", providers=["local", "openrouter", "openai"])
    assert with_openai == ProviderRoute("openai", "gpt-5.5")
    # Without an openai provider the id is OpenRouter's own `openai/gpt-5.5`.
    without = route("openai/gpt-5.5", providers=["local", "openrouter"])
    assert without == ProviderRoute("openrouter", "openai/gpt-5.5")


def test_provider_name_without_rest_goes_to_default() -> None:
    assert route("local/") == ProviderRoute("openrouter", "local/")
    assert route("local") == ProviderRoute("openrouter", "local")


# ---- row 3: anything else ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "model", ["google/gemini-3-flash", "~anthropic/claude-opus-latest", "gpt-4o", "meta-llama/llama-4:free"]
)
def test_anything_else_goes_to_default_unchanged(model: str) -> None:
    assert route(model) == ProviderRoute("openrouter", model)
    assert route(model, default="mybox") == ProviderRoute("mybox", model)


def test_empty_model_id_is_an_error() -> None:
    with pytest.raises(ValueError):
        route("   ")


# ---- through the registry ------------------------------------------------------------------------


def test_providers_route_and_for_model() -> None:
    cfg = Config(
        default_provider="openrouter",
        providers={"mybox": ProviderConfig(kind="openai_compat", base_url="http://mybox/v1")},
    )
    providers = Providers(cfg, env={"OPENROUTER_API_KEY": "sk-or"})
    assert set(providers.names) == {"local", "openrouter", "mybox"}

    assert providers.route("panelfuse/fusion-budget", PRESETS) == FusionRoute("budget")
    with pytest.raises(UnknownModelError):
        providers.route("panelfuse/fusion-nope", PRESETS)

    p, r = providers.for_model("mybox/qwen3")
    assert isinstance(p, OpenAICompatProvider) and p.base_url == "http://mybox/v1" and r.model == "qwen3"
    assert providers.get("mybox") is p  # built once, kept

    p, r = providers.for_model("openai/gpt-5.5")  # openai not configured: OpenRouter's id
    assert p.name == "openrouter" and r.model == "openai/gpt-5.5" and p.api_key == "sk-or"

    p, r = providers.for_model("local/smollm2")
    assert isinstance(p, LocalProvider) and r == ProviderRoute("local", "smollm2")

    with pytest.raises(NotFoundError, match="fusion alias"):
        providers.for_model("panelfuse/fusion")


def test_registry_enables_openai_and_anthropic_by_key() -> None:
    providers = Providers(Config(), env={"OPENAI_API_KEY": "sk-oa", "ANTHROPIC_API_KEY": "sk-ant"})
    p, r = providers.for_model("openai/gpt-5.5")
    assert p.name == "openai" and r.model == "gpt-5.5" and p.api_key == "sk-oa"
    p, r = providers.for_model("anthropic/claude-x")
    assert isinstance(p, AnthropicProvider) and r.model == "claude-x" and p.api_key == "sk-ant"
    assert providers.has_key("openai") and not providers.has_key("openrouter")


def test_registry_default_provider_and_unknown_provider() -> None:
    cfg = Config(
        default_provider="mybox", providers={"mybox": ProviderConfig(kind="openai_compat", base_url="http://mybox/v1")}
    )
    providers = Providers(cfg, env={})
    p, r = providers.for_model("google/gemini-3-flash")
    assert p.name == "mybox" and r.model == "google/gemini-3-flash"
    with pytest.raises(NotFoundError, match="nosuch"):
        providers.get("nosuch")


def test_registry_provider_without_base_url_is_not_found() -> None:
    cfg = Config(providers={"broken": ProviderConfig(kind="openai_compat")})
    with pytest.raises(NotFoundError, match="base_url"):
        Providers(cfg, env={}).for_model("broken/x")


def test_registry_uses_config_timeout() -> None:
    cfg = Config(providers={"slow": ProviderConfig(kind="openai_compat", base_url="http://s/v1", timeout=7)})
    p, _ = Providers(cfg, env={}).for_model("slow/m")
    assert p.default_timeout == 7.0
