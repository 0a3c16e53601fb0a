"""How a request's model string is resolved (docs/architecture.md, "Contracts"). Pure functions.

| the string                                               | goes to                                   |
| `panelfuse/fusion`, `panelfuse/fusion-<preset>`, `openrouter/fusion` | the fusion pipeline             |
| `<provider>/<rest>` with <provider> a configured provider | that provider, model id `<rest>`          |
| anything else                                            | the default provider, unchanged           |
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

FUSION_ALIASES = ("panelfuse/fusion", "openrouter/fusion")
FUSION_PRESET_PREFIX = "panelfuse/fusion-"
# OpenRouter's preset names are synonyms of ours.
PRESET_SYNONYMS = {"general-high": "quality", "general-budget": "budget", "general-fast": "fast"}


@dataclass(frozen=True)
class FusionRoute:
    preset: str | None  # None: the configured default preset


@dataclass(frozen=True)
class ProviderRoute:
    provider: str
    model: str

    @property
    def qualified(self) -> str:
        return f"{self.provider}/{self.model}"


class UnknownModelError(LookupError):
    """An id in the reserved fusion namespace that names no preset (the gateway's 404)."""


def canonical_preset(name: str) -> str:
    return PRESET_SYNONYMS.get(name, name)


def resolve_model(
    model: str,
    providers: Collection[str],
    default_provider: str,
    presets: Collection[str] | None = None,
) -> FusionRoute | ProviderRoute:
    model = model.strip()
    if not model:
        raise ValueError("model id is empty")
    if model in FUSION_ALIASES:
        return FusionRoute(preset=None)
    if model.startswith(FUSION_PRESET_PREFIX):
        preset = canonical_preset(model[len(FUSION_PRESET_PREFIX) :])
        if presets is not None and preset not in presets:
            raise UnknownModelError(f"unknown fusion preset '{preset}' in model id '{model}'")
        return FusionRoute(preset=preset)
    head, sep, rest = model.partition("/")
    if sep and rest and head in providers:
        return ProviderRoute(provider=head, model=rest)
    return ProviderRoute(provider=default_provider, model=model)
