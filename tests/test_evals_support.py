"""Helpers shared by the eval tests (no tests here): a small DRACO task file and a grader whose
verdict depends on the criterion it is shown."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from panelfuse.testing import Script

# t1: +2 alpha, +1 beta, +1 gamma, −2 omega;  t2: +1 alpha, −1 omega
TASKS = [
    {
        "id": "t1",
        "domain": "Science",
        "problem": "Tell me about the letters.",
        "sections": [
            ("factual-accuracy", [("a", 2, "Mentions alpha"), ("b", 1, "Mentions beta"), ("d", -2, "Mentions omega")]),
            ("presentation-quality", [("c", 1, "Mentions gamma")]),
        ],
    },
    {
        "id": "t2",
        "domain": "Law",
        "problem": "Name a letter.",
        "sections": [
            ("factual-accuracy", [("x", 1, "Mentions alpha")]),
            ("citation-quality", [("y", -1, "Mentions omega")]),
        ],
    },
]
CRITERIA_TOTAL = 6


def write_tasks(path: Path) -> Path:
    lines = []
    for t in TASKS:
        rubric = {
            "sections": [
                {
                    "id": sid,
                    "title": sid.replace("-", " ").title(),
                    "criteria": [{"id": cid, "weight": w, "requirement": r} for cid, w, r in crits],
                }
                for sid, crits in t["sections"]
            ]
        }
        lines.append(
            json.dumps({"id": t["id"], "domain": t["domain"], "problem": t["problem"], "answer": json.dumps(rubric)})
        )
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def grader_parts(body: dict[str, Any]) -> tuple[str, str, str]:
    """(item kind, rubric item, answer) as the grader was shown them."""
    user = body["messages"][-1]["content"]
    kind = re.search(r"Rubric item type: (\w+)", user).group(1)  # type: ignore[union-attr]
    item = re.search(r"Rubric item: (.*)", user).group(1)  # type: ignore[union-attr]
    answer = re.search(r"<answer>\n(.*)\n</answer>", user, re.S).group(1)  # type: ignore[union-attr]
    return kind, item, answer


def grader_script(body: dict[str, Any]) -> Script:
    """MET when the item's last word ("Mentions alpha" → alpha) is a word of the answer."""
    _, item, answer = grader_parts(body)
    word = item.split()[-1]
    verdict = "MET" if word in answer.split() else "UNMET"
    return Script(
        text=json.dumps({"verdict": verdict, "explanation": f"looked for {word}"}),
        prompt_tokens=30,
        completion_tokens=10,
    )
