"""Task loaders: DRACO rows as published, QA rows, the shipped sample, malformed rows."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from panelfuse.evals.tasks import (
    QA_CRITERION_ID,
    TaskFormatError,
    load_tasks,
    normalize_answer,
    parse_row,
    qa_match,
    sample_path,
)

DRACO_SECTIONS = ["factual-accuracy", "breadth-and-depth-of-analysis", "presentation-quality", "citation-quality"]


def draco_row(task_id: str = "d1", **over) -> dict:
    rubric = {
        "sections": [
            {
                "id": "factual-accuracy",
                "title": "Factual Accuracy",
                "criteria": [
                    {"id": "fa-1", "weight": 3, "requirement": "States X"},
                    {"id": "fa-2", "weight": -2, "requirement": "Claims Y"},
                ],
            },
            {
                "id": "citation-quality",
                "title": "Citation Quality",
                "criteria": [{"id": "cq-1", "weight": 1, "requirement": "Cites Z"}],
            },
        ]
    }
    row = {"id": task_id, "domain": "Finance", "problem": "Explain X.", "answer": json.dumps(rubric)}
    row.update(over)
    return row


def write(tmp_path: Path, rows: list, name: str = "tasks.jsonl") -> Path:
    path = tmp_path / name
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    return path


def test_draco_row_as_published(tmp_path: Path) -> None:
    (task,) = load_tasks(write(tmp_path, [draco_row()]))
    assert (task.id, task.domain, task.problem, task.kind) == ("d1", "Finance", "Explain X.", "draco")
    assert [(c.id, c.section, c.weight, c.requirement) for c in task.criteria] == [
        ("fa-1", "factual-accuracy", 3.0, "States X"),
        ("fa-2", "factual-accuracy", -2.0, "Claims Y"),
        ("cq-1", "citation-quality", 1.0, "Cites Z"),
    ]
    assert task.sections == (("factual-accuracy", "Factual Accuracy"), ("citation-quality", "Citation Quality"))
    assert [c.positive for c in task.criteria] == [True, False, True]


def test_limits_and_blank_lines(tmp_path: Path) -> None:
    path = write(tmp_path, [draco_row("a"), "", draco_row("b"), draco_row("c")])
    assert [t.id for t in load_tasks(path, limit=2)] == ["a", "b"]
    assert [len(t.criteria) for t in load_tasks(path, criteria_limit=2)] == [2, 2, 2]
    assert [c.id for c in load_tasks(path, criteria_limit=1)[0].criteria] == ["fa-1"]


def test_qa_rows(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        [
            {"question": "Capital of France?", "answer": "Paris"},
            {"id": "q2", "question": "2+2?", "answer": 4, "aliases": ["four"], "domain": "math"},
        ],
    )
    t1, t2 = load_tasks(path)
    assert (t1.id, t1.kind, t1.domain, t1.reference) == ("line-1", "qa", "qa", "Paris")
    assert (t2.id, t2.reference, t2.aliases, t2.domain) == ("q2", "4", ("four",), "math")
    (c,) = t2.criteria
    assert (c.id, c.weight) == (QA_CRITERION_ID, 1.0)
    assert '"4"' in c.requirement and '"four"' in c.requirement


def test_normalised_match() -> None:
    (task,) = [parse_row(json.dumps({"question": "q", "answer": "The Eiffel Tower", "aliases": ["Tour Eiffel"]}), 1)]
    assert normalize_answer("  The Éiffel-Tower!  ") == "eiffel tower"
    assert qa_match("I think it is the eiffel tower.", task)
    assert qa_match("C'est la Tour Eiffel", task)
    assert not qa_match("The Eiffel Towers of Paris", task)  # whole words only
    assert not qa_match("", task)


def test_the_shipped_sample_is_valid_draco() -> None:
    tasks = load_tasks("sample")
    assert sample_path().name == "eval_sample.jsonl"
    assert len(tasks) >= 10
    assert len({t.domain for t in tasks}) >= 5
    assert all(t.kind == "draco" for t in tasks)
    assert any(c.weight < 0 for t in tasks for c in t.criteria)
    for t in tasks:
        assert [s for s, _ in t.sections] == DRACO_SECTIONS
        assert sum(c.weight for c in t.criteria if c.weight > 0) > 0
    # the `answer` field really is a JSON string, as in DRACO's release
    first = json.loads(sample_path().read_text(encoding="utf-8").splitlines()[0])
    assert isinstance(first["answer"], str)


@pytest.mark.parametrize(
    ("row", "field", "fragment"),
    [
        ("{not json", "-", "not valid JSON"),
        ("[1, 2]", "-", "expected a JSON object"),
        ({"id": "x", "domain": "d"}, "problem", "missing"),
        (draco_row(id=None), "id", "missing"),
        (draco_row(domain=""), "domain", "empty"),
        (draco_row(answer="{broken"), "answer", "not valid JSON"),
        (draco_row(answer=json.dumps({"parts": []})), "answer.sections", "non-empty list"),
        (
            draco_row(
                answer=json.dumps(
                    {"sections": [{"id": "s", "criteria": [{"id": "c", "weight": "high", "requirement": "r"}]}]}
                )
            ),
            "answer.sections[0].criteria[0].weight",
            "signed number",
        ),
        (
            draco_row(
                answer=json.dumps(
                    {"sections": [{"id": "s", "criteria": [{"id": "c", "weight": True, "requirement": "r"}]}]}
                )
            ),
            "answer.sections[0].criteria[0].weight",
            "signed number",
        ),
        (
            draco_row(answer=json.dumps({"sections": [{"id": "s", "criteria": [{"id": "c", "weight": 1}]}]})),
            "answer.sections[0].criteria[0].requirement",
            "missing",
        ),
        (
            draco_row(
                answer=json.dumps(
                    {
                        "sections": [
                            {
                                "id": "s",
                                "criteria": [
                                    {"id": "c", "weight": 1, "requirement": "r"},
                                    {"id": "c", "weight": 1, "requirement": "r2"},
                                ],
                            }
                        ]
                    }
                )
            ),
            "answer.sections[0].criteria[1].id",
            "duplicate",
        ),
        (
            draco_row(answer=json.dumps({"sections": [{"title": "no id", "criteria": []}]})),
            "answer.sections[0].id",
            "missing",
        ),
        (draco_row(answer=json.dumps({"sections": [{"id": "s", "criteria": []}]})), "answer.sections", "no criteria"),
        ({"question": "q"}, "answer", "missing"),
        ({"question": "q", "answer": "a", "aliases": "b"}, "aliases", "list of strings"),
    ],
)
def test_malformed_rows_name_line_and_field(tmp_path: Path, row, field: str, fragment: str) -> None:
    path = write(tmp_path, [draco_row("ok"), row])
    with pytest.raises(TaskFormatError) as info:
        load_tasks(path)
    err = info.value
    assert (err.line, err.field) == (2, field)
    assert f"tasks.jsonl:2: field '{field}'" in str(err)
    assert fragment in str(err)


def test_duplicate_task_ids_and_empty_files(tmp_path: Path) -> None:
    with pytest.raises(TaskFormatError, match=r"tasks.jsonl:3: field 'id': duplicate task id 'a' \(first on line 1\)"):
        load_tasks(write(tmp_path, [draco_row("a"), draco_row("b"), draco_row("a")]))
    with pytest.raises(TaskFormatError, match="no tasks"):
        load_tasks(write(tmp_path, [""], name="empty.jsonl"))
