"""Drift counts summed across reports until a window holds enough rows to judge.

Each report carries one replica's drift counts of a couple of seconds; at low traffic no such
window reaches ``min_rows``. ``drift_windows`` keeps, per deployment and arm, the counts of
the reports since the arm's last judgement, so drift is judged once enough rows arrived,
however slowly.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "drift_windows",
        sa.Column("deployment_id", sa.String(length=63), nullable=False),
        sa.Column("arm", sa.String(length=16), nullable=False),
        sa.Column("version", sa.BigInteger(), nullable=False),
        sa.Column("baseline_sha256", sa.String(length=64), nullable=False),
        sa.Column("rows", sa.BigInteger(), nullable=False),
        sa.Column("start_time", sa.DateTime(timezone=True), nullable=True),
        sa.Column("end_time", sa.DateTime(timezone=True), nullable=True),
        sa.Column("reports", sa.BigInteger(), nullable=False),
        sa.Column("body", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("deployment_id", "arm"),
    )


def downgrade() -> None:
    op.drop_table("drift_windows")
