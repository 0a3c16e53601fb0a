"""Evaluation answers and grades (`panelfuse eval`).

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-24
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Frozen copy of the types (not imported from panelfuse.store.schema) so this script never changes.
    op.create_table(
        "eval_answers",
        sa.Column("eval_name", sa.String(), nullable=False),
        sa.Column("config_label", sa.String(), nullable=False),
        sa.Column("task_id", sa.String(), nullable=False),
        sa.Column("pass_index", sa.Integer(), nullable=False, autoincrement=False),
        sa.Column("config_hash", sa.String(), nullable=False),
        sa.Column("status", sa.String(), nullable=False),
        sa.Column("content", sa.Text(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("prompt_tokens", sa.Integer(), nullable=False),
        sa.Column("completion_tokens", sa.Integer(), nullable=False),
        sa.Column("cost", sa.Double(), nullable=True),
        sa.Column("latency_ms", sa.Integer(), nullable=False),
        sa.Column("run_id", sa.String(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("eval_name", "config_label", "task_id", "pass_index", name="pk_eval_answers"),
    )
    op.create_table(
        "eval_grades",
        sa.Column("eval_name", sa.String(), nullable=False),
        sa.Column("config_label", sa.String(), nullable=False),
        sa.Column("task_id", sa.String(), nullable=False),
        sa.Column("pass_index", sa.Integer(), nullable=False, autoincrement=False),
        sa.Column("criterion_id", sa.String(), nullable=False),
        sa.Column("verdict", sa.String(), nullable=True),
        sa.Column("explanation", sa.Text(), nullable=False),
        sa.Column("grader_model", sa.String(), nullable=False),
        sa.Column("grader_version", sa.String(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("prompt_tokens", sa.Integer(), nullable=False),
        sa.Column("completion_tokens", sa.Integer(), nullable=False),
        sa.Column("cost", sa.Double(), nullable=True),
        sa.Column("latency_ms", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint(
            "eval_name", "config_label", "task_id", "pass_index", "criterion_id", name="pk_eval_grades"
        ),
    )


def downgrade() -> None:
    op.drop_table("eval_grades")
    op.drop_table("eval_answers")
