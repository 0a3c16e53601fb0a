"""What one gateway process holds: config, providers, prices, presets, the store and live runs."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from panelfuse.config import Config
from panelfuse.pricing import PriceTable
from panelfuse.providers.registry import Providers
from panelfuse.server.access import Authenticator, is_loopback
from panelfuse.server.ratelimit import InProcessLimiter, Limiter, RedisLimiter
from panelfuse.server.runs import RunManager
from panelfuse.settings import ServerSettings as ServerSettings  # re-exported: it was defined here
from panelfuse.spec import all_presets
from panelfuse.store import RunStore


@dataclass
class GatewayState:
    config: Config
    providers: Providers
    prices: PriceTable
    store: RunStore
    manager: RunManager
    settings: ServerSettings
    auth: Authenticator
    limiter: Limiter
    presets: dict[str, dict[str, Any]] = field(default_factory=dict)

    @classmethod
    def build(
        cls, config: Config, store: RunStore, settings: ServerSettings, providers: Providers | None = None
    ) -> GatewayState:
        providers = providers or Providers(config)
        auth_on = settings.auth
        if auth_on is None and not is_loopback(settings.host):
            auth_on = True  # never an open gateway off loopback unless --no-auth says so
        limiter: Limiter = RedisLimiter(settings.redis_url) if settings.redis_url else InProcessLimiter()
        return cls(
            config=config,
            providers=providers,
            prices=PriceTable.load(config.prices),
            store=store,
            manager=RunManager(store),
            settings=settings,
            auth=Authenticator(auth=auth_on, admin_key=settings.admin_key, passthrough=settings.passthrough_keys),
            limiter=limiter,
            presets=all_presets(config.presets),
        )

    @property
    def keepalive_s(self) -> float:
        return self.settings.keepalive_s

    def default_preset(self) -> str:
        return self.providers.default_preset()
