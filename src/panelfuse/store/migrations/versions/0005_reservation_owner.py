"""Budget reservations name the process that holds them (host, pid), so a restart after a crash
settles the reservations its dead predecessor left, as it interrupts that predecessor's runs.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("budget_reservations", sa.Column("host", sa.String(), nullable=True))
    op.add_column("budget_reservations", sa.Column("owner_pid", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("budget_reservations") as batch:
        batch.drop_column("owner_pid")
        batch.drop_column("host")
