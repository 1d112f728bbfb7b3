"""A drift window remembers the rollout in progress when it opened.

A window starts afresh when the rollout changes, so that a candidate's rows under one rollout
never count toward the next rollout of the same version. Windows open before this revision
belong to no rollout ("") and start afresh at the next report of a rollout.

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("drift_windows", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("rollout_id", sa.String(length=63), nullable=False, server_default="")
        )


def downgrade() -> None:
    with op.batch_alter_table("drift_windows", schema=None) as batch_op:
        batch_op.drop_column("rollout_id")
