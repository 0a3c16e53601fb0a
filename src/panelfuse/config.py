"""Configuration: a TOML file plus environment variables for keys.

The file is found at `--config`, then `$PANELFUSE_CONFIG`, then the user config dir
(`~/.config/panelfuse/config.toml` on Linux). Every part is optional: the built-in providers and
presets apply underneath whatever the file says.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import platformdirs
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from panelfuse.experiment_spec import ExperimentSpec

ProviderKind = Literal["openai_compat", "anthropic", "local"]


class ProviderConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: ProviderKind
    base_url: str | None = None
    api_key_env: str | None = None
    # Allowed for self-hosted setups; an environment variable named by api_key_env is preferred.
    api_key: str | None = None
    headers: dict[str, str] = Field(default_factory=dict)
    timeout: float | None = Field(default=None, gt=0, description="default per-call deadline, seconds")
    # local: model name → GGUF path; hosted: optional list of known model ids for `panelfuse models`.
    models: dict[str, str] = Field(default_factory=dict)

    def resolved_api_key(self, env: Mapping[str, str]) -> str | None:
        if self.api_key:
            return self.api_key
        return env.get(self.api_key_env) if self.api_key_env else None


class SearchServiceConfig(BaseModel):
    """One web search service ([tools.searxng], [tools.brave], [tools.tavily])."""

    model_config = ConfigDict(extra="forbid")

    url: str | None = None  # default: the service's public API (SearXNG has none: it is self-hosted)
    api_key_env: str | None = None
    api_key: str | None = None  # allowed for self-hosted setups; api_key_env is preferred
    price: float | None = Field(default=None, ge=0, description="USD per search request")
    timeout: float = Field(default=15.0, gt=0, description="seconds")

    def resolved_api_key(self, env: Mapping[str, str]) -> str | None:
        if self.api_key:
            return self.api_key
        return env.get(self.api_key_env) if self.api_key_env else None


class FetchConfig(BaseModel):
    """[tools.fetch]: web_fetch reaches out of the machine, so it is off until turned on."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = False
    # Hosts or CIDRs exempt from the SSRF guard (self-hosted services, tests), e.g. ["wiki.lan", "10.1.0.0/16"].
    allow: list[str] = Field(default_factory=list)
    max_bytes: int = Field(default=2_000_000, gt=0)
    max_redirects: int = Field(default=3, ge=0, le=10)
    connect_timeout: float = Field(default=5.0, gt=0)
    read_timeout: float = Field(default=15.0, gt=0)


class ToolsConfig(BaseModel):
    """[tools]: the web_search backend and web_fetch. Out of the box nothing leaves the machine:
    web_search answers from the local corpus (once `panelfuse index DIR` has built one)."""

    model_config = ConfigDict(extra="forbid")

    search: Literal["corpus", "searxng", "brave", "tavily", "none"] = "corpus"
    corpus_index: str | None = None  # default: corpus.db in the user data dir
    corpus_price: float = Field(default=0.0, ge=0)
    max_results: int = Field(default=5, ge=1, le=20)
    result_tokens: int = Field(default=2000, ge=100, le=32_000, description="one tool result is cut to this")
    tool_timeout: float = Field(default=30.0, gt=0, description="seconds, one tool call")
    fetch: FetchConfig = Field(default_factory=FetchConfig)
    searxng: SearchServiceConfig = Field(default_factory=SearchServiceConfig)
    brave: SearchServiceConfig = Field(default_factory=lambda: SearchServiceConfig(api_key_env="BRAVE_API_KEY"))
    tavily: SearchServiceConfig = Field(default_factory=lambda: SearchServiceConfig(api_key_env="TAVILY_API_KEY"))

    @model_validator(mode="after")
    def _searxng_needs_url(self) -> ToolsConfig:
        if self.search == "searxng" and not self.searxng.url:
            raise ValueError("search = 'searxng' needs [tools.searxng] url (your SearXNG instance)")
        return self


