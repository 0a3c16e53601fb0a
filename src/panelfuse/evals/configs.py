"""What is evaluated: `single:MODEL` (one plain provider call), `preset:NAME` (a fusion of that
preset) or a FusionSpec file (JSON or TOML). `LABEL=…` in front of any of them names it in reports."""

from __future__ import annotations

import hashlib
import json
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import ValidationError

from panelfuse.pipeline.modes import mode_for
from panelfuse.providers.errors import ProviderError
from panelfuse.providers.registry import Providers
from panelfuse.providers.resolve import FusionRoute
from panelfuse.spec import FusionSpec, all_presets, spec_from_preset

_LABEL = re.compile(r"^([A-Za-z0-9_.+-]+)=(.+)$")


class ConfigSpecError(ValueError):
    """A configuration string that names nothing usable."""


@dataclass(frozen=True)
class EvalConfig:
    label: str
    kind: Literal["single", "fusion"]
    model: str | None = None  # single
    spec: FusionSpec | None = None  # fusion
    max_tokens: int | None = None  # single: per answer
    timeout: float | None = None  # single: seconds per answer call (not part of the fingerprint)

    @property
    def description(self) -> str:
        if self.kind == "single":
            return f"single model {self.model}"
        assert self.spec is not None
        members = ", ".join(m.model for m in self.spec.members)
        synth = self.spec.synthesizer.model
        tail = f"; synthesizer {synth}" if synth and mode_for(self.spec.mode).uses_synthesizer else ""
        return (
            f"fusion ({self.spec.preset or 'custom'}, {self.spec.mode}): {members}; judge {self.spec.judge.model}{tail}"
        )

    @property
    def fingerprint(self) -> str:
        """A hash of what decides the answers, so a rerun under the same label cannot silently mix
        answers from two different configurations. The deadline is left out (it decides nothing)."""
        if self.kind == "single":
            ident: dict[str, Any] = {"single": self.model, "max_tokens": self.max_tokens}
        else:
            assert self.spec is not None
            ident = {"fusion": self.spec.model_dump(mode="json", exclude={"deadline_ms"})}
        return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]


def parse_config(
    text: str, providers: Providers, *, max_tokens: int | None = None, timeout: float | None = None
) -> EvalConfig:
    """One `-c` value as an EvalConfig. Raises ConfigSpecError with a readable message."""
    text = text.strip()
    label: str | None = None
    m = _LABEL.match(text)
    if m and not Path(text).exists():
        label, text = m.group(1), m.group(2)
    overrides: dict[str, Any] = {"max_tokens": max_tokens, "deadline_ms": int(timeout * 1000) if timeout else None}
    if text.startswith("single:"):
        model = text.removeprefix("single:")
        try:
            route = providers.route(model)
            if isinstance(route, FusionRoute):
                raise ConfigSpecError(f"'{model}' is a fusion alias: use preset:NAME for a fusion")
            providers.for_model(model)
        except (ProviderError, LookupError) as exc:
            raise ConfigSpecError(f"configuration '{text}': {exc}") from None
        return EvalConfig(label or text, "single", model=model, max_tokens=max_tokens, timeout=timeout)
    if text.startswith("preset:"):
        name = text.removeprefix("preset:")
        try:
            spec = spec_from_preset(name, all_presets(providers.config.presets), **overrides)
        except (KeyError, ValueError) as exc:
            raise ConfigSpecError(f"configuration '{text}': {exc}") from None
        return EvalConfig(label or text, "fusion", spec=spec)
    path = Path(text.removeprefix("spec:"))
    if path.suffix.lower() in (".json", ".toml"):
        return EvalConfig(label or f"spec:{path.stem}", "fusion", spec=_spec_file(path, overrides))
    raise ConfigSpecError(
        f"configuration '{text}': expected single:MODEL, preset:NAME, or a FusionSpec file (.json or .toml)"
    )


def _spec_file(path: Path, overrides: dict[str, Any]) -> FusionSpec:
    try:
        raw = path.read_text(encoding="utf-8")
        data = tomllib.loads(raw) if path.suffix.lower() == ".toml" else json.loads(raw)
    except OSError as exc:
        raise ConfigSpecError(f"cannot read the spec file {path}: {exc.strerror or exc}") from None
    except (ValueError, tomllib.TOMLDecodeError) as exc:
        raise ConfigSpecError(f"the spec file {path} is not valid {path.suffix[1:].upper()}: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigSpecError(f"the spec file {path} must hold an object")
    data.update({k: v for k, v in overrides.items() if v is not None})
    # The preset shorthand is accepted too: members and judge as bare model ids.
    if isinstance(data.get("members"), list):
        data["members"] = [{"model": m} if isinstance(m, str) else m for m in data["members"]]
    if isinstance(data.get("judge"), str):
        data["judge"] = {"model": data["judge"]}
    try:
        return FusionSpec.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "-"
        raise ConfigSpecError(f"the spec file {path}: field '{where}': {first['msg']}") from None
