"""The reliability load test's upstream, run as its own process: `panelfuse.testing.FakeUpstream`
with every model answering from a seeded random mix of good answers and faults (500, 429 with
Retry-After, connection reset, a stream cut midway, malformed SSE, a malformed chunk, an empty
answer, a first byte slower than the run's deadline, an unreadable analysis from the judge).

    python bench/fault_upstream.py [--seed 7] [--fault-rate 0.3]

Prints `ready <port>` on stdout once listening, then serves until killed.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import random
import re
import signal
import sys
import threading
from collections.abc import Callable
from typing import Any

from panelfuse.testing import Failure, FakeUpstream, Script

_LABELS = re.compile(r'label=\\"([A-H])\\"')
ANSWER = "Air scatters short wavelengths more, so the daytime sky looks blue to us. " * 3


def analysis(body: dict[str, Any]) -> str:
    labels = sorted(set(_LABELS.findall(json.dumps(body.get("messages", []))))) or ["A"]
    return json.dumps(
        {
            "consensus": ["air scatters blue light more"],
            "contradictions": [],
            "partial_coverage": [{"models": labels[:2], "point": "sunsets are red"}],
            "unique_insights": [{"model": labels[0], "insight": "polarisation"}],
            "blind_spots": ["clouds"],
            "anomalies": [],
        }
    )


# (weight, what to answer) per role: the good answer first, then the faults.
def _faults(slow_s: float) -> list[tuple[float, Callable[[Script], Script]]]:
    def with_(**kw: Any) -> Callable[[Script], Script]:
        return lambda good: dataclasses.replace(good, **kw)

    return [
        (6, with_(failure=Failure.HTTP_500)),
        (5, with_(failure=Failure.RATE_LIMIT, retry_after=0.05)),
        (3, with_(failure=Failure.RESET)),
        (4, with_(failure=Failure.CUT, text=ANSWER, cut_after_tokens=5)),
        (3, with_(failure=Failure.MALFORMED_SSE, text=ANSWER)),
        (3, with_(failure=Failure.MALFORMED_CHUNK, raw_chunk='{"choices": ["x"]}')),
        (2, with_(failure=Failure.EMPTY)),
        (2, with_(text=ANSWER, latency=slow_s)),
    ]


class Picker:
    def __init__(self, seed: int, fault_rate: float, slow_s: float) -> None:
        self.rng = random.Random(seed)
        self.lock = threading.Lock()
        self.fault_rate = fault_rate
        self.faults = _faults(slow_s)

    def pick(self, good: Script) -> Script:
        with self.lock:
            if self.rng.random() >= self.fault_rate:
                return good
            weights = [w for w, _ in self.faults]
            _, make = self.rng.choices(self.faults, weights=weights)[0]
        return make(good)

    def member(self, body: dict[str, Any]) -> Script:
        with self.lock:
            latency = self.rng.lognormvariate(-2.3, 0.6)  # median 0.1 s
        return self.pick(Script(text=ANSWER, latency=latency, prompt_tokens=40, completion_tokens=60))

    def judge(self, body: dict[str, Any]) -> Script:
        with self.lock:
            garbled = self.rng.random() < self.fault_rate / 4
        if garbled:  # an analysis the gateway cannot read: repaired once, else dropped (degraded)
            return Script(text="{'consensus': [unterminated", prompt_tokens=300, completion_tokens=20)
        return self.pick(Script(text=analysis(body), prompt_tokens=300, completion_tokens=80))

    def synth(self, body: dict[str, Any]) -> Script:
        return self.pick(Script(text=ANSWER, prompt_tokens=400, completion_tokens=60))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--fault-rate", type=float, default=0.3, help="share of calls that get a fault")
    ap.add_argument("--slow-s", type=float, default=30.0, help="first-byte delay of the 'slow' fault")
    args = ap.parse_args()
    picker = Picker(args.seed, args.fault_rate, args.slow_s)
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})  # before any thread starts
    fake = FakeUpstream(seed=args.seed)
    fake.start()
    for m in ("m1", "m2", "m3"):
        fake.script(m, picker.member)
    fake.script("judge", picker.judge)
    fake.script("synth", picker.synth)
    print(f"ready {fake.url.rsplit(':', 1)[1]}", flush=True)
    signal.sigwait({signal.SIGTERM, signal.SIGINT})
    fake.stop()
    sys.exit(0)


if __name__ == "__main__":
    main()