class Config(BaseModel):
    model_config = ConfigDict(extra="forbid")

    default_provider: str = "openrouter"
    default_preset: str | None = None
    providers: dict[str, ProviderConfig] = Field(default_factory=dict)
    # Filled in by the pipeline's preset module; kept raw here so config has no pipeline dependency.
    presets: dict[str, dict[str, Any]] = Field(default_factory=dict)
    prices: dict[str, dict[str, float]] = Field(default_factory=dict)
    tools: ToolsConfig = Field(default_factory=ToolsConfig)
    # [experiments.NAME]: A/B experiments on a model alias (experiment_spec.py; service/experiments.py).
    experiments: dict[str, ExperimentSpec] = Field(default_factory=dict)
    source: str | None = Field(default=None, exclude=True)

    @model_validator(mode="before")
    @classmethod
    def _builtin_kinds(cls, data: Any) -> Any:
        # An entry for a built-in provider overrides only the fields it sets, so it may leave out `kind`.
        providers = data.get("providers") if isinstance(data, dict) else None
        if isinstance(providers, dict):
            filled = {
                name: {"kind": BUILTIN_PROVIDERS[name].kind, **entry}
                if isinstance(entry, dict) and "kind" not in entry and name in BUILTIN_PROVIDERS
                else entry
                for name, entry in providers.items()
            }
            data = {**data, "providers": filled}
        return data


# Provider templates. `local` and `openrouter` are always on; the others turn on when the config file
# names them or their key variable is set, so `openai/gpt-5.5` keeps meaning OpenRouter's id otherwise.
BUILTIN_PROVIDERS: dict[str, ProviderConfig] = {
    "local": ProviderConfig(kind="local"),
    "openrouter": ProviderConfig(
        kind="openai_compat",
        base_url="https://openrouter.ai/api/v1",
        api_key_env="OPENROUTER_API_KEY",
        headers={"HTTP-Referer": "https://github.com/panelfuse/panelfuse", "X-Title": "panelfuse"},
    ),
    "openai": ProviderConfig(kind="openai_compat", base_url="https://api.openai.com/v1", api_key_env="OPENAI_API_KEY"),
    "anthropic": ProviderConfig(
        kind="anthropic", base_url="https://api.anthropic.com", api_key_env="ANTHROPIC_API_KEY"
    ),
    "deepseek": ProviderConfig(
        kind="openai_compat", base_url="https://api.deepseek.com/v1", api_key_env="DEEPSEEK_API_KEY"
    ),
    "together": ProviderConfig(
        kind="openai_compat", base_url="https://api.together.xyz/v1", api_key_env="TOGETHER_API_KEY"
    ),
    "ollama": ProviderConfig(kind="openai_compat", base_url="http://127.0.0.1:11434/v1"),
}
ALWAYS_ON = ("local", "openrouter")


class ConfigError(Exception):
    """A config problem, located: file, line (when known) and field."""

    def __init__(self, path: str | None, message: str, *, line: int | None = None, field: str | None = None):
        self.path, self.line, self.field, self.message = path, line, field, message
        where = path or "<config>"
        if line is not None:
            where += f", line {line}"
        if field:
            where += f", field '{field}'"
        super().__init__(f"{where}: {message}")


def default_config_path() -> Path:
    return Path(platformdirs.user_config_dir("panelfuse")) / "config.toml"


def find_config_path(explicit: str | os.PathLike[str] | None, env: Mapping[str, str]) -> Path | None:
    if explicit:
        return Path(explicit)
    if env.get("PANELFUSE_CONFIG"):
        return Path(env["PANELFUSE_CONFIG"])
    path = default_config_path()
    return path if path.exists() else None


_HEADER = re.compile(r"^\s*\[\[?\s*([^\]]+?)\s*\]\]?\s*(#.*)?$")
_KEY = re.compile(r"^\s*((?:[A-Za-z0-9_-]+|\"[^\"]*\"|'[^']*')(?:\s*\.\s*(?:[A-Za-z0-9_-]+|\"[^\"]*\"|'[^']*'))*)\s*=")


def _split_dotted(key: str) -> list[str]:
    parts = re.findall(r"\"([^\"]*)\"|'([^']*)'|([A-Za-z0-9_-]+)", key)
    return [a or b or c for a, b, c in parts]


