"""Rollouts keep the champion's summed windows from before the rollout once a step needs them.

A step in which the champion has too few requests compares the candidate with the champion's
windows reported before the rollout began; they are summed once and kept with the rollout
instead of re-read on every judgement. Rollouts written before this revision have an empty
sum, which the first step that needs it fills from the stored reports.

A database made by revision 0008 as it was first committed already has the column, with this
very definition: it is left as it is.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    columns = {c["name"] for c in sa.inspect(op.get_bind()).get_columns("rollouts")}
    if "champion_before" in columns:
        return
    with op.batch_alter_table("rollouts", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("champion_before", sa.JSON(), nullable=False, server_default="{}")
        )


def downgrade() -> None:
    with op.batch_alter_table("rollouts", schema=None) as batch_op:
        batch_op.drop_column("champion_before")
