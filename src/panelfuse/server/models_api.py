"""/v1/models: the fusion aliases and every configured model, in OpenAI's list shape with OpenRouter's
model fields beside it (pricing, architecture, supported_parameters, …), so both SDKs parse it.

The list: the fusion aliases (`panelfuse/fusion`, `openrouter/fusion`, `panelfuse/fusion-<preset>`),
each provider's `models` from the config, `local/smollm2`, and the own model list of each hosted
provider that has a key (asked with a short timeout, kept for some minutes in the process; a provider
that fails is left out until it is asked again). A key with a model allowlist sees only the models it
may call (the aliases always: a fusion's models are checked when it is planned).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request

from panelfuse.pricing import Price, PriceTable
from panelfuse.providers.registry import Providers
from panelfuse.providers.resolve import FUSION_ALIASES, FUSION_PRESET_PREFIX
from panelfuse.server import responses
from panelfuse.server.deps import Caller, State
from panelfuse.server.errors import ApiError
from panelfuse.server.state import GatewayState
from panelfuse.service.caller import Principal
from panelfuse.spec import preset_model_ids

log = logging.getLogger("panelfuse.server")
router = APIRouter()

EMBEDDED_MODEL = "local/smollm2"
LIST_TTL_S = 300.0  # a provider's own model list is kept this long
FAILED_TTL_S = 60.0  # a provider whose list could not be read is asked again after this
LIST_TIMEOUT_S = 5.0  # how long one provider may take to answer
VARIES = "-1"  # OpenRouter's price for a router (openrouter/auto): the price depends on the models used

# What the chat route accepts for each kind of model (OpenRouter's parameter names).
COMMON_PARAMETERS = (
    "max_tokens",
    "max_completion_tokens",
    "temperature",
    "top_p",
    "seed",
    "stop",
    "tools",
    "tool_choice",
    "response_format",
    "stream",
)
FUSION_PARAMETERS = (*COMMON_PARAMETERS, "reasoning", "include_reasoning")


@dataclass(frozen=True)
class _Listed:
    expires: float
    ids: tuple[str, ...]


class ModelCatalog:
    """The hosted providers' own model lists, cached in the process (one per app)."""

    def __init__(self, *, ttl: float = LIST_TTL_S, failed_ttl: float = FAILED_TTL_S, timeout: float = LIST_TIMEOUT_S):
        self.ttl, self.failed_ttl, self.timeout = ttl, failed_ttl, timeout
        self.created = int(time.time())  # the `created` of every listed model: stable while we run
        self._lists: dict[str, _Listed] = {}
        self._lock = asyncio.Lock()

    async def provider_models(self, providers: Providers) -> list[str]:
        """Qualified ids from every hosted provider with a key, asked concurrently when stale."""
        names = [n for n, pc in providers.configs.items() if pc.kind != "local" and providers.has_key(n)]
        if any(self._stale(n) for n in names):
            async with self._lock:  # one refresh at a time; the others then find it fresh
                stale = [n for n in names if self._stale(n)]
                fetched = await asyncio.gather(*(self._fetch(providers, n) for n in stale))
                self._lists.update(zip(stale, fetched, strict=True))
        return [f"{n}/{m}" for n in names if n in self._lists for m in self._lists[n].ids]

    def _stale(self, name: str) -> bool:
        listed = self._lists.get(name)
        return listed is None or listed.expires <= time.monotonic()

    async def _fetch(self, providers: Providers, name: str) -> _Listed:
        try:
            ids = await asyncio.wait_for(providers.get(name).list_models(), self.timeout)
        except Exception as exc:  # unreachable, refused, slow, unreadable: this provider is left out
            log.warning("models: could not list %s's models: %s", name, exc or type(exc).__name__)
            return _Listed(time.monotonic() + self.failed_ttl, ())
        return _Listed(time.monotonic() + self.ttl, tuple(dict.fromkeys(ids)))


async def model_catalog(request: Request) -> ModelCatalog:
    catalog: ModelCatalog | None = getattr(request.app.state, "model_catalog", None)
    if catalog is None:
        catalog = request.app.state.model_catalog = ModelCatalog()
    return catalog


Catalog = Annotated[ModelCatalog, Depends(model_catalog)]


def per_token(usd_per_million: float) -> str:
    """USD per million tokens → USD per token as a plain decimal string ("0.0000025"), as OpenRouter."""
    text = f"{usd_per_million / 1_000_000:.15f}".rstrip("0").rstrip(".")
    return text or "0"


def pricing(price: Price | None) -> dict[str, str]:
    if price is None:
        return {"prompt": VARIES, "completion": VARIES}
    return {"prompt": per_token(price.input), "completion": per_token(price.output), "request": "0"}


def model_entry(
    model_id: str,
    *,
    name: str,
    description: str,
    owned_by: str,
    created: int,
    price: dict[str, str],
    parameters: Iterable[str],
    tokenizer: str,
) -> dict[str, Any]:
    return {
        "id": model_id,
        "object": "model",
        "created": created,
        "owned_by": owned_by,
        "canonical_slug": model_id,
        "name": name,
        "description": description,
        "context_length": None,  # not known to panelfuse
        "architecture": {
            "modality": "text->text",
            "input_modalities": ["text"],
            "output_modalities": ["text"],
            "tokenizer": tokenizer,
            "instruct_type": None,
        },
        "pricing": price,
        "top_provider": {"is_moderated": False, "context_length": None, "max_completion_tokens": None},
        "per_request_limits": None,
        "supported_parameters": list(parameters),
        "default_parameters": None,
        "supported_voices": None,
        "links": {"details": f"/api/v1/models/{model_id}"},
    }