def locate_line(text: str, loc: tuple[str | int, ...]) -> int | None:
    """The 1-based line of `text` that defines the deepest existing prefix of `loc`. Pure."""
    target = [str(p) for p in loc]
    table: list[str] = []
    best: tuple[int, int] | None = None  # (depth matched, line)
    for number, line in enumerate(text.splitlines(), start=1):
        if m := _HEADER.match(line):
            table = _split_dotted(m.group(1))
            path = table
        elif m := _KEY.match(line):
            path = table + _split_dotted(m.group(1))
        else:
            continue
        depth = len(path)
        if path == target[:depth] and (best is None or depth > best[0]):
            best = (depth, number)
    return best[1] if best else None


def load_config(path: str | os.PathLike[str] | None = None, env: Mapping[str, str] | None = None) -> Config:
    """Read and validate the config file (if any). Raises ConfigError naming file, line and field."""
    env = os.environ if env is None else env
    found = find_config_path(path, env)
    if found is None:
        return Config()
    try:
        text = found.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(str(found), f"cannot read the file ({exc.strerror or exc})") from exc
    except UnicodeDecodeError as exc:
        line = exc.object[: exc.start].count(b"\n") + 1
        raise ConfigError(str(found), "not valid UTF-8 (a TOML file must be UTF-8)", line=line) from exc
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        m = re.search(r"line (\d+)", str(exc))
        raise ConfigError(str(found), f"not valid TOML: {exc}", line=int(m.group(1)) if m else None) from exc
    try:
        cfg = Config.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = tuple(err["loc"])
        raise ConfigError(
            str(found), err["msg"], line=locate_line(text, loc), field=".".join(str(p) for p in loc)
        ) from exc
    cfg.source = str(found)
    return cfg


def active_providers(cfg: Config, env: Mapping[str, str] | None = None) -> dict[str, ProviderConfig]:
    """Every provider a model id may name: always-on built-ins, enabled templates, the file's own."""
    env = os.environ if env is None else env
    out: dict[str, ProviderConfig] = {}
    for name, template in BUILTIN_PROVIDERS.items():
        if name in ALWAYS_ON or name in cfg.providers or (template.api_key_env and env.get(template.api_key_env)):
            out[name] = template
    for name, own in cfg.providers.items():
        base = BUILTIN_PROVIDERS.get(name)
        if base is not None and base.kind == own.kind:
            # A file entry for a built-in overrides only the fields it sets.
            merged = base.model_dump() | own.model_dump(exclude_unset=True)
            out[name] = ProviderConfig.model_validate(merged)
        else:
            out[name] = own
    return out


def mask_secret(value: str | None) -> str | None:
    """Enough to tell keys apart (the last 4 characters of a long key), never enough to use one."""
    if not value:
        return value
    return f"****{value[-4:]}" if len(value) >= 16 else "****"


_SECRET_HEADER = re.compile(r"authorization|api[-_]?key|token|secret|cookie", re.I)


def effective_config(cfg: Config, env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The config as it will be used, secrets masked: what `panelfuse config show` prints."""
    env = os.environ if env is None else env
    providers = {}
    for name, p in active_providers(cfg, env).items():
        d = p.model_dump(exclude_none=True)
        key = p.resolved_api_key(env)
        d["api_key"] = mask_secret(key) if key else None
        d["headers"] = {k: (mask_secret(v) if _SECRET_HEADER.search(k) else v) for k, v in p.headers.items()}
        providers[name] = d
    return {
        "source": cfg.source or "(none: built-in defaults)",
        "default_provider": cfg.default_provider,
        "default_preset": cfg.default_preset,
        "providers": providers,
        "presets": cfg.presets,
        "prices": cfg.prices,
        "tools": _effective_tools(cfg.tools, env),
        "experiments": {name: e.model_dump(exclude_none=True) for name, e in cfg.experiments.items()},
    }


def _effective_tools(tools: ToolsConfig, env: Mapping[str, str]) -> dict[str, Any]:
    out = tools.model_dump()
    for name in ("searxng", "brave", "tavily"):
        key = getattr(tools, name).resolved_api_key(env)
        out[name]["api_key"] = mask_secret(key) if key else None
    return out
