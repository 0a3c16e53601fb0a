"""ExperimentSpec: what an experiment is, as the config file (`[experiments.NAME]`) or the admin API
declares it. Plain data, validated with messages that name the field; the service applies it
(service/experiments.py) and the assignment arithmetic is pure (service/assignment.py).

```toml
[experiments.fusion-vs-single]
models = ["gpt-default"]          # the traffic: requests for these model ids (aliases)
sticky = "user"                   # the unit that stays in one arm: "key", "user" or "header:X-User-Id"
arms = [
  { name = "single", model = "openai/gpt-4.1-mini", share = 0.5 },
  { name = "fusion", model = "panelfuse/fusion", fusion = { preset = "budget" }, share = 0.5 },
  { name = "vote",   model = "panelfuse/fusion", fusion = { mode = "best-of" }, shadow = true },
]
shadow = { budget_usd = 5.0, max_concurrent = 4 }
monthly_requests = 300000         # the volume the report projects the monthly cost at
```
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
STICKY = re.compile(r"^(key|user|header:[A-Za-z0-9-]{1,64})$")
MAX_ARMS = 8


class ArmSpec(BaseModel):
    """One arm: the model id its requests are sent to (a plain model is proxied; a fusion alias runs a
    fusion), and for a fusion the plugin's fields that configure it (preset, analysis_models, mode, …,
    as in `plugins: [{"id": "fusion", ...}]`)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    name: str
    model: str = Field(min_length=1, max_length=256)
    fusion: dict[str, Any] | None = None
    share: float | None = Field(default=None, gt=0, le=1_000_000)
    shadow: bool = False

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not NAME.match(v):
            raise ValueError("an arm's name is 1-64 letters, digits, '_', '.' or '-'")
        return v

    @field_validator("fusion")
    @classmethod
    def _no_plugin_id(cls, v: dict[str, Any] | None) -> dict[str, Any] | None:
        if v is not None and v.get("id", "fusion") != "fusion":
            raise ValueError("fusion holds the fusion plugin's fields; its id, if given, is 'fusion'")
        return v

    @model_validator(mode="after")
    def _share(self) -> ArmSpec:
        if self.shadow and self.share is not None:
            raise ValueError(f"arm '{self.name}' runs in shadow: it takes no share of the traffic")
        if not self.shadow and self.share is None:
            raise ValueError(f"arm '{self.name}' needs a share (or shadow = true)")
        return self

    def plugin(self) -> dict[str, Any] | None:
        """The fusion plugin entry this arm sends, if it configures a fusion."""
        return None if self.fusion is None else {**self.fusion, "id": "fusion"}


class ShadowLimits(BaseModel):
    """What the shadow arms may spend: in all (USD, over the experiment's life) and at once (runs in
    flight per gateway process). A shadow that would pass either is not started (recorded `skipped`)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    budget_usd: float = Field(default=1.0, ge=0, le=1_000_000)
    max_concurrent: int = Field(default=4, ge=0, le=1000)


class GraderSpec(BaseModel):
    """The report grades a sample of each arm's answers against this rubric with `model` (evals'
    grader: one call per criterion, MET/UNMET). The experiment then keeps its requests' question and
    answer text, which it otherwise does not."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1)
    rubric: list[str] = Field(min_length=1, max_length=20)
    sample: int = Field(default=20, ge=1, le=1000)


class ExperimentSpec(BaseModel):
    """One experiment. `models` are the request model ids it takes (an alias of its own, such as
    `gpt-default`, needs no provider: the arms say what answers it). `keys` (ids or names) limits it
    to those keys' requests."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    models: list[str] = Field(min_length=1, max_length=16)
    keys: list[str] | None = Field(default=None, max_length=1000)
    sticky: str = "key"
    arms: list[ArmSpec] = Field(min_length=2, max_length=MAX_ARMS)
    shadow: ShadowLimits = Field(default_factory=ShadowLimits)
    grader: GraderSpec | None = None
    monthly_requests: int | None = Field(default=None, ge=1, le=10**12)
    description: str | None = Field(default=None, max_length=2000)

    @field_validator("sticky")
    @classmethod
    def _sticky(cls, v: str) -> str:
        if not STICKY.match(v):
            raise ValueError("sticky is 'key', 'user' or 'header:NAME' (a header name)")
        return v

    @model_validator(mode="after")
    def _arms(self) -> ExperimentSpec:
        names = [a.name for a in self.arms]
        if len(set(names)) != len(names):
            raise ValueError("arm names must be unique")
        if sum(1 for a in self.arms if not a.shadow) < 1:
            raise ValueError("an experiment needs at least one arm that is not a shadow")
        return self

    @property
    def primary_arms(self) -> list[ArmSpec]:
        return [a for a in self.arms if not a.shadow]

    @property
    def shadow_arms(self) -> list[ArmSpec]:
        return [a for a in self.arms if a.shadow]

    def arm(self, name: str) -> ArmSpec | None:
        return next((a for a in self.arms if a.name == name), None)

    @property
    def sticky_header(self) -> str | None:
        return self.sticky.split(":", 1)[1] if self.sticky.startswith("header:") else None


class Experiment(ExperimentSpec):
    """A named experiment (the admin API's request body; the config file names it by its table)."""

    name: str

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not NAME.match(v):
            raise ValueError("an experiment's name is 1-64 letters, digits, '_', '.' or '-'")
        return v

    def definition(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude={"name"}, exclude_none=True)


ExperimentState = Literal["running", "stopped"]
