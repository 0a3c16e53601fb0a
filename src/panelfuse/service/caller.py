"""Who a request is made for: their key (allowlist, budget, limits) or their own upstream key."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from panelfuse.config import ProviderConfig
from panelfuse.providers.registry import Providers
from panelfuse.service.errors import ServiceError
from panelfuse.store import ApiKey


@dataclass
class Principal:
    key: ApiKey | None = None
    is_admin: bool = False
    # A passthrough caller: identified by a hash of their token, never by the token.
    passthrough_id: str | None = None
    upstream_keys: dict[str, str] = field(default_factory=dict)  # provider name → the caller's key

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
        if self.key is None:
            return
        refused = sorted({m for m in qualified_ids if not self.key.allows(m)})
        if refused:
            raise ServiceError(403, f"this key may not use: {', '.join(refused)}", code="model_not_allowed")


def providers_for(
    principal: Principal, providers: Providers, *, extra_headers: Mapping[str, str] | None = None
) -> Providers:
    """The providers a request uses: the gateway's own, or (passthrough) the same providers using the
    caller's key for the provider it belongs to (the default provider when unknown), each also sending
    `extra_headers`. Built with one copy of the config, only when something differs."""
    keys = {
        (providers.config.default_provider if name == "*" else name): token
        for name, token in principal.upstream_keys.items()
    }
    if not keys and not extra_headers:
        return providers
    config = providers.config.model_copy(deep=True)
    for name, pc in providers.configs.items():
        update: dict[str, Any] = {}
        if extra_headers:
            update["headers"] = {**pc.headers, **extra_headers}
        if name in keys:
            update["api_key"] = keys[name]
        if update:
            config.providers[name] = ProviderConfig.model_validate(pc.model_dump() | update)
    return Providers(config, providers.env)
