"""One SQLAlchemy statement compiled once for SQLite, and run through the driver.

A statement executed through SQLAlchemy builds an execution context, looks up its compiled form and
processes its parameters every time: in the gateway, a proxied call's one-row INSERT and its
transaction took 800 µs of CPU that way, against 410 µs through the driver (docs/performance.md,
item 18). `Prepared` keeps what SQLAlchemy compiled (its SQL and its columns' own bind processors, so
a value is stored exactly as SQLAlchemy would store it), and `Database.execute_all` runs it on the
loop's own SQLite connection."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Dialect
from sqlalchemy.sql.dml import UpdateBase

Statement = UpdateBase | sa.TextClause  # what a write runs: INSERT, UPDATE, DELETE, or SQL text


class Prepared:
    """`stmt` compiled for `dialect` with the parameters named `keys`: its SQL with positional
    placeholders, and how to turn a mapping of those parameters into the driver's arguments. Raises
    ValueError when the compiled statement needs a parameter not among `keys` (a column default that
    SQLAlchemy computes at execution) or expands one (`IN` over a list): such a statement is not one
    to run this way."""

    __slots__ = ("_names", "_processors", "sql")

    def __init__(self, stmt: Statement, dialect: Dialect, keys: Sequence[str]) -> None:
        compiled = stmt.compile(dialect=dialect, column_keys=list(keys))
        names = list(compiled.positiontup or ())
        if not set(names) <= set(keys) or compiled.positional is False:
            raise ValueError(f"not every parameter of {str(compiled)[:80]!r} is given")
        if any(bind.expanding for bind in compiled.binds.values()):  # IN (...): its SQL is built per call
            raise ValueError(f"{str(compiled)[:80]!r} has a parameter expanded at execution")
        self.sql = str(compiled)
        self._names = names
        processors: list[Callable[[Any], Any] | None] = [compiled.binds[n].type.bind_processor(dialect) for n in names]
        self._processors = processors

    def args(self, params: Mapping[str, Any]) -> list[Any]:
        """The driver's arguments for `params`, each processed as its column's type says. Pure."""
        out = []
        for name, process in zip(self._names, self._processors, strict=True):
            value = params[name]
            out.append(process(value) if process is not None else value)
        return out
