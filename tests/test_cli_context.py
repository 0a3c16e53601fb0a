"""The top-level options reach commands through typer's context, not a module global; a command's own
--config wins; `panelfuse eval` works without importing panelfuse.cli (no import cycle)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import click
import pytest
import typer
from typer.testing import CliRunner

from panelfuse.cli import app
from panelfuse.cli.context import CliContext

ENV = {"PANELFUSE_CONFIG": None, "OPENROUTER_API_KEY": None, "COLUMNS": "500"}
GOOD = 'default_provider = "fake"\n[providers.fake]\nkind = "openai_compat"\nbase_url = "http://127.0.0.1:9"\n'
BAD = 'default_provider = "x"\n\n[providers.x]\nkind = "openai_compat"\nbogus = 1\n'


def run(*args: str):
    return CliRunner().invoke(app, list(args), env=ENV)


@pytest.fixture
def good(tmp_path: Path) -> str:
    path = tmp_path / "good.toml"
    path.write_text(GOOD)
    return str(path)


@pytest.fixture
def bad(tmp_path: Path) -> str:
    path = tmp_path / "bad.toml"
    path.write_text(BAD)
    return str(path)


def test_top_level_config_reaches_a_subcommand(good: str) -> None:
    result = run("--config", good, "config", "show")
    assert result.exit_code == 0, result.output
    assert good in result.output


def test_own_config_wins_over_the_top_level_one(good: str, bad: str) -> None:
    result = run("--config", bad, "config", "show", "--config", good)
    assert result.exit_code == 0, result.output
    assert good in result.output


@pytest.mark.parametrize("own", [False, True])
def test_eval_reads_the_config_from_the_context(good: str, bad: str, tmp_path: Path, own: bool) -> None:
    # The bad file is the one in effect either way, so the error proves which --config eval used.
    args = ["eval", "sample", "-c", "single:fake/m1", "--grader", "fake/g", "--out", str(tmp_path / "o")]
    argv = ["--config", good, *args, "--config", bad] if own else ["--config", bad, *args]
    result = run(*argv)
    assert result.exit_code == 2
    assert bad in result.output and "providers.x.bogus" in result.output


def test_context_default_when_no_callback_ran() -> None:
    assert CliContext.of(typer.Context(click.Command("x"))) == CliContext()
    assert CliContext(config_path="/a").config(None) == "/a"
    assert CliContext(config_path="/a").config("/b") == "/b"


def test_evals_cli_does_not_import_the_cli() -> None:
    code = (
        "import sys, panelfuse.evals.cli\n"
        "bad = [m for m in sys.modules if m == 'panelfuse.cli' or m.startswith('panelfuse.cli.')]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
