"""The README's experiment walkthrough, run as written: the fake provider, the config, the gateway,
forty requests with feedback, the report and the stop, in one shell in a scratch directory.

Two substitutions only: free ports for 9100 and 8000, and the installed `panelfuse` binary (and this
Python) for `./scripts/panelfuse` (and `.venv/bin/python`), which is that binary behind the install
step the README's first command has already done."""

from __future__ import annotations

import asyncio
import csv
import re
import socket
import subprocess
import sys
from pathlib import Path

from panelfuse.store import ExperimentStore, RunStore

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def walkthrough() -> tuple[str, str, str]:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("### Experiments: A/B tests, shadow runs, the report", 1)[1].split("\n### ", 1)[0]
    (setup, report) = re.findall(r"```sh\n(.*?)```", section, re.S)
    (client,) = re.findall(r"```python\n(.*?)```", section, re.S)
    return setup, client, report


def test_the_readme_experiment_runs_as_written(tmp_path):
    setup, client, report = walkthrough()
    script = f"{setup}\n\"$PY\" - <<'PYEOF'\n{client}PYEOF\n{report}"
    fake_port, gateway_port = free_port(), free_port()
    script = script.replace("9100", str(fake_port)).replace("8000", str(gateway_port))
    script = script.replace("./scripts/panelfuse", str(Path(sys.executable).parent / "panelfuse"))
    script = script.replace(".venv/bin/python bench/", f'"$PY" {ROOT}/bench/')
    # Whatever happens, no process is left behind.
    script = "set -e\nPY=" + sys.executable + "\ntrap 'kill $(jobs -p) 2>/dev/null || true' EXIT\n" + script
    done = subprocess.run(
        ["bash", "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=300, env={"PATH": "/usr/bin:/bin"}
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    # The report: every arm, on stdout and in the files.
    for arm in ("single", "fusion", "escalate"):
        assert f"`{arm}`" in done.stdout or f"| {arm}" in done.stdout, done.stdout
    with (tmp_path / "report" / "report.csv").open() as f:
        rows = {row["arm"]: row for row in csv.DictReader(f)}
    assert set(rows) == {"single", "fusion", "escalate"}
    primary = int(rows["single"]["requests"]) + int(rows["fusion"]["requests"])
    assert primary == 40 and 0 < int(rows["single"]["requests"]) < 40
    assert (tmp_path / "report" / "report.md").exists()
    assert "all traffic to fusion" in done.stdout

    async def stored():
        store = await RunStore.open(f"sqlite+aiosqlite:///{tmp_path / 'experiment.db'}")
        try:
            xs = ExperimentStore(store.database)
            return await xs.get("fusion-vs-single"), await xs.requests("fusion-vs-single")
        finally:
            await store.close()

    experiment, requests = asyncio.run(stored())
    assert experiment is not None and (experiment.status, experiment.chosen_arm) == ("stopped", "fusion")
    answered = [r for r in requests if not r.shadow]
    assert len(answered) == 40 and all(r.status == "completed" and r.cost for r in answered)
    assert sum(1 for r in answered if r.feedback_score == -1.0) == 10  # every fourth user
    assert any(r.shadow and r.arm == "escalate" for r in requests)
