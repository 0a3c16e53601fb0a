"""The response cache: one row per cache key, the answer a hit serves again and when it expires
(docs/cache.md).

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-10
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Frozen copy of the types (not imported from panelfuse.store) so this script never changes.
    op.create_table(
        "response_cache",
        sa.Column("key", sa.String(), nullable=False),
        sa.Column("key_id", sa.String(), nullable=True),
        sa.Column("run_id", sa.String(), nullable=False),
        sa.Column("finish_reason", sa.String(), nullable=False),
        sa.Column("result", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("key", name="pk_response_cache"),
    )
    op.create_index("ix_response_cache_expires_at", "response_cache", ["expires_at"])
    op.create_index("ix_response_cache_run_id", "response_cache", ["run_id"])


def downgrade() -> None:
    op.drop_table("response_cache")
