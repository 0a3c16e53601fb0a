"""Config loading, located errors, active providers and the masked effective config."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from panelfuse import config as config_mod
from panelfuse.config import (
    BUILTIN_PROVIDERS,
    Config,
    ConfigError,
    ProviderConfig,
    active_providers,
    effective_config,
    load_config,
    locate_line,
    mask_secret,
)


@pytest.fixture(autouse=True)
def no_user_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point the user-dir default at a file that does not exist: tests never read the real home dir."""
    missing = tmp_path / "user-dir" / "config.toml"
    monkeypatch.setattr(config_mod, "default_config_path", lambda: missing)
    return missing


def write(tmp_path: Path, text: str, name: str = "config.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


# ---- finding and loading -------------------------------------------------------------------------


def test_no_file_gives_defaults() -> None:
    cfg = load_config(None, env={})
    assert cfg == Config()
    assert cfg.default_provider == "openrouter" and cfg.providers == {} and cfg.source is None


def test_user_dir_file_is_used_when_present(no_user_config: Path) -> None:
    no_user_config.parent.mkdir()
    no_user_config.write_text('default_provider = "local"\n')
    cfg = load_config(None, env={})
    assert cfg.default_provider == "local" and cfg.source == str(no_user_config)


def test_explicit_path(tmp_path: Path) -> None:
    path = write(tmp_path, 'default_provider = "local"\ndefault_preset = "budget"\n')
    cfg = load_config(path, env={})
    assert cfg.default_provider == "local" and cfg.default_preset == "budget"
    assert cfg.source == str(path)
    assert load_config(str(path), env={}).default_provider == "local"  # str paths too


def test_env_variable_path(tmp_path: Path) -> None:
    path = write(tmp_path, 'default_provider = "ollama"\n')
    cfg = load_config(None, env={"PANELFUSE_CONFIG": str(path)})
    assert cfg.default_provider == "ollama" and cfg.source == str(path)


def test_explicit_path_wins_over_env(tmp_path: Path) -> None:
    explicit = write(tmp_path, 'default_provider = "explicit"\n', "a.toml")
    from_env = write(tmp_path, 'default_provider = "env"\n', "b.toml")
    cfg = load_config(explicit, env={"PANELFUSE_CONFIG": str(from_env)})
    assert cfg.default_provider == "explicit"


def test_empty_file_gives_defaults_with_source(tmp_path: Path) -> None:
    path = write(tmp_path, "# nothing here\n")
    cfg = load_config(path, env={})
    assert cfg.default_provider == "openrouter" and cfg.source == str(path)


def test_missing_explicit_file_is_config_error(tmp_path: Path) -> None:
    path = tmp_path / "absent.toml"
    with pytest.raises(ConfigError) as e:
        load_config(path, env={})
    assert str(path) in str(e.value) and "cannot read" in str(e.value)
    with pytest.raises(ConfigError):
        load_config(None, env={"PANELFUSE_CONFIG": str(path)})


def test_full_provider_entry(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
default_provider = "vllm"

[providers.vllm]
kind = "openai_compat"
base_url = "http://127.0.0.1:8000/v1"
api_key_env = "VLLM_KEY"
timeout = 30
models = { small = "qwen-small" }

[providers.vllm.headers]
X-Team = "research"
""",
    )
    cfg = load_config(path, env={})
    pc = cfg.providers["vllm"]
    assert pc.kind == "openai_compat" and pc.base_url == "http://127.0.0.1:8000/v1"
    assert pc.timeout == 30.0 and pc.headers == {"X-Team": "research"}
    assert pc.models == {"small": "qwen-small"}
    assert pc.resolved_api_key({"VLLM_KEY": "k1"}) == "k1" and pc.resolved_api_key({}) is None


# ---- located errors ------------------------------------------------------------------------------


def test_toml_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path, 'default_provider = "local"\n\n[providers.x]\nkind = = "local"\n')
    with pytest.raises(ConfigError) as e:
        load_config(path, env={})
    err = e.value
    assert err.path == str(path) and err.line == 4
    assert str(path) in str(err) and "line 4" in str(err) and "TOML" in str(err)


def test_unknown_provider_field_is_located(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """# my config
default_provider = "x"

[providers.x]
kind = "openai_compat"
base_url = "http://h/v1"
bogus_field = 1
""",
    )
    with pytest.raises(ConfigError) as e:
        load_config(path, env={})
    err = e.value
    assert err.line == 7 and err.field == "providers.x.bogus_field"
    text = str(err)
    assert str(path) in text and "line 7" in text and "providers.x.bogus_field" in text


def test_wrong_type_is_located(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """[providers.other]
kind = "local"

[providers.x]
kind = "openai_compat"
timeout = "abc"
""",
    )
    with pytest.raises(ConfigError) as e:
        load_config(path, env={})
    err = e.value
    assert err.line == 6 and err.field == "providers.x.timeout"
    assert str(path) in str(err) and "line 6" in str(err) and "providers.x.timeout" in str(err)


def test_out_of_range_timeout_is_located(tmp_path: Path) -> None:
    path = write(tmp_path, '[providers.x]\nkind = "local"\ntimeout = -1\n')
    with pytest.raises(ConfigError) as e:
        load_config(path, env={})
    assert e.value.line == 3 and e.value.field == "providers.x.timeout"


def test_bad_kind_is_located(tmp_path: Path) -> None:
    path = write(tmp_path, '\n[providers.x]\nkind = "grpc"\n')
    with pytest.raises(ConfigError) as e:
        load_config(path, env={})
    assert e.value.line == 3 and e.value.field == "providers.x.kind"


def test_missing_kind_for_a_new_provider_points_at_its_table(tmp_path: Path) -> None:
    path = write(tmp_path, 'default_provider = "x"\n[providers.x]\nbase_url = "http://h"\n')
    with pytest.raises(ConfigError) as e:
        load_config(path, env={})
    assert e.value.line == 2 and e.value.field == "providers.x.kind"


def test_unknown_top_level_field_is_located(tmp_path: Path) -> None:
    path = write(tmp_path, 'default_provider = "x"\ndefualt_preset = "budget"\n')
    with pytest.raises(ConfigError) as e:
        load_config(path, env={})
    assert e.value.line == 2 and e.value.field == "defualt_preset"


def test_error_in_dotted_keys_and_quoted_tables(tmp_path: Path) -> None:
    path = write(tmp_path, 'providers.x.kind = "local"\nproviders.x.nope = 1\n')
    with pytest.raises(ConfigError) as e:
        load_config(path, env={})
    assert e.value.line == 2 and e.value.field == "providers.x.nope"

    text = '[providers."my-box"]\nkind = "local"\n\n[providers."my-box".headers]\nA = 1\n'
    path = write(tmp_path, text, "q.toml")
    with pytest.raises(ConfigError) as e:
        load_config(path, env={})
    assert e.value.line == 5 and e.value.field == "providers.my-box.headers.A"


# ---- locate_line ---------------------------------------------------------------------------------


def test_locate_line_tables_and_keys() -> None:
    text = 'a = 1\n\n[providers.x]\nkind = "local"\ntimeout = 3\n\n[providers.y]\ntimeout = 4\n'
    assert locate_line(text, ("a",)) == 1
    assert locate_line(text, ("providers", "x")) == 3
    assert locate_line(text, ("providers", "x", "timeout")) == 5
    assert locate_line(text, ("providers", "y", "timeout")) == 8
    # A missing key falls back to the deepest existing prefix: its table header.
    assert locate_line(text, ("providers", "y", "kind")) == 7
    assert locate_line(text, ("nothing",)) is None


def test_locate_line_dotted_keys() -> None:
    text = 'providers.x.kind = "local"\nproviders . y . timeout = 2\n[providers]\nz.kind = "local"\n'
    assert locate_line(text, ("providers", "x", "kind")) == 1
    assert locate_line(text, ("providers", "y", "timeout")) == 2
    assert locate_line(text, ("providers", "z", "kind")) == 4


def test_locate_line_quoted_table_names_and_keys() -> None:
    text = (
        '[providers."my.box"]\nkind = "local"\n'
        "[providers.'single']\n'odd key' = 1\n"
        '[ providers . "spaced" ]  # comment\n"timeout" = 5\n'
    )
    assert locate_line(text, ("providers", "my.box", "kind")) == 2
    assert locate_line(text, ("providers", "my.box")) == 1
    assert locate_line(text, ("providers", "single", "odd key")) == 4
    assert locate_line(text, ("providers", "spaced", "timeout")) == 6


def test_locate_line_ignores_comments_and_takes_integer_parts() -> None:
    text = '# providers.x.kind = "no"\n[providers.x]\n  # kind = "no"\nkind = "local"\n'
    assert locate_line(text, ("providers", "x", "kind")) == 4
    assert locate_line("[[items]]\nname = 1\n", ("items", 0, "name")) == 1  # array index: its header


# ---- active providers ----------------------------------------------------------------------------


def test_always_on_providers_only_by_default() -> None:
    assert set(active_providers(Config(), env={})) == {"local", "openrouter"}


@pytest.mark.parametrize(
    ("name", "var"),
    [("openai", "OPENAI_API_KEY"), ("anthropic", "ANTHROPIC_API_KEY"), ("deepseek", "DEEPSEEK_API_KEY")],
)
def test_builtin_appears_when_its_key_is_set(name: str, var: str) -> None:
    assert name not in active_providers(Config(), env={})
    assert name not in active_providers(Config(), env={var: ""})  # an empty variable is not a key
    active = active_providers(Config(), env={var: "k"})
    assert name in active and active[name] == BUILTIN_PROVIDERS[name]


def test_builtin_appears_when_named_in_the_file(tmp_path: Path) -> None:
    text = '[providers.anthropic]\nkind = "anthropic"\n\n[providers.ollama]\nkind = "openai_compat"\n'
    path = write(tmp_path, text)
    active = active_providers(load_config(path, env={}), env={})
    assert {"anthropic", "ollama", "local", "openrouter"} <= set(active)
    assert "openai" not in active
    assert active["anthropic"].base_url == "https://api.anthropic.com"
    assert active["ollama"].base_url == "http://127.0.0.1:11434/v1"


def test_user_named_provider_is_active() -> None:
    own = ProviderConfig(kind="openai_compat", base_url="http://x/v1")
    active = active_providers(Config(providers={"mine": own}), env={})
    assert active["mine"] == own


def test_file_entry_for_builtin_overrides_only_the_fields_it_sets(tmp_path: Path) -> None:
    path = write(tmp_path, '[providers.openrouter]\nkind = "openai_compat"\ntimeout = 12\n')
    pc = active_providers(load_config(path, env={}), env={})["openrouter"]
    base = BUILTIN_PROVIDERS["openrouter"]
    assert pc.timeout == 12.0
    assert pc.base_url == base.base_url and pc.api_key_env == base.api_key_env and pc.headers == base.headers


def test_builtin_override_may_leave_out_kind(tmp_path: Path) -> None:
    path = write(tmp_path, '[providers.openrouter]\nbase_url = "http://proxy/v1"\n')
    pc = active_providers(load_config(path, env={}), env={})["openrouter"]
    assert pc.kind == "openai_compat" and pc.base_url == "http://proxy/v1"
    assert pc.api_key_env == "OPENROUTER_API_KEY" and pc.headers == BUILTIN_PROVIDERS["openrouter"].headers


def test_builtin_override_replaces_headers_and_key(tmp_path: Path) -> None:
    path = write(tmp_path, '[providers.openai]\napi_key = "sk-file"\n[providers.openai.headers]\nX-A = "1"\n')
    pc = active_providers(load_config(path, env={}), env={})["openai"]
    assert pc.headers == {"X-A": "1"} and pc.resolved_api_key({"OPENAI_API_KEY": "sk-env"}) == "sk-file"
    assert pc.base_url == "https://api.openai.com/v1"


def test_builtin_name_with_another_kind_is_taken_whole() -> None:
    own = ProviderConfig(kind="anthropic", base_url="http://claude-proxy")
    pc = active_providers(Config(providers={"openai": own}), env={})["openai"]
    assert pc == own and pc.api_key_env is None


# ---- effective config ----------------------------------------------------------------------------

SECRET = "sk-or-v1-0123456789abcdefSECRET"
FILE_SECRET = "file-secret-9876543210-abcdef"
HEADER_SECRET = "hdr-secret-555544443333"


def test_effective_config_masks_keys_and_secret_headers(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        f"""
[providers.mine]
kind = "openai_compat"
base_url = "http://mine/v1"
api_key = "{FILE_SECRET}"

[providers.mine.headers]
X-Api-Key = "{HEADER_SECRET}"
Authorization = "Bearer {HEADER_SECRET}"
X-Auth-Token = "{HEADER_SECRET}"
Cookie = "session={HEADER_SECRET}"
X-Title = "visible-title"
""",
    )
    env = {"OPENROUTER_API_KEY": SECRET}
    eff = effective_config(load_config(path, env=env), env=env)
    dumped = json.dumps(eff)
    for secret in (SECRET, FILE_SECRET, HEADER_SECRET):
        assert secret not in dumped
    assert eff["source"] == str(path)
    assert eff["providers"]["openrouter"]["api_key"] == mask_secret(SECRET)
    assert eff["providers"]["mine"]["api_key"] == mask_secret(FILE_SECRET)
    headers = eff["providers"]["mine"]["headers"]
    assert headers["X-Title"] == "visible-title"
    assert headers["X-Api-Key"] == headers["X-Auth-Token"] == mask_secret(HEADER_SECRET)
    assert headers["Authorization"] == mask_secret(f"Bearer {HEADER_SECRET}")
    assert headers["Cookie"] == mask_secret(f"session={HEADER_SECRET}")
    assert eff["providers"]["local"]["api_key"] is None
    # Non-secret headers of built-ins stay readable.
    assert eff["providers"]["openrouter"]["headers"]["X-Title"] == "panelfuse"


def test_effective_config_without_file() -> None:
    eff = effective_config(Config(), env={})
    assert eff["source"].startswith("(none")
    assert set(eff["providers"]) == {"local", "openrouter"}
    assert eff["providers"]["openrouter"]["api_key"] is None
    json.dumps(eff)  # serialisable as printed by `config show`


def test_mask_secret() -> None:
    assert mask_secret(None) is None and mask_secret("") == ""
    assert mask_secret("short") == "****" and mask_secret("12345678") == "****"
    masked = mask_secret("sk-abcdefghijklmnop")
    assert masked == "****mnop"  # the last 4 tell keys apart; nothing else leaks
    assert mask_secret("sk-abcdefghij") == "****"  # a short key shows nothing


def test_non_utf8_file_is_a_located_config_error(tmp_path: Path) -> None:
    path = tmp_path / "latin1.toml"
    path.write_bytes(b'default_provider = "x"\n\n# caf\xe9\n')
    with pytest.raises(ConfigError) as e:
        load_config(path, env={})
    assert e.value.line == 3 and str(path) in str(e.value) and "UTF-8" in str(e.value)
