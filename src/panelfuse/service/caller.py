"""Who a request is made for: their key (allowlist, budget, limits) or their own upstream key.

Two limits hold for every request that comes through the server (docs/security.md), checked on the
resolved `provider/model` ids before any call or file access:
- a passthrough caller uses only the provider their token belongs to, never the operator's keys;
- local models are the configured ones (and the bundled alias), never a path the request names.
The CLI calls the pipeline directly, without a Principal: the operator may still name a .gguf path.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from panelfuse.config import ProviderConfig
from panelfuse.providers.registry import Providers
from panelfuse.providers.resolve import allowed_local_ids
from panelfuse.service.errors import ServiceError
from panelfuse.store import ApiKey


@dataclass(frozen=True)
class ModelPolicy:
    """Which local `provider/model` ids a server request may name (every id of a non-local provider is
    the key allowlist's business)."""

    local_providers: frozenset[str] = frozenset()
    local_ids: frozenset[str] = frozenset()

    @classmethod
    def of(cls, providers: Providers) -> ModelPolicy:
        local = {name: pc for name, pc in providers.configs.items() if pc.kind == "local"}
        ids = {qid for name, pc in local.items() for qid in allowed_local_ids(name, pc.models)}
        return cls(frozenset(local), frozenset(ids))

    def refused(self, qualified_ids: Iterable[str]) -> list[str]:
        return sorted(
            {q for q in qualified_ids if q.partition("/")[0] in self.local_providers and q not in self.local_ids}
        )


@dataclass
class Principal:
    key: ApiKey | None = None
    is_admin: bool = False
    # A passthrough caller: identified by a hash of their token, never by the token.
    passthrough_id: str | None = None
    upstream_keys: dict[str, str] = field(default_factory=dict)  # provider name → the caller's key
    # Set by the server's authenticator for every request; None only for in-process callers.
    policy: ModelPolicy | None = None

    @property
    def key_id(self) -> str | None:
        if self.key is not None:
            return self.key.id
        return self.passthrough_id

    @property
    def scope(self) -> str | None:
        """The key_id filter for the runs API: None (all runs) for the admin and when auth is off."""
        return None if self.is_admin or self.key_id is None else self.key_id

    def check_models(self, qualified_ids: Iterable[str]) -> None:
        """Refuse, before any upstream call, a request that names a model this caller may not use:
        400 for an unconfigured local model (the message never says whether a file exists), 403 for a
        provider a passthrough token cannot pay for, 403 for a model outside the key's allowlist."""
        ids = list(qualified_ids)
        if self.policy is not None and (local := self.policy.refused(ids)):
            raise ServiceError(
                400,
                f"unknown model: {', '.join(local)} (only the configured local models can be named)",
                param="model",
                code="model_not_found",
            )
        if self.passthrough_id is not None:
            unpaid = sorted({q.partition("/")[0] for q in ids} - set(self.upstream_keys))
            if unpaid:
                raise ServiceError(
                    403,
                    f"your own API key is for {', '.join(sorted(self.upstream_keys))}; this request also needs "
                    f"{', '.join(unpaid)}, which a passthrough key cannot use (the gateway never lends its keys)",
                    code="passthrough_provider_not_allowed",
                )
        if self.key is None:
            return
        refused = sorted({m for m in ids if not self.key.allows(m)})
        if refused:
            raise ServiceError(403, f"this key may not use: {', '.join(refused)}", code="model_not_allowed")


def providers_for(
    principal: Principal, providers: Providers, *, extra_headers: Mapping[str, str] | None = None
) -> Providers:
    """The providers a request uses: the gateway's own, or (passthrough) the same providers where only
    the caller's provider has a key (the caller's) and every other one has none, so a call to it fails
    before the network instead of spending the operator's key. Each also sends `extra_headers`. Built
    with one copy of the config, only when something differs."""
    keys = principal.upstream_keys
    if not keys and not extra_headers:
        return providers
    config = providers.config.model_copy(deep=True)
    for name, pc in providers.configs.items():
        update: dict[str, Any] = {}
        if extra_headers:
            update["headers"] = {**pc.headers, **extra_headers}
        if keys:
            update["api_key"] = keys.get(name)  # None for every provider but the caller's
        if update:
            config.providers[name] = ProviderConfig.model_validate(pc.model_dump() | update)
    # Passthrough: no environment either, so no provider finds the operator's key variable.
    return Providers(config, {} if keys else providers.env)
