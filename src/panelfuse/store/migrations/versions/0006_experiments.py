"""Experiments: their definitions and state, and one row per request an experiment assigned (the arm
that answered it, shadow or not, and what it cost), which the experiment report reads.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Frozen copy of the types (not imported from panelfuse.store) so this script never changes.
    op.create_table(
        "experiments",
        sa.Column("name", sa.String(), nullable=False),
        sa.Column("definition", sa.JSON(), nullable=False),
        sa.Column("source", sa.String(), nullable=False),
        sa.Column("status", sa.String(), nullable=False),
        sa.Column("chosen_arm", sa.String(), nullable=True),
        sa.Column("paused_arms", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name", name="pk_experiments"),
    )
    op.create_table(
        "experiment_requests",
        sa.Column("id", sa.String(), nullable=False),
        sa.Column("experiment", sa.String(), nullable=False),
        sa.Column("arm", sa.String(), nullable=False),
        sa.Column("shadow", sa.Boolean(), nullable=False),
        sa.Column("unit", sa.String(), nullable=False),
        sa.Column("key_id", sa.String(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("latency_ms", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(), nullable=False),
        sa.Column("degraded", sa.Boolean(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("cost", sa.Double(), nullable=True),
        sa.Column("calls", sa.Integer(), nullable=True),
        sa.Column("cached", sa.Boolean(), nullable=False),
        sa.Column("run_id", sa.String(), nullable=True),
        sa.Column("response_id", sa.String(), nullable=True),
        sa.Column("feedback_score", sa.Double(), nullable=True),
        sa.Column("question", sa.Text(), nullable=True),
        sa.Column("answer", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_experiment_requests"),
    )
    op.create_index("ix_experiment_requests_experiment_created_at", "experiment_requests", ["experiment", "created_at"])
    op.create_index("ix_experiment_requests_run_id", "experiment_requests", ["run_id"])
    op.create_index("ix_experiment_requests_response_id", "experiment_requests", ["response_id"])


def downgrade() -> None:
    op.drop_table("experiment_requests")
    op.drop_table("experiments")
