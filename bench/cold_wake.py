"""A control for "Why C=1 costs more" (docs/performance.md): the same fixed pure-Python work (parse and
re-frame 200 SSE chunks, as the proxy does), timed by the thread's own CPU clock, run back to back and
run after sleeping as long as the bench's upstream takes (200 ms). No gateway, no sockets, no store:
whatever the second costs above the first is what a sleep does to this machine, not to our code.

    .venv/bin/python bench/cold_wake.py                # 4 alternations of 60 passes each
    .venv/bin/python bench/cold_wake.py --sleep-ms 50
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import orjson

CHUNKS = [
    orjson.dumps(
        {
            "id": "chatcmpl-x",
            "object": "chat.completion.chunk",
            "choices": [{"index": 0, "delta": {"content": f"t{i} "}}],
        }
    )
    for i in range(200)
]


def one_pass() -> int:
    """One answer's worth of framing: each chunk parsed, re-shaped and written as an SSE frame."""
    frames = []
    for raw in CHUNKS:
        chunk = orjson.loads(raw)
        out = {"id": chunk["id"], "object": chunk["object"], "model": "fake/plain", "choices": chunk["choices"]}
        frames.append("data: " + orjson.dumps(out).decode() + "\n\n")
    return len("".join(frames))


def cpu_ms_per_pass(sleep_s: float, passes: int) -> float:
    spent = []
    for _ in range(passes):
        time.sleep(sleep_s)
        started = time.thread_time_ns()
        one_pass()
        spent.append((time.thread_time_ns() - started) / 1e6)
    return statistics.median(spent)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sleep-ms", type=float, default=200.0)
    parser.add_argument("--passes", type=int, default=60)
    parser.add_argument("--alternations", type=int, default=4)
    args = parser.parse_args()
    one_pass()  # imports and first-call costs out of the way
    warm, after_sleep = [], []
    for _ in range(args.alternations):
        warm.append(cpu_ms_per_pass(0.0, args.passes))
        after_sleep.append(cpu_ms_per_pass(args.sleep_ms / 1000, args.passes))
    ratios = [s / w for w, s in zip(warm, after_sleep, strict=True)]
    print(f"back to back:           {' · '.join(f'{w:.3f}' for w in warm)} ms CPU per pass (medians)")
    print(f"after {args.sleep_ms:.0f} ms asleep:   {' · '.join(f'{s:.3f}' for s in after_sleep)} ms")
    print(f"ratio:                  {' · '.join(f'{r:.2f}' for r in ratios)}")
    print(json.dumps({"sleep_ms": args.sleep_ms, "warm_ms": warm, "after_sleep_ms": after_sleep, "ratios": ratios}))


if __name__ == "__main__":
    main()
