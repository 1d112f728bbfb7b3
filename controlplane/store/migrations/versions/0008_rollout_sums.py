"""Rollouts keep the running sum of their current step's window reports, and the champion's
summed windows from before the rollout once a step needs them.

A complete step is judged over every report made in it; the sum is kept with the rollout so
that each report adds to it instead of every report re-reading the step. Rollouts written
before this revision have empty sums, which the next report (or the first step that needs the
champion's earlier windows) fills from the stored reports.

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
        batch_op.add_column(
            sa.Column("champion_before", sa.JSON(), nullable=False, server_default="{}")
        )


def downgrade() -> None:
    with op.batch_alter_table("rollouts", schema=None) as batch_op:
        batch_op.drop_column("champion_before")
        batch_op.drop_column("step_sum")
