"""How a request's model string is resolved (docs/architecture.md, "Contracts"). Pure functions.

| the string                                               | goes to                                   |
| `panelfuse/fusion`, `panelfuse/fusion-<preset>`,          | the fusion pipeline                       |
| `openrouter/fusion`, `openrouter/fusion-<preset>`         |                                           |
| `<provider>/<rest>` with <provider> a configured provider | that provider, model id `<rest>`          |
| anything else                                            | the default provider, unchanged           |

`openrouter/fusion-<name>` is a fusion alias only when <name> is a preset (or a synonym: OpenRouter's
`openrouter/fusion-flash` is its `general-fast` preset, our `fast`); any other `openrouter/fusion-…` id
goes to the `openrouter` provider as before. OpenRouter's variant suffixes (`:nitro`, `:free`, …) on a
fusion alias are accepted and ignored.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass

FUSION_ALIASES = ("panelfuse/fusion", "openrouter/fusion")
FUSION_PRESET_PREFIX = "panelfuse/fusion-"
OPENROUTER_PRESET_PREFIX = "openrouter/fusion-"
# The bundled local model's name (providers/local.py::EMBEDDED_MODEL; kept here so this module stays pure).
EMBEDDED_LOCAL_MODEL = "smollm2"
# OpenRouter's preset names are synonyms of ours; `flash` is its `openrouter/fusion-flash` model (general-fast).
PRESET_SYNONYMS = {"general-high": "quality", "general-budget": "budget", "general-fast": "fast", "flash": "fast"}


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


def _without_variant(model: str) -> str:
    """A fusion alias with OpenRouter's variant suffix (`openrouter/fusion:nitro`) is the alias; any
    other id keeps its suffix (it is the provider's business)."""
    head, sep, _ = model.partition(":")
    if sep and (head in FUSION_ALIASES or head.startswith((FUSION_PRESET_PREFIX, OPENROUTER_PRESET_PREFIX))):
        return head
    return model


def resolve_model(
    model: str,
    providers: Collection[str],
    default_provider: str,
    presets: Collection[str] | None = None,
) -> FusionRoute | ProviderRoute:
    model = model.strip()
    if not model:
        raise ValueError("model id is empty")
    base = _without_variant(model)
    if base in FUSION_ALIASES:
        return FusionRoute(preset=None)
    if base.startswith(FUSION_PRESET_PREFIX):
        preset = canonical_preset(base[len(FUSION_PRESET_PREFIX) :])
        if presets is not None and preset not in presets:
            raise UnknownModelError(f"unknown fusion preset '{preset}' in model id '{model}'")
        return FusionRoute(preset=preset)
    if base.startswith(OPENROUTER_PRESET_PREFIX):
        name = base[len(OPENROUTER_PRESET_PREFIX) :]
        preset = canonical_preset(name)
        if (presets is not None and preset in presets) or (presets is None and name in PRESET_SYNONYMS):
            return FusionRoute(preset=preset)
    head, sep, rest = model.partition("/")
    if sep and rest and head in providers:
        return ProviderRoute(provider=head, model=rest)
    return ProviderRoute(provider=default_provider, model=model)


def allowed_local_ids(provider: str, configured: Iterable[str]) -> list[str]:
    """The `provider/model` ids a server request may name on a local provider: the configured names and
    the bundled model, never a path (a path would let a caller probe and load the server's files)."""
    return [f"{provider}/{name}" for name in (*configured, EMBEDDED_LOCAL_MODEL)]