def fusion_entries(presets: Mapping[str, Mapping[str, Any]], default_preset: str, created: int) -> list[dict[str, Any]]:
    def describe(preset: str) -> str:
        data = presets.get(preset, {})
        models = ", ".join(preset_model_ids(data)) if data else "unknown"
        about = str(data.get("description") or "").strip()
        return (
            f"A fusion: a panel of models answers, a judge compares the answers, a synthesizer writes one. "
            f"Preset '{preset}'{': ' + about if about else ''} Models: {models}. "
            f"The price is the sum of the calls made."
        )

    default_name = f"panelfuse: Fusion ({default_preset}, the default)"
    aliases = [(alias, default_preset, default_name) for alias in FUSION_ALIASES]
    aliases += [(f"{FUSION_PRESET_PREFIX}{p}", p, f"panelfuse: Fusion ({p})") for p in presets]
    return [
        model_entry(
            mid,
            name=label,
            description=describe(preset),
            owned_by="panelfuse",
            created=created,
            price={"prompt": VARIES, "completion": VARIES},
            parameters=FUSION_PARAMETERS,
            tokenizer="Router",
        )
        for mid, preset, label in aliases
    ]


def provider_entry(model_id: str, prices: PriceTable, created: int) -> dict[str, Any]:
    provider, _, local_id = model_id.partition("/")
    return model_entry(
        model_id,
        name=f"{provider}: {local_id}",
        description=f"{local_id} through the '{provider}' provider (proxied unchanged).",
        owned_by=provider,
        created=created,
        price=pricing(prices.lookup(model_id)),
        parameters=COMMON_PARAMETERS,
        tokenizer="Other",
    )


async def catalog_models(state: GatewayState, catalog: ModelCatalog, principal: Principal) -> list[dict[str, Any]]:
    """Every model this caller may name, aliases first."""
    out = fusion_entries(state.presets, state.default_preset(), catalog.created)
    ids = [f"{name}/{m}" for name, pc in state.providers.configs.items() for m in pc.models]
    ids.append(EMBEDDED_MODEL)
    ids += await catalog.provider_models(state.providers)
    key = principal.key
    aliases = {m["id"] for m in out}
    for mid in dict.fromkeys(ids):
        if mid not in aliases and (key is None or key.allows(mid)):
            out.append(provider_entry(mid, state.prices, catalog.created))
    return out


def _filtered(models: list[dict[str, Any]], supported_parameters: str | None, q: str | None) -> list[dict[str, Any]]:
    if supported_parameters:
        wanted = {p.strip() for p in supported_parameters.split(",") if p.strip()}
        models = [m for m in models if wanted <= set(m["supported_parameters"])]
    if q:
        needle = q.lower()
        models = [m for m in models if needle in m["id"].lower() or needle in m["name"].lower()]
    return models


async def _model_or_404(state: GatewayState, catalog: ModelCatalog, principal: Principal, model_id: str) -> Any:
    for m in await catalog_models(state, catalog, principal):
        if m["id"] == model_id:
            return m
    raise ApiError(404, f"no model '{model_id}'", param="model", code="model_not_found")


@router.get(
    "/v1/models",
    summary="Fusion aliases and configured models (OpenAI's list; OpenRouter's model fields)",
    response_model=responses.ModelList,
    response_model_exclude_unset=True,
)
async def list_models(
    request: Request,
    state: State,
    principal: Caller,
    catalog: Catalog,
    offset: Annotated[int | None, Query(ge=0)] = None,
    limit: Annotated[int | None, Query(ge=1, le=1000)] = None,
    supported_parameters: Annotated[str | None, Query(description="comma-separated: models supporting all")] = None,
    q: Annotated[str | None, Query(description="a substring of the id or name")] = None,
) -> dict[str, Any]:
    models = _filtered(await catalog_models(state, catalog, principal), supported_parameters, q)
    total = len(models)
    next_link = None
    if offset is not None or limit is not None:
        start = offset or 0
        end = start + limit if limit is not None else total
        models = models[start:end]
        if end < total:
            next_link = str(request.url.include_query_params(offset=end, limit=limit or total))
    return {"object": "list", "data": models, "links": {"next": next_link}, "total_count": total}


@router.get(
    "/v1/models/user",
    summary="The models this key may use (OpenRouter's per-user list; the same as /v1/models here)",
    response_model=responses.ModelList,
    response_model_exclude_unset=True,
)
async def list_user_models(state: State, principal: Caller, catalog: Catalog) -> dict[str, Any]:
    models = await catalog_models(state, catalog, principal)
    return {"object": "list", "data": models, "links": {"next": None}, "total_count": len(models)}


@router.get(
    "/v1/models/count",
    summary="How many models /v1/models lists",
    response_model=responses.ModelCount,
    response_model_exclude_unset=True,
)
async def count_models(state: State, principal: Caller, catalog: Catalog) -> dict[str, Any]:
    return {"data": {"count": len(await catalog_models(state, catalog, principal))}}


@router.get(
    "/v1/models/{model_id:path}",
    summary="One model (OpenAI's retrieve: the model object itself)",
    response_model=responses.Model,
    response_model_exclude_unset=True,
)
async def get_model(model_id: str, state: State, principal: Caller, catalog: Catalog) -> dict[str, Any]:
    model: dict[str, Any] = await _model_or_404(state, catalog, principal, model_id)
    return model


@router.get(
    "/v1/model/{model_id:path}",
    summary="One model, in OpenRouter's envelope ({data: model}; the openrouter SDK's models.get)",
    response_model=responses.ModelData,
    response_model_exclude_unset=True,
)
async def get_model_data(model_id: str, state: State, principal: Caller, catalog: Catalog) -> dict[str, Any]:
    return {"data": await _model_or_404(state, catalog, principal, model_id)}
