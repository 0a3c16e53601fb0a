"""OpenRouter's account endpoints, for clients written against OpenRouter:

- `GET /v1/generation?id=` the stats of one completion (cost, tokens, latency, model, finish reason),
  in the `openrouter` SDK's `GenerationResponse` shape; key-scoped like the runs API. A fusion chat
  completion's id is answered from its run (`service/generations.py`).
- `GET /v1/key` the caller's panelfuse key in the SDK's `GetCurrentKeyResponse` shape: `label` its
  name, `usage` what it has been charged (USD), `limit` its budget, `limit_remaining` what is left
  after what is charged and what running requests hold. Without a panelfuse key (auth off, the admin
  key, a passthrough caller) nothing is charged: usage 0, no limit, and the label says which.

Both also answer under /api/v1 (OpenRouter's base URL), like every /v1 route (`app.py`).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request

from panelfuse.server import responses
from panelfuse.server.deps import Caller, State
from panelfuse.server.errors import ApiError
from panelfuse.service import generations
from panelfuse.service.generations import Generation
from panelfuse.service.requests import Identifier  # no NUL: PostgreSQL cannot look one up
from panelfuse.store import ApiKey, GenerationStore

router = APIRouter()
PASSTHROUGH_ID_PREFIX = "pt_"  # server/access.py names a passthrough caller pt_<hash of their token>


def generation_data(gen: Generation) -> dict[str, Any]:
    """OpenRouter's generation object; null where panelfuse has no such figure. An unknown cost is
    total_cost 0 with upstream_inference_cost null."""
    provider = "panelfuse" if gen.run_id else (gen.model.split("/", 1)[0] if "/" in gen.model else None)
    return {
        "id": gen.id,
        "model": gen.model,
        "created_at": gen.created_at.isoformat(),
        "total_cost": gen.cost or 0.0,
        "usage": gen.cost or 0.0,
        "upstream_inference_cost": gen.cost,
        "cache_discount": None,
        "tokens_prompt": gen.prompt_tokens,
        "tokens_completion": gen.completion_tokens,
        "native_tokens_prompt": gen.prompt_tokens,
        "native_tokens_completion": gen.completion_tokens,
        "native_tokens_cached": None,
        "native_tokens_reasoning": None,
        "native_tokens_completion_images": None,
        "latency": float(gen.latency_ms),
        "generation_time": float(gen.latency_ms),
        "moderation_latency": None,
        "finish_reason": gen.finish_reason,
        "native_finish_reason": gen.finish_reason,
        "streamed": gen.streamed,
        "cancelled": gen.finish_reason == "cancelled",
        "api_type": "completions",
        "is_byok": bool(gen.key_id and gen.key_id.startswith(PASSTHROUGH_ID_PREFIX)),
        "provider_name": provider,
        "provider_responses": None,
        "router": "panelfuse/fusion" if gen.run_id else None,
        "origin": "",
        "data_region": "global",
        "app_id": None,
        "external_user": None,
        "http_referer": None,
        "user_agent": None,
        "num_fetches": None,
        "num_input_audio_prompt": None,
        "num_media_completion": None,
        "num_media_prompt": None,
        "num_search_results": None,
        "preset_id": None,
        "service_tier": None,
        "upstream_id": None,
        "web_search_engine": None,
        "workspace_id": None,
        "kind": gen.kind,
        "run_id": gen.run_id,
    }


@router.get(
    "/v1/generation",
    summary="The stats of one completion by its id (OpenRouter's generation endpoint)",
    response_model=responses.Generation,
    response_model_exclude_unset=True,
)
async def get_generation(
    state: State, principal: Caller, gen_id: Annotated[Identifier, Query(alias="id")]
) -> dict[str, Any]:
    gen = await generations.get(state.store, gen_id, key_id=principal.scope)
    if gen is None:
        # Another key's generation is indistinguishable from a missing one: no probing for ids.
        raise ApiError(404, f"no generation '{gen_id}'", param="id", code="generation_not_found")
    return {"data": generation_data(gen)}


def _windows(now: datetime) -> list[datetime]:
    """The starts of the current UTC day, week (from Monday) and month."""
    day = now.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return [day, day - timedelta(days=day.weekday()), day.replace(day=1)]


def key_data(label: str, key: ApiKey | None, charged: list[float]) -> dict[str, Any]:
    daily, weekly, monthly = charged or [0.0, 0.0, 0.0]
    budget = None
    if key is not None and key.budget_usd is not None:
        budget = {
            "budget_id": None,
            "guardrail_id": None,
            "include_byok": False,
            "limit_usd": key.budget_usd,
            "remaining_usd": max(0.0, key.remaining_usd or 0.0),
            "reset_interval": None,
            "resets_at": None,
            "scope": "key_limit",
            "spend_usd": key.spent_usd,
        }
    rpm = key.rpm if key is not None else None
    return {
        "label": label,
        "usage": key.spent_usd if key is not None else 0.0,
        "usage_daily": daily,
        "usage_weekly": weekly,
        "usage_monthly": monthly,
        "byok_usage": 0.0,
        "byok_usage_daily": 0.0,
        "byok_usage_weekly": 0.0,
        "byok_usage_monthly": 0.0,
        "include_byok_in_limit": False,
        "limit": budget["limit_usd"] if budget else None,
        "limit_remaining": budget["remaining_usd"] if budget else None,
        "limit_reset": None,
        "is_free_tier": False,
        "is_management_key": False,
        "is_provisioning_key": False,
        "rate_limit": {
            "requests": rpm if rpm is not None else -1,
            "interval": "1m",
            "note": "the key's requests per minute; -1: no limit",
        },
        "budgets": [budget] if budget else [],
        "effective_budget": budget,
        "allowed_data_regions": ["global"],
        # No free-model quota exists here (local models are free and uncounted): -1, like rate_limit.
        "free_model_daily_requests": {"limit": -1, "remaining": -1, "used": 0},
        "creator_user_id": None,
        "organization_id": None,
        "workspace_id": None,
        "expires_at": None,
    }


@router.get(
    "/v1/key",
    summary="The caller's key: label, usage, limit (OpenRouter's current-key endpoint)",
    response_model=responses.Key,
    response_model_exclude_unset=True,
)
async def current_key(request: Request, state: State, principal: Caller) -> dict[str, Any]:
    key = principal.key
    if key is not None:
        fresh = await state.store.keys.get(key.id) or key  # the principal's copy was read at auth time
        charged = await GenerationStore(state.store.database).charged_since(fresh.id, _windows(datetime.now(UTC)))
        return {"data": key_data(fresh.name, fresh, charged)}
    if principal.passthrough_id is not None:
        label = "passthrough: your own provider key (panelfuse charges nothing)"
    elif await state.auth.enabled(request):
        label = "admin"
    else:
        label = "local gateway, auth off (no panelfuse key)"
    return {"data": key_data(label, None, [])}
