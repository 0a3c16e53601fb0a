"""What one gateway process holds for every request: config, providers, prices, presets, the run
store, the live runs and the rate limiter. Built once at start-up."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from panelfuse.config import Config, ProviderConfig
from panelfuse.pricing import PriceTable
from panelfuse.providers.registry import Providers
from panelfuse.service.ratelimit import Limiter
from panelfuse.service.runs import RunManager
from panelfuse.store import RunStore

DEPTH_HEADER = "X-Panelfuse-Fusion-Depth"


def with_depth_header(providers: Providers, depth: int = 1) -> Providers:
    """The same providers, each sending the fusion depth header on every call: a gateway refuses to
    start a fusion for a request that carries it, so a fusion can never call a fusion."""
    config = providers.config.model_copy(deep=True)
    for name, pc in providers.configs.items():
        config.providers[name] = ProviderConfig.model_validate(
            pc.model_dump() | {"headers": {**pc.headers, DEPTH_HEADER: str(depth)}}
        )
    return Providers(config, providers.env)


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

    def __post_init__(self) -> None:
        # Every call made for a fusion carries the depth header; built once, not per request.
        self.fusion_providers = with_depth_header(self.providers)

    def default_preset(self) -> str:
        return self.providers.default_preset()
