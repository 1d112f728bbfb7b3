"""Rollouts keep the running sum of their current step's window reports.

A complete step is judged over every report made in it; the sum is kept with the rollout so
that each report adds to it instead of every report re-reading the step. Rollouts written
before this revision have an empty sum, which the next report starts from the stored reports.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("rollouts", schema=None) as batch_op:
        batch_op.add_column(sa.Column("step_sum", sa.JSON(), nullable=False, server_default="{}"))


def downgrade() -> None:
    with op.batch_alter_table("rollouts", schema=None) as batch_op:
        batch_op.drop_column("step_sum")
