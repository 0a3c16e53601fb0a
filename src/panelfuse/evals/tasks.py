"""Task files: DRACO's JSONL as published, and a simple question/answer JSONL.

DRACO row: `{"id", "domain", "problem", "answer"}` where `answer` is a JSON *string* holding
`{"sections": [{"id", "title", "criteria": [{"id", "weight", "requirement"}]}]}`; weights are signed
numbers (negative = a penalty). QA row: `{"question", "answer", "aliases"?, "id"?, "domain"?}`; it
becomes a one-criterion rubric, graded by normalised match or by the grader (see `grading`).
Any malformed row raises TaskFormatError naming the file, the line and the field.
"""

from __future__ import annotations

import json
import math
import re
import string
import unicodedata
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path
from typing import Any, Literal

SAMPLE = "sample"  # `panelfuse eval sample …` runs the shipped sample set
QA_CRITERION_ID = "answer"
QA_SECTION = "answer"


class TaskFormatError(ValueError):
    """A task file row that cannot be used; the message names the line and the field."""

    def __init__(self, source: str, line: int, field: str, message: str) -> None:
        super().__init__(f"{source}:{line}: field '{field}': {message}")
        self.source, self.line, self.field = source, line, field


@dataclass(frozen=True)
class Criterion:
    id: str
    section: str  # the section's id (DRACO: factual-accuracy, breadth-and-depth-of-analysis, …)
    weight: float  # negative: a penalty, counted when the grader finds it MET
    requirement: str

    @property
    def positive(self) -> bool:
        return self.weight > 0


@dataclass(frozen=True)
class Task:
    id: str
    domain: str
    problem: str
    criteria: tuple[Criterion, ...]
    sections: tuple[tuple[str, str], ...] = ()  # (id, title) in file order
    kind: Literal["draco", "qa"] = "draco"
    reference: str | None = None  # QA: the gold answer
    aliases: tuple[str, ...] = ()  # QA: other accepted answers

    def limited(self, criteria_limit: int | None) -> Task:
        """The task with only its first `criteria_limit` criteria (file order), for quick looks."""
        if criteria_limit is None or criteria_limit >= len(self.criteria):
            return self
        return replace(self, criteria=self.criteria[:criteria_limit])


def sample_path() -> Path:
    """The sample DRACO-format set shipped with panelfuse (written by us, not DRACO's own tasks)."""
    return Path(str(resources.files("panelfuse").joinpath("data/eval_sample.jsonl")))


def load_tasks(path: str | Path, *, limit: int | None = None, criteria_limit: int | None = None) -> list[Task]:
    """Read a task file (DRACO or QA rows, one JSON object a line; blank lines skipped).
    `path` may be "sample" for the shipped set. Raises TaskFormatError, or OSError for the file."""
    source = sample_path() if str(path) == SAMPLE and not Path(path).exists() else Path(path)
    tasks: list[Task] = []
    seen: dict[str, int] = {}
    with source.open(encoding="utf-8") as fh:
        for lineno, raw in enumerate(fh, start=1):
            if not raw.strip():
                continue
            task = parse_row(raw, lineno, source.name)
            if task.id in seen:
                raise TaskFormatError(
                    source.name, lineno, "id", f"duplicate task id {task.id!r} (first on line {seen[task.id]})"
                )
            seen[task.id] = lineno
            tasks.append(task.limited(criteria_limit))
            if limit is not None and len(tasks) >= limit:
                break
    if not tasks:
        raise TaskFormatError(source.name, 0, "-", "the file holds no tasks")
    return tasks


def parse_row(raw: str, line: int, source: str = "<tasks>") -> Task:
    """One JSONL line as a Task: DRACO when it has `problem`, QA when it has `question`."""
    try:
        row = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise TaskFormatError(source, line, "-", f"not valid JSON ({exc.msg} at column {exc.colno})") from None
    if not isinstance(row, dict):
        raise TaskFormatError(source, line, "-", f"expected a JSON object, got {type(row).__name__}")
    if "problem" in row:
        return _draco(row, line, source)
    if "question" in row:
        return _qa(row, line, source)
    raise TaskFormatError(source, line, "problem", "missing: a row needs `problem` (DRACO) or `question` (QA)")


def _text(obj: dict[str, Any], key: str, line: int, source: str, where: str = "") -> str:
    value = obj.get(key)
    field = f"{where}{key}"
    if value is None:
        raise TaskFormatError(source, line, field, "missing")
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise TaskFormatError(source, line, field, f"expected a string, got {type(value).__name__}")
    text = str(value).strip()
    if not text:
        raise TaskFormatError(source, line, field, "empty")
    return text


