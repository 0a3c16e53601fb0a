"""Eval answers and grades in the run store's database (tables `eval_answers`, `eval_grades`,
migration 0003). Every row is written as soon as it exists, so an interrupted eval resumes where it
stopped. Open the database with `RunStore.open(url)` and pass `store.database` (or open a `Database`)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from panelfuse.store.database import Database
from panelfuse.store.schema import eval_answers, eval_grades

AnswerKey = tuple[str, str, int]  # (config label, task id, pass)
GradeKey = tuple[str, str, int, str]  # (config label, task id, pass, criterion id)


@dataclass
class AnswerRow:
    config_label: str
    task_id: str
    pass_index: int
    config_hash: str
    status: str  # ok | failed
    content: str
    error: str | None
    prompt_tokens: int
    completion_tokens: int
    cost: float | None
    latency_ms: int
    run_id: str | None = None

    @property
    def key(self) -> AnswerKey:
        return (self.config_label, self.task_id, self.pass_index)


@dataclass
class GradeRow:
    config_label: str
    task_id: str
    pass_index: int
    criterion_id: str
    verdict: str | None  # MET | UNMET | None (the grader failed)
    explanation: str
    grader_model: str
    grader_version: str
    attempts: int
    error: str | None
    prompt_tokens: int
    completion_tokens: int
    cost: float | None
    latency_ms: int

    @property
    def key(self) -> GradeKey:
        return (self.config_label, self.task_id, self.pass_index, self.criterion_id)


def _clean(value: str | None) -> str | None:
    # PostgreSQL text cannot hold NUL; a model that emits one must not lose the row.
    return value.replace("\x00", "\ufffd") if value else value


class EvalStore:
    def __init__(self, database: Database) -> None:
        self._db = database

    def _upsert(self, table: sa.Table, values: dict[str, Any]) -> Any:
        keys = [c.name for c in table.primary_key.columns]
        stmt = self._db.insert(table).values(**values)
        return stmt.on_conflict_do_update(index_elements=keys, set_={k: v for k, v in values.items() if k not in keys})

    async def put_answer(self, eval_name: str, row: AnswerRow) -> None:
        """Insert or replace an answer; a replaced answer's grades are deleted with it (they graded
        the old text)."""
        values = dataclasses.asdict(row) | {"eval_name": eval_name, "created_at": datetime.now(UTC)}
        values["content"] = _clean(values["content"]) or ""
        values["error"] = _clean(values["error"])
        async with self._db.write() as conn:
            await conn.execute(
                eval_grades.delete().where(
                    eval_grades.c.eval_name == eval_name,
                    eval_grades.c.config_label == row.config_label,
                    eval_grades.c.task_id == row.task_id,
                    eval_grades.c.pass_index == row.pass_index,
                )
            )
            await conn.execute(self._upsert(eval_answers, values))

    async def put_grade(self, eval_name: str, row: GradeRow) -> None:
        values = dataclasses.asdict(row) | {"eval_name": eval_name, "created_at": datetime.now(UTC)}
        values["explanation"] = _clean(values["explanation"]) or ""
        values["error"] = _clean(values["error"])
        async with self._db.write() as conn:
            await conn.execute(self._upsert(eval_grades, values))

    async def answers(self, eval_name: str) -> dict[AnswerKey, AnswerRow]:
        fields = [f.name for f in dataclasses.fields(AnswerRow)]
        query = sa.select(*(eval_answers.c[f] for f in fields)).where(eval_answers.c.eval_name == eval_name)
        async with self._db.read() as conn:
            rows = (await conn.execute(query)).all()
        out = [AnswerRow(**r._mapping) for r in rows]
        return {a.key: a for a in out}

    async def grades(self, eval_name: str) -> dict[GradeKey, GradeRow]:
        fields = [f.name for f in dataclasses.fields(GradeRow)]
        query = sa.select(*(eval_grades.c[f] for f in fields)).where(eval_grades.c.eval_name == eval_name)
        async with self._db.read() as conn:
            rows = (await conn.execute(query)).all()
        out = [GradeRow(**r._mapping) for r in rows]
        return {g.key: g for g in out}
