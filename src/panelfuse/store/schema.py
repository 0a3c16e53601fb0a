"""Table definitions (SQLAlchemy Core). The migrations in `migrations/versions` create these;
keep the two in step (a new column = a new migration + a change here)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Dialect

RUN_STATUSES = ("running", "completed", "failed", "cancelled", "interrupted")
FINAL_STATUSES = ("completed", "failed", "cancelled", "interrupted")
VERSION_TABLE = "panelfuse_alembic_version"  # not `alembic_version`: the database may be shared


class UTCDateTime(sa.TypeDecorator[datetime]):
    """Timezone-aware UTC in and out. PostgreSQL keeps timestamptz; SQLite stores naive UTC text
    (fixed width, so text order is time order) and gets UTC re-attached on the way out."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        value = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if isinstance(value, str):  # defensive: raw text from a hand-edited SQLite file
            value = datetime.fromisoformat(value)
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _json(nullable: bool) -> sa.JSON:
    # none_as_null: Python None is SQL NULL (not the JSON text 'null'), so IS NULL works.
    return sa.JSON(none_as_null=nullable)


metadata = sa.MetaData()

runs = sa.Table(
    "runs",
    metadata,
    sa.Column("id", sa.String, primary_key=True),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("updated_at", UTCDateTime, nullable=False),
    sa.Column("status", sa.String, nullable=False),
    sa.Column("preset", sa.String, nullable=True),
    sa.Column("mode", sa.String, nullable=False),
    sa.Column("request_model", sa.String, nullable=False),
    sa.Column("spec", _json(False), nullable=False),
    sa.Column("request", _json(False), nullable=False),
    sa.Column("result", _json(True), nullable=True),
    sa.Column("content", sa.Text, nullable=False),
    sa.Column("usage", _json(True), nullable=True),
    sa.Column("cost", sa.Double, nullable=True),
    sa.Column("degraded", sa.Boolean, nullable=False),
    sa.Column("error", sa.Text, nullable=True),
    sa.Column("latency_ms", sa.Integer, nullable=False),
    sa.Column("prompt_version", sa.String, nullable=False),
    sa.Column("key_id", sa.String, nullable=True),
    sa.Column("background", sa.Boolean, nullable=False),
    sa.Column("parent_run_id", sa.String, sa.ForeignKey("runs.id", ondelete="SET NULL"), nullable=True),
    sa.Column("feedback_score", sa.Double, nullable=True),
    sa.Column("feedback_comment", sa.Text, nullable=True),
    sa.Column("owner_pid", sa.Integer, nullable=True),
    sa.Column("host", sa.String, nullable=True),
    sa.Column("purged_at", UTCDateTime, nullable=True),
    # (created_at, id) is the paging key; the other indexes serve list filters and key scoping.
    sa.Index("ix_runs_created_at_id", "created_at", "id"),
    sa.Index("ix_runs_status", "status"),
    sa.Index("ix_runs_key_id_created_at", "key_id", "created_at"),
    sa.Index("ix_runs_parent_run_id", "parent_run_id"),
)

run_events = sa.Table(
    "run_events",
    metadata,
    sa.Column("run_id", sa.String, sa.ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("seq", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("type", sa.String, nullable=False),
    sa.Column("stage", sa.String, nullable=False),
    sa.Column("data", _json(False), nullable=False),
    sa.Column("ts", sa.Double, nullable=False),
)

# API keys (issue: access control). The secret is never stored: only its SHA-256 (keys are 256-bit
# random tokens, so a fast hash is enough) and a short display prefix.
api_keys = sa.Table(
    "api_keys",
    metadata,
    sa.Column("id", sa.String, primary_key=True),
    sa.Column("name", sa.String, nullable=False),
    sa.Column("key_hash", sa.String, nullable=False, unique=True),
    sa.Column("prefix", sa.String, nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("revoked_at", UTCDateTime, nullable=True),
    sa.Column("is_admin", sa.Boolean, nullable=False),
    sa.Column("budget_usd", sa.Double, nullable=True),  # None: no budget
    sa.Column("spent_usd", sa.Double, nullable=False),
    sa.Column("reserved_usd", sa.Double, nullable=False),
    sa.Column("rpm", sa.Integer, nullable=True),
    sa.Column("max_concurrent", sa.Integer, nullable=True),
    sa.Column("models", _json(True), nullable=True),  # allowlist of fnmatch patterns; None: all
    sa.Index("ix_api_keys_name", "name"),
)

# One reservation per run: the worst case held against the key's budget until the run settles.
budget_reservations = sa.Table(
    "budget_reservations",
    metadata,
    sa.Column("run_id", sa.String, primary_key=True),
    sa.Column("key_id", sa.String, sa.ForeignKey("api_keys.id", ondelete="CASCADE"), nullable=False),
    sa.Column("amount_usd", sa.Double, nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("settled_usd", sa.Double, nullable=True),
    sa.Column("settled_at", UTCDateTime, nullable=True),
    sa.Column("host", sa.String, nullable=True),  # the process holding it (crash recovery; migration 0005)
    sa.Column("owner_pid", sa.Integer, nullable=True),
    sa.Index("ix_budget_reservations_key", "key_id"),
)

# Evaluation runs (issue 7: `panelfuse eval`). Keyed so a rerun finds what is done and skips it:
# one answer per (eval, configuration, task, pass), one grade per answer and criterion.
eval_answers = sa.Table(
    "eval_answers",
    metadata,
    sa.Column("eval_name", sa.String, primary_key=True),
    sa.Column("config_label", sa.String, primary_key=True),
    sa.Column("task_id", sa.String, primary_key=True),
    sa.Column("pass_index", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("config_hash", sa.String, nullable=False),  # the configuration's spec, hashed: a changed one is caught
    sa.Column("status", sa.String, nullable=False),  # ok | failed
    sa.Column("content", sa.Text, nullable=False),
    sa.Column("error", sa.Text, nullable=True),
    sa.Column("prompt_tokens", sa.Integer, nullable=False),
    sa.Column("completion_tokens", sa.Integer, nullable=False),
    sa.Column("cost", sa.Double, nullable=True),  # USD; None when no price is known
    sa.Column("latency_ms", sa.Integer, nullable=False),
    sa.Column("run_id", sa.String, nullable=True),  # the fusion run in `runs`, for fusion configurations
    sa.Column("created_at", UTCDateTime, nullable=False),
)

eval_grades = sa.Table(
    "eval_grades",
    metadata,
    sa.Column("eval_name", sa.String, primary_key=True),
    sa.Column("config_label", sa.String, primary_key=True),
    sa.Column("task_id", sa.String, primary_key=True),
    sa.Column("pass_index", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("criterion_id", sa.String, primary_key=True),
    sa.Column("verdict", sa.String, nullable=True),  # MET | UNMET; None: the grader failed (excluded)
    sa.Column("explanation", sa.Text, nullable=False),
    sa.Column("grader_model", sa.String, nullable=False),
    sa.Column("grader_version", sa.String, nullable=False),  # the grading prompt's version string
    sa.Column("attempts", sa.Integer, nullable=False),
    sa.Column("error", sa.Text, nullable=True),
    sa.Column("prompt_tokens", sa.Integer, nullable=False),
    sa.Column("completion_tokens", sa.Integer, nullable=False),
    sa.Column("cost", sa.Double, nullable=True),
    sa.Column("latency_ms", sa.Integer, nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
)
