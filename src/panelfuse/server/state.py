"""What one gateway process holds: config, providers, prices, presets, the store and live runs."""

from __future__ import annotations

from dataclasses import dataclass, field

from panelfuse.config import Config
from panelfuse.pricing import PriceTable
from panelfuse.providers.errors import register_secret
from panelfuse.providers.registry import Providers
from panelfuse.server.access import Authenticator, is_loopback
from panelfuse.service.cache import CacheDefaults
from panelfuse.service.caller import ModelPolicy
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
    # Host names (besides loopback) a request may carry while auth is off: --allowed-hosts, and the
    # address the server listens on when it is a specific one.
    allowed_hosts: frozenset[str] = frozenset()

    @classmethod
    def build(
        cls, config: Config, store: RunStore, settings: ServerSettings, providers: Providers | None = None
    ) -> GatewayState:
        providers = providers or Providers(config)
        for pc in providers.configs.values():  # never echoed in an upstream's error text
            register_secret(pc.resolved_api_key(providers.env))
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
            auth=Authenticator(
                auth=auth_on,
                admin_key=settings.admin_key,
                passthrough=settings.passthrough_keys,
                policy=ModelPolicy.of(providers),
                default_provider=config.default_provider,
            ),
            allowed_hosts=allowed_hosts(settings),
            limiter=limiter,
            presets=all_presets(config.presets),
            keepalive_s=settings.keepalive_s,
            cache_defaults=CacheDefaults(ttl_s=settings.cache_ttl_s, scope=settings.cache_scope),
        )


def allowed_hosts(settings: ServerSettings) -> frozenset[str]:
    names = {h.strip().lower().strip("[]").rstrip(".") for h in (settings.allowed_hosts or "").split(",")}
    if settings.host not in ("0.0.0.0", "::", ""):
        names.add(settings.host.lower().strip("[]"))
    return frozenset(n for n in names if n)
