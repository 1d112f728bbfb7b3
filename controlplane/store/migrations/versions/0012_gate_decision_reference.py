"""Gate decisions keep what their ``delta`` was measured against.

A decision's evidence digest covers the version its target served when it was made. Once the
target serves the decision's own version, that reference cannot be found again from the
target, so the decision records it: setting an alias again to the version it already serves
checks the decision against the evidence now with the reference it was made with. Decisions
recorded before this revision have an empty reference and are checked as before.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("gate_decisions", schema=None) as batch_op:
        batch_op.add_column(sa.Column("reference", sa.JSON(), nullable=False, server_default="{}"))


def downgrade() -> None:
    with op.batch_alter_table("gate_decisions", schema=None) as batch_op:
        batch_op.drop_column("reference")