def _weight(value: Any, line: int, source: str, field: str) -> float:
    if value is None:
        raise TaskFormatError(source, line, field, "missing")
    # bool is an int in Python; a `true` weight is a typo, not a weight of 1.
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise TaskFormatError(source, line, field, f"expected a signed number, got {value!r}")
    return float(value)


def _draco(row: dict[str, Any], line: int, source: str) -> Task:
    task_id = _text(row, "id", line, source)
    domain = _text(row, "domain", line, source)
    problem = _text(row, "problem", line, source)
    rubric = row.get("answer")
    if rubric is None:
        raise TaskFormatError(source, line, "answer", "missing (the rubric, a JSON string)")
    if isinstance(rubric, str):
        try:
            rubric = json.loads(rubric)
        except json.JSONDecodeError as exc:
            raise TaskFormatError(source, line, "answer", f"the rubric string is not valid JSON ({exc.msg})") from None
    sections = rubric.get("sections") if isinstance(rubric, dict) else None
    if not isinstance(sections, list) or not sections:
        raise TaskFormatError(source, line, "answer.sections", "missing or not a non-empty list")
    criteria: list[Criterion] = []
    section_list: list[tuple[str, str]] = []
    ids: set[str] = set()
    for si, section in enumerate(sections):
        where = f"answer.sections[{si}]."
        if not isinstance(section, dict):
            raise TaskFormatError(source, line, where[:-1], "expected an object")
        section_id = _text(section, "id", line, source, where)
        title = str(section.get("title") or section_id)
        section_list.append((section_id, title))
        items = section.get("criteria")
        if not isinstance(items, list):
            raise TaskFormatError(source, line, f"{where}criteria", "missing or not a list")
        for ci, item in enumerate(items):
            cwhere = f"{where}criteria[{ci}]."
            if not isinstance(item, dict):
                raise TaskFormatError(source, line, cwhere[:-1], "expected an object")
            cid = _text(item, "id", line, source, cwhere)
            if cid in ids:
                raise TaskFormatError(source, line, f"{cwhere}id", f"duplicate criterion id {cid!r} in this task")
            ids.add(cid)
            weight = _weight(item.get("weight"), line, source, f"{cwhere}weight")
            requirement = _text(item, "requirement", line, source, cwhere)
            criteria.append(Criterion(cid, section_id, weight, requirement))
    if not criteria:
        raise TaskFormatError(source, line, "answer.sections", "the rubric has no criteria")
    return Task(task_id, domain, problem, tuple(criteria), tuple(section_list), "draco")


def _qa(row: dict[str, Any], line: int, source: str) -> Task:
    question = _text(row, "question", line, source)
    answer = _text(row, "answer", line, source)
    aliases_raw = row.get("aliases", [])
    if not isinstance(aliases_raw, list) or not all(
        isinstance(a, str | int) and not isinstance(a, bool) for a in aliases_raw
    ):
        raise TaskFormatError(source, line, "aliases", "expected a list of strings")
    aliases = tuple(str(a).strip() for a in aliases_raw if str(a).strip())
    task_id = _text(row, "id", line, source) if "id" in row else f"line-{line}"
    domain = _text(row, "domain", line, source) if "domain" in row else "qa"
    accepted = "; ".join(f'"{a}"' for a in aliases)
    requirement = f'The response gives "{answer}" as its answer' + (
        f" (also acceptable: {accepted})." if accepted else " (or an equivalent form of it)."
    )
    criterion = Criterion(QA_CRITERION_ID, QA_SECTION, 1.0, requirement)
    return Task(task_id, domain, question, (criterion,), ((QA_SECTION, "Answer"),), "qa", answer, aliases)


_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = str.maketrans({c: " " for c in string.punctuation + "‘’“”–—"})


def normalize_answer(text: str) -> str:
    """Lower case, accents and punctuation and articles removed, whitespace collapsed (SQuAD-style)."""
    text = unicodedata.normalize("NFKD", text)
    text = "".join(c for c in text if not unicodedata.combining(c)).lower().translate(_PUNCT)
    return " ".join(_ARTICLES.sub(" ", text).split())


def qa_match(response: str, task: Task) -> bool:
    """Whether the response contains the gold answer or an alias, as whole words after normalising."""
    haystack = f" {normalize_answer(response)} "
    for gold in (task.reference or "", *task.aliases):
        needle = normalize_answer(gold)
        if needle and f" {needle} " in haystack:
            return True
    return False
