"""A drift window remembers the rollout in progress when it opened.

A window starts afresh when the rollout changes, so that a candidate's rows under one rollout
never count toward the next rollout of the same version. Windows open before this revision
belong to no rollout ("") and start afresh at the next report of a rollout.

A database made by revision 0013 as it was first committed already has the column, without
its server default and in another place: it is moved to where this revision puts it, with
its values, so that both end with the same schema.

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

#: Where an early 0013's column is kept while the new one is added.
_EARLY = "rollout_id_0013"


def upgrade() -> None:
    columns = {c["name"] for c in sa.inspect(op.get_bind()).get_columns("drift_windows")}
    early = "rollout_id" in columns
    if early:
        with op.batch_alter_table("drift_windows", schema=None) as batch_op:
            batch_op.alter_column("rollout_id", new_column_name=_EARLY)
    with op.batch_alter_table("drift_windows", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("rollout_id", sa.String(length=63), nullable=False, server_default="")
        )
    if early:
        op.execute(f"UPDATE drift_windows SET rollout_id = {_EARLY}")
        with op.batch_alter_table("drift_windows", schema=None) as batch_op:
            batch_op.drop_column(_EARLY)


def downgrade() -> None:
    with op.batch_alter_table("drift_windows", schema=None) as batch_op:
        batch_op.drop_column("rollout_id")
