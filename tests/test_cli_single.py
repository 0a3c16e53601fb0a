"""The CLI's single-model paths (`ask -m`, `models`, `config show`), a config file pointing at the fake."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest import require_local_extra
from panelfuse.cli import app
from panelfuse.testing import Failure, FakeUpstream, Script

SECRET = "sk-test-secret-0123456789"
# No real key may leak in from the machine (it would send `models` to the network), and rich must not
# wrap long paths across lines.
ENV = {
    "OPENROUTER_API_KEY": None,
    "OPENAI_API_KEY": None,
    "ANTHROPIC_API_KEY": None,
    "DEEPSEEK_API_KEY": None,
    "TOGETHER_API_KEY": None,
    "PANELFUSE_CONFIG": None,
    "COLUMNS": "500",
}


@pytest.fixture
def config_file(tmp_path: Path, fake: FakeUpstream) -> Path:
    path = tmp_path / "panelfuse.toml"
    path.write_text(
        f"""default_provider = "fake"

[providers.fake]
kind = "openai_compat"
base_url = "{fake.openai_base_url}"
api_key = "{SECRET}"
""",
        encoding="utf-8",
    )
    return path


def run(*args: str, env: dict | None = None):
    return CliRunner().invoke(app, list(args), env={**ENV, **(env or {})})


def test_ask_single_model_prints_scripted_text(fake: FakeUpstream, config_file: Path) -> None:
    fake.script("m1", Script(text="The scripted answer.", prompt_tokens=3, completion_tokens=4))
    result = run("--config", str(config_file), "ask", "-m", "fake/m1", "hi")
    assert result.exit_code == 0, result.output
    assert "The scripted answer." in result.output
    assert "fake/m1" in result.output and "3 in / 4 out" in result.output
    (rec,) = fake.requests_for("m1")
    assert rec.body["messages"] == [{"role": "user", "content": "hi"}]
    assert rec.headers["authorization"] == f"Bearer {SECRET}"


def test_ask_options_reach_the_request(fake: FakeUpstream, config_file: Path) -> None:
    result = run(
        "ask",
        "--config",
        str(config_file),
        "-m",
        "fake/m2",
        "--system",
        "Be brief.",
        "--max-tokens",
        "9",
        "--seed",
        "5",
        "--temperature",
        "0.5",
        "question?",
    )
    assert result.exit_code == 0, result.output
    body = fake.requests_for("m2")[0].body
    assert body["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "question?"},
    ]
    assert (body["max_tokens"], body["seed"], body["temperature"]) == (9, 5, 0.5)


def test_ask_json(fake: FakeUpstream, config_file: Path) -> None:
    fake.script("m1", Script(text="JSON answer.", prompt_tokens=3, completion_tokens=4, cost=0.01))
    result = run("--config", str(config_file), "ask", "-m", "fake/m1", "--json", "hi")
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["content"] == "JSON answer." and data["model"] == "fake/m1"
    assert data["finish_reason"] == "stop" and data["tool_calls"] == []
    assert data["usage"] == {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7, "cost": 0.01}


def test_ask_reads_question_from_stdin(fake: FakeUpstream, config_file: Path) -> None:
    result = CliRunner().invoke(
        app, ["--config", str(config_file), "ask", "-m", "fake/m1", "-"], input="from stdin\n", env=ENV
    )
    assert result.exit_code == 0, result.output
    assert fake.requests_for("m1")[0].body["messages"][-1]["content"] == "from stdin\n"


def test_ask_provider_error_exits_1(fake: FakeUpstream, config_file: Path) -> None:
    fake.script("m1", Script(failure=Failure.HTTP, status_code=401))
    result = run("--config", str(config_file), "ask", "-m", "fake/m1", "hi")
    assert result.exit_code == 1
    assert "auth" in result.output and "401" in result.output


def test_ask_unknown_fusion_preset_exits_2(fake: FakeUpstream, config_file: Path) -> None:
    result = run("--config", str(config_file), "ask", "-m", "panelfuse/fusion-nosuch", "hi")
    assert result.exit_code == 2
    assert "nosuch" in result.output
    assert fake.requests == []


def test_config_show_masks_the_key(config_file: Path) -> None:
    env = {"OPENROUTER_API_KEY": "sk-or-v1-verysecretkey"}
    result = run("--config", str(config_file), "config", "show", env=env)
    assert result.exit_code == 0, result.output
    assert SECRET not in result.output and "sk-or-v1-verysecretkey" not in result.output
    data = json.loads(result.output)
    assert data["source"] == str(config_file) and data["default_provider"] == "fake"
    assert data["providers"]["fake"]["api_key"] not in (None, SECRET)
    assert data["providers"]["openrouter"]["api_key"] not in (None, "sk-or-v1-verysecretkey")


@pytest.mark.parametrize("command", [["config", "show"], ["ask", "-m", "fake/m1", "hi"], ["models"]])
def test_bad_config_exits_2_with_file_and_line(tmp_path: Path, command: list[str]) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('default_provider = "x"\n\n[providers.x]\nkind = "openai_compat"\nbogus = 1\n')
    result = run("--config", str(path), *command)
    assert result.exit_code == 2
    assert str(path) in result.output and "line 5" in result.output and "providers.x.bogus" in result.output


def test_toml_syntax_error_exits_2(tmp_path: Path) -> None:
    path = tmp_path / "broken.toml"
    path.write_text('default_provider = "x"\nkind = = 1\n')
    result = run("--config", str(path), "config", "show")
    assert result.exit_code == 2
    assert str(path) in result.output and "line 2" in result.output


def test_config_via_env_variable(fake: FakeUpstream, config_file: Path) -> None:
    result = run("ask", "-m", "fake/m1", "hi", env={"PANELFUSE_CONFIG": str(config_file)})
    assert result.exit_code == 0, result.output
    assert len(fake.requests_for("m1")) == 1


def test_models_lists_the_fakes_models(fake: FakeUpstream, config_file: Path) -> None:
    fake.script("m1", Script())
    fake.models = ["extra-model"]
    result = run("--config", str(config_file), "models")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert "fake/m1" in lines and "fake/extra-model" in lines
    assert "OPENROUTER_API_KEY" in result.output  # the keyless provider is skipped, not asked
    assert all(r.path == "/v1/models" for r in fake.requests)


@pytest.mark.local_model
def test_ask_local_model(tmp_path: Path) -> None:
    require_local_extra()
    empty = tmp_path / "empty.toml"
    empty.write_text("")
    args = ["ask", "-m", "local/smollm2", "--max-tokens", "8", "--seed", "1", "hi"]
    result = run("--config", str(empty), *args)
    assert result.exit_code == 0, result.output
    answer, sep, _stats = result.output.rpartition("local/smollm2 ·")
    assert sep, result.output  # the stats line names the model
    assert answer.strip()


def test_ask_without_key_names_the_variable(config_file: Path) -> None:
    result = run("--config", str(config_file), "ask", "-m", "openrouter/openai/gpt-5.5", "hi")
    assert result.exit_code == 1
    assert "OPENROUTER_API_KEY" in result.output
