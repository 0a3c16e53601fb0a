"""What one gateway process holds: config, providers, prices, presets, the store and live runs."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from panelfuse.config import Config
from panelfuse.pricing import PriceTable
from panelfuse.providers.registry import Providers
from panelfuse.server.runs import RunManager
from panelfuse.spec import all_presets
from panelfuse.store import RunStore


@dataclass
class ServerSettings:
    config_path: str | None = None
    db_url: str | None = None  # None: the SQLite file in the user data dir
    db_schema: str | None = None  # PostgreSQL only: keep the tables in this schema (tests, tenants)
    max_body_bytes: int = 8 * 1024 * 1024
    keepalive_s: float = 5.0
    shutdown_grace_s: float = 20.0
    # Runs still 'running' whose row has not been refreshed for this long belong to a dead process.
    stale_after_s: float = 60.0


@dataclass
class GatewayState:
    config: Config
    providers: Providers
    prices: PriceTable
    store: RunStore
    manager: RunManager
    settings: ServerSettings
    presets: dict[str, dict[str, Any]] = field(default_factory=dict)

    @classmethod
    def build(cls, config: Config, store: RunStore, settings: ServerSettings,
              providers: Providers | None = None) -> GatewayState:
        providers = providers or Providers(config)
        return cls(
            config=config,
            providers=providers,
            prices=PriceTable.load(config.prices),
            store=store,
            manager=RunManager(store),
            settings=settings,
            presets=all_presets(config.presets),
        )

    @property
    def keepalive_s(self) -> float:
        return self.settings.keepalive_s

    def default_preset(self) -> str:
        return self.providers.default_preset()
