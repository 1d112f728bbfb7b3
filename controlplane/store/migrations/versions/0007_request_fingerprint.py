"""Request ids keep a fingerprint of their request.

A request id seen again replays the stored result only when the request is the same (method,
caller and arguments, hashed into ``request_sha256``); otherwise it is refused. Rows written
before this revision have an empty fingerprint and keep replaying as before.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("request_ids", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("request_sha256", sa.String(length=64), nullable=False, server_default="")
        )


def downgrade() -> None:
    with op.batch_alter_table("request_ids", schema=None) as batch_op:
        batch_op.drop_column("request_sha256")
