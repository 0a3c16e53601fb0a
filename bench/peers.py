"""The other gateways the benchmark measures beside ours, and the process helpers both use. None of
them is a dependency: each lives in its own throwaway venv and is named on the command line
(`--peer litellm=/path/to/litellm`, `--peer optillm=/path/to/optillm`). Each starts as its own
process in front of the same fake upstream and names the rows it is measured on."""

from __future__ import annotations

import os
import socket
import subprocess
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Set for a peer's process: nothing here may reach the internet (model hubs, telemetry, price maps).
OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "LITELLM_LOCAL_MODEL_COST_MAP": "True",
    "LITELLM_TELEMETRY": "False",
    "DO_NOT_TRACK": "1",
    "GRADIO_ANALYTICS_ENABLED": "False",
    "TOKENIZERS_PARALLELISM": "false",
}


def wait_http(url: str, proc: subprocess.Popen[Any], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{url}: the process exited ({proc.returncode})")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"{url} did not answer within {timeout} s")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def stop(proc: subprocess.Popen[Any] | None) -> None:
    if proc is not None and proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()


def pin(pid: int, cpus: set[int]) -> list[int]:
    """Pin every thread of `pid` to `cpus` (threads it starts later inherit it from their creator) and
    return the CPUs the kernel now allows it, read back from /proc."""
    for task in Path(f"/proc/{pid}/task").iterdir():
        os.sched_setaffinity(int(task.name), cpus)
    return sorted(os.sched_getaffinity(pid))


def start_litellm(binary: str, workdir: Path, fake_port: int, port: int) -> subprocess.Popen[Any]:
    config = workdir / "litellm.yaml"
    config.write_text(
        "model_list:\n"
        "  - model_name: fake/plain\n"
        "    litellm_params:\n"
        "      model: openai/plain\n"
        f"      api_base: http://127.0.0.1:{fake_port}/v1\n"
        "      api_key: bench\n"
        "litellm_settings:\n"
        "  drop_params: true\n"
        "  disable_logging: true\n"
    )
    cmd = [binary, "--config", str(config), "--port", str(port), "--num_workers", "1"]
    # Loopback only, for the benchmark: LiteLLM refuses to start without a master key otherwise.
    env = {
        **os.environ,
        **OFFLINE_ENV,
        "LITELLM_LOG": "ERROR",
        "LITELLM_DANGEROUSLY_PERMIT_WEAK_OR_UNSET_MASTER_KEY": "true",
    }
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=(workdir / "litellm.log").open("w"), env=env)
    wait_http(f"http://127.0.0.1:{port}/health/liveliness", proc, timeout=180)
    return proc


def start_optillm(binary: str, workdir: Path, fake_port: int, port: int) -> subprocess.Popen[Any]:
    """optillm 0.4 (Flask's server, a thread per request). `--no-ssl-verify`: otherwise it loads the
    certificate bundle for the new upstream client it builds per request, even for plain http, which
    would charge it for work a loopback deployment can switch off. OPENAI_API_KEY picks its OpenAI
    client (any value); OPTILLM_API_KEY would switch it to local inference, so it is never passed."""
    env = {**os.environ, **OFFLINE_ENV, "OPENAI_API_KEY": "bench"}
    env.pop("OPTILLM_API_KEY", None)
    cmd = [
        binary,
        "--base-url",
        f"http://127.0.0.1:{fake_port}/v1",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--no-ssl-verify",
        "--log",
        "warning",
    ]
    # Its working directory is searched for plugins too: a fresh one holds none.
    run_dir = workdir / "optillm"
    run_dir.mkdir(exist_ok=True)
    log = (workdir / "optillm.log").open("w")
    proc = subprocess.Popen(cmd, cwd=run_dir, stdout=subprocess.DEVNULL, stderr=log, env=env)
    wait_http(f"http://127.0.0.1:{port}/health", proc, timeout=180)
    return proc


@dataclass(frozen=True)
class PeerRow:
    label: str
    model: str
    calls: int  # upstream calls per request, one after another: the critical path is calls × latency
    stream: bool


@dataclass(frozen=True)
class Peer:
    start: Callable[[str, Path, int, int], subprocess.Popen[Any]]
    rows: tuple[PeerRow, ...]


PEERS = {
    "litellm": Peer(start_litellm, (PeerRow("plain model proxied", "fake/plain", 1, True),)),
    "optillm": Peer(
        start_optillm,
        (
            PeerRow("pass-through", "fake/plain", 1, True),
            # moa: 3 calls in turn (3 candidates asked for with n=3, a critique, the answer), not
            # streamed from the upstream; the fake answers one choice, which optillm pads to 3.
            PeerRow("moa (3 calls, not streamed)", "moa-fake/plain", 3, False),
        ),
    ),
}
