"""What one gateway process holds for every request: config, providers, prices, presets, the run
store, the live runs and the rate limiter. Built once at start-up."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from panelfuse.config import Config
from panelfuse.pricing import PriceTable
from panelfuse.providers.registry import Providers
from panelfuse.service.cache import CacheDefaults
from panelfuse.service.caller import Principal, providers_for
from panelfuse.service.ratelimit import Limiter
from panelfuse.service.runs import RunManager
from panelfuse.store import RunStore
from panelfuse.tools.toolbox import Toolbox

DEPTH_HEADER = "X-Panelfuse-Fusion-Depth"


FUSION_HEADERS = {DEPTH_HEADER: "1"}  # every call made for a fusion says so (the recursion guard)


@dataclass
class Gateway:
    config: Config
    providers: Providers
    prices: PriceTable
    store: RunStore
    manager: RunManager
    limiter: Limiter
    presets: dict[str, dict[str, Any]]
    keepalive_s: float
    cache_defaults: CacheDefaults = field(default_factory=CacheDefaults)  # the response cache: docs/cache.md

    def __post_init__(self) -> None:
        # Every call made for a fusion carries the depth header; built once, not per request.
        self.fusion_providers = providers_for(Principal(), self.providers, extra_headers=FUSION_HEADERS)
        # The web tools as [tools] describes them: the same for every run, so built once too (per
        # request it was 2 % of a fusion's CPU: a platformdirs lookup and path objects each time).
        self.toolbox = Toolbox.from_config(self.providers.config.tools, self.providers.env)

    def default_preset(self) -> str:
        return self.providers.default_preset()
