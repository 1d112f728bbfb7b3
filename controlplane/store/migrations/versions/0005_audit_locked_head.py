"""PostgreSQL: one function that takes the audit append lock and reads the chain's head.

Every write transaction appends to the audit chain; taking the advisory lock and reading the
head were two round trips. In a VOLATILE PL/pgSQL function each statement takes a new snapshot
(READ COMMITTED), so the head read after ``pg_advisory_xact_lock`` sees every append committed
before the lock was granted, as the separate statement did. SQLite needs nothing.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-26
"""

from __future__ import annotations

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(
        """
        CREATE OR REPLACE FUNCTION modelplane_audit_locked_head(lock_key bigint)
        RETURNS TABLE (head_seq bigint, head_hash text)
        LANGUAGE plpgsql VOLATILE AS $$
        BEGIN
            PERFORM pg_advisory_xact_lock(lock_key);
            RETURN QUERY
                SELECT e.seq::bigint, e.hash::text FROM audit_events AS e
                ORDER BY e.seq DESC LIMIT 1;
        END
        $$
        """
    )


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute("DROP FUNCTION IF EXISTS modelplane_audit_locked_head(bigint)")
