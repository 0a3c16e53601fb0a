"""Generations: one row per answered completion, fetched by its response id (`/v1/generation`).

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Frozen copy of the types (not imported from panelfuse.store) so this script never changes.
    op.create_table(
        "generations",
        sa.Column("id", sa.String(), nullable=False),
        sa.Column("kind", sa.String(), nullable=False),
        sa.Column("model", sa.String(), nullable=False),
        sa.Column("key_id", sa.String(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("latency_ms", sa.Integer(), nullable=False),
        sa.Column("prompt_tokens", sa.Integer(), nullable=False),
        sa.Column("completion_tokens", sa.Integer(), nullable=False),
        sa.Column("cost", sa.Double(), nullable=True),
        sa.Column("finish_reason", sa.String(), nullable=True),
        sa.Column("streamed", sa.Boolean(), nullable=False),
        sa.Column("run_id", sa.String(), nullable=True),
        sa.Column("request", sa.JSON(), nullable=True),
        sa.Column("response", sa.JSON(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_generations"),
    )
    op.create_index("ix_generations_key_id_created_at", "generations", ["key_id", "created_at"])
    op.create_index("ix_generations_run_id", "generations", ["run_id"])


def downgrade() -> None:
    op.drop_table("generations")
