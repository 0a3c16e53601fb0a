"""Every prompt change bumps PROMPT_VERSION (it is recorded in every result, so runs made under
different prompts can be told apart).

The fingerprint is a sha256 over the prompt texts of panelfuse.pipeline.prompts: its module-level
string constants and what its public message builders return for the fixed sample inputs below.
tests/data/prompt_fingerprints.json maps each PROMPT_VERSION to its fingerprint. After changing a
prompt, bump PROMPT_VERSION, then record the new fingerprint:

    .venv/bin/python tests/test_prompt_version.py --record

If a builder's signature changes, update its sample call in `rendered_prompts` (public functions
only); if no prompt text changed with it, re-record the current version with `--record --replace`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from panelfuse.pipeline import prompts
from panelfuse.tools.records import Citation

FINGERPRINTS = Path(__file__).parent / "data" / "prompt_fingerprints.json"
RECORD = "python tests/test_prompt_version.py --record"

# Fixed sample inputs: a conversation with a system turn, and two labelled answers.
CONVERSATION = [
    {"role": "system", "content": "Answer briefly."},
    {"role": "user", "content": "Why is the sky blue?"},
]
ANSWERS = {"A": "Rayleigh scattering.", "B": "Because of the ocean."}
SOURCES = [Citation(url="https://example.org/sky", title="Sky"), Citation(url="/docs/light.txt")]
ANALYSIS = {"consensus": ["scattering"], "contradictions": [], "anomalies": [{"label": "B", "why": "wrong"}]}


def rendered_prompts() -> dict[str, Callable[[], Any]]:
    """One sample call per public message builder, exercising each of its prompt-bearing options."""
    p = prompts
    return {
        "judge_messages": lambda: p.judge_messages(CONVERSATION, ANSWERS),
        "judge_messages+options": lambda: p.judge_messages(
            CONVERSATION,
            ANSWERS,
            weights={"A": 2.0, "B": 1.0},
            criteria="accuracy",
            dimensions=["safety_issues"],
            writes_answer=True,
            sources=SOURCES,
        ),
        "judge_retry_message": lambda: p.judge_retry_message("not JSON"),
        "synthesizer_messages": lambda: p.synthesizer_messages(CONVERSATION, ANSWERS, ANALYSIS, SOURCES),
        "synthesizer_messages/no-analysis": lambda: p.synthesizer_messages(CONVERSATION, ANSWERS, None, SOURCES),
        "best_of_messages": lambda: p.best_of_messages(CONVERSATION, ANSWERS, "accuracy"),
        "verdict_messages": lambda: p.verdict_messages(CONVERSATION, {"A": ANSWERS["A"]}),
        "groups_messages": lambda: p.groups_messages(CONVERSATION, ANSWERS),
        "with_tool_notice": lambda: p.with_tool_notice(CONVERSATION),
        "with_retrieved": lambda: p.with_retrieved(CONVERSATION, "<untrusted_data>results</untrusted_data>"),
        "sources_note": lambda: p.sources_note(SOURCES),
    }


def prompt_texts() -> dict[str, Any]:
    """Every prompt text, by name: the string constants, then the rendered sample calls."""
    texts: dict[str, Any] = {
        name: value
        for name, value in sorted(vars(prompts).items())
        if name.isupper() and isinstance(value, str) and name != "PROMPT_VERSION"
    }
    for name, call in rendered_prompts().items():
        try:
            texts[f"{name}()"] = call()
        except (TypeError, AttributeError) as exc:
            raise AssertionError(
                f"the sample call {name!r} no longer fits panelfuse.pipeline.prompts ({exc}): update it in "
                f"rendered_prompts() in {Path(__file__).name}"
            ) from exc
    return texts


def fingerprint() -> str:
    blob = json.dumps(prompt_texts(), sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def recorded() -> dict[str, str]:
    return json.loads(FINGERPRINTS.read_text(encoding="utf-8")) if FINGERPRINTS.exists() else {}


def problem(known: Mapping[str, str], version: str, current: str) -> str | None:
    """Why `current` may not ship as `version`, or None when it is the recorded fingerprint."""
    if version not in known:
        return f"PROMPT_VERSION {version!r} has no recorded fingerprint: record it with `{RECORD}`"
    if known[version] != current:
        return (
            f"prompts changed: bump PROMPT_VERSION and record the new fingerprint with `{RECORD}` "
            f"({version!r} is recorded with other prompts)"
        )
    return None


def test_prompt_version_matches_the_prompts():
    assert (why := problem(recorded(), prompts.PROMPT_VERSION, fingerprint())) is None, why


def test_a_prompt_change_fails_the_check(monkeypatch):
    before = fingerprint()
    known = {prompts.PROMPT_VERSION: before}
    assert problem(known, prompts.PROMPT_VERSION, before) is None

    # A constant's wording.
    monkeypatch.setattr(prompts, "JUDGE_SYSTEM", prompts.JUDGE_SYSTEM.replace("careful editor", "editor"))
    reworded = fingerprint()
    assert reworded != before
    why = problem(known, prompts.PROMPT_VERSION, reworded)
    assert why is not None and why.startswith("prompts changed: bump PROMPT_VERSION")
    monkeypatch.undo()

    # Wording built inside a function body, not held in a constant.
    monkeypatch.setattr(prompts, "render_answers", lambda answers: "\n".join(answers.values()))
    assert fingerprint() != before
    monkeypatch.undo()

    assert fingerprint() == before
    assert "no recorded fingerprint" in (problem({}, prompts.PROMPT_VERSION, before) or "")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Record the prompts' fingerprint under the current PROMPT_VERSION.")
    parser.add_argument("--record", action="store_true", help="write it to tests/data/prompt_fingerprints.json")
    parser.add_argument(
        "--replace",
        action="store_true",
        help="overwrite a different fingerprint already recorded for this version (only when no prompt text changed)",
    )
    args = parser.parse_args(argv)
    version, current, known = prompts.PROMPT_VERSION, fingerprint(), recorded()
    if not args.record:
        print(f"{version} {current}")
        why = problem(known, version, current)
        print(why or "recorded: OK")
        return 1 if why else 0
    if known.get(version) not in (None, current) and not args.replace:
        print(
            f"PROMPT_VERSION {version!r} is already recorded with another fingerprint: bump PROMPT_VERSION in "
            "src/panelfuse/pipeline/prompts.py first (or pass --replace if only the sample calls changed)",
            file=sys.stderr,
        )
        return 1
    known[version] = current
    FINGERPRINTS.parent.mkdir(parents=True, exist_ok=True)
    FINGERPRINTS.write_text(json.dumps(known, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    print(f"recorded {version}: {current}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
