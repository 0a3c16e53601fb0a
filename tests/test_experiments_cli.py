"""`panelfuse experiments list / pause / resume / stop / start`: the same state changes as the admin
API, straight in the store, with the same refusals."""

from __future__ import annotations

import asyncio
from typing import Any

from typer.testing import CliRunner

from panelfuse.cli.root import app
from panelfuse.store import ExperimentStore, RunStore

DEFINITION = {
    "models": ["gpt-default"],
    "arms": [
        {"name": "single", "model": "fake/m1", "share": 1},
        {"name": "fusion", "model": "panelfuse/fusion", "share": 1},
        {"name": "shadowy", "model": "fake/m2", "shadow": True},
    ],
}


def run(db: str, *args: str) -> Any:
    return CliRunner().invoke(app, ["experiments", *args, "--db", db], env={"COLUMNS": "300"})


def state(db: str) -> tuple[str, str | None, tuple[str, ...]]:
    async def read() -> tuple[str, str | None, tuple[str, ...]]:
        store = await RunStore.open(db)
        try:
            row = await ExperimentStore(store.database).get("ab")
            assert row is not None
            return row.status, row.chosen_arm, row.paused_arms
        finally:
            await store.close()

    return asyncio.run(read())


def test_the_cli_manages_an_experiments_state(tmp_path):
    db = f"sqlite+aiosqlite:///{tmp_path}/runs.db"

    async def create() -> None:
        store = await RunStore.open(db)
        try:
            await ExperimentStore(store.database).create("ab", DEFINITION, "api")
        finally:
            await store.close()

    assert "no experiments" in run(db, "list").output
    asyncio.run(create())
    assert "ab: running; gpt-default; arms: single, fusion, shadowy [api]" in run(db, "list").output
    assert run(db, "pause", "ab", "fusion").exit_code == 0
    assert state(db) == ("running", None, ("fusion",))
    assert "fusion (paused)" in run(db, "list").output
    refused = run(db, "pause", "ab", "single")
    assert refused.exit_code == 1 and "no arm to answer" in refused.output
    missing = run(db, "pause", "ab", "nope")
    assert missing.exit_code == 1 and "no arm 'nope'" in missing.output
    assert run(db, "resume", "ab", "fusion").exit_code == 0
    assert state(db) == ("running", None, ())
    assert run(db, "stop", "ab").exit_code == 0
    assert state(db) == ("stopped", "single", ())  # the control by default
    assert run(db, "stop", "ab", "--arm", "fusion").exit_code == 0
    assert "ab: stopped → fusion" in run(db, "list").output
    assert run(db, "start", "ab").exit_code == 0
    assert state(db) == ("running", None, ())
    unknown = run(db, "stop", "nope")
    assert unknown.exit_code == 1 and "no experiment 'nope'" in unknown.output
