"""What one gateway process holds: config, providers, prices, presets, the store and live runs."""

from __future__ import annotations

from dataclasses import dataclass, field

from panelfuse.config import Config
from panelfuse.pricing import PriceTable
from panelfuse.providers.registry import Providers
from panelfuse.server.access import Authenticator, is_loopback
from panelfuse.service.gateway import Gateway
from panelfuse.service.ratelimit import InProcessLimiter, Limiter, RedisLimiter
from panelfuse.service.runs import RunManager
from panelfuse.settings import ServerSettings as ServerSettings  # re-exported: it was defined here
from panelfuse.spec import all_presets
from panelfuse.store import RunStore


@dataclass
class GatewayState(Gateway):
    """The gateway plus what only the HTTP side needs: its settings and the authenticator."""

    settings: ServerSettings = field(default_factory=ServerSettings)
    auth: Authenticator = field(default_factory=lambda: Authenticator(auth=None, admin_key=None, passthrough=False))

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
            keepalive_s=settings.keepalive_s,
        )
