"""PostgreSQL: append audit events, chain hashes included, in one call.

Each write transaction used two round trips for the audit chain: one to take the append lock
and read the head (``modelplane_audit_locked_head``), one to insert the events. This function
does both. The caller renders each event's canonical JSON in Python (so the encoding stays the
one ``controlplane.audit`` defines) with two gaps, ``prev_hash`` and ``seq``, which only the
head decides: ``head || prev_hash || mid || seq || tail``. The function fills them in, hashes
the UTF-8 bytes with SHA-256 and chains the events in order. As in 0005, every statement in a
VOLATILE PL/pgSQL function takes a new snapshot, so the head read after the lock sees every
append committed before it. SQLite needs nothing.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-26
"""

from __future__ import annotations

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(
        """
        CREATE OR REPLACE FUNCTION modelplane_audit_append(lock_key bigint, events jsonb)
        RETURNS bigint
        LANGUAGE plpgsql VOLATILE AS $$
        DECLARE
            ev jsonb;
            cur_seq bigint;
            prev text;
            next_hash text;
        BEGIN
            PERFORM pg_advisory_xact_lock(lock_key);
            SELECT e.seq, e.hash INTO cur_seq, prev FROM audit_events AS e
                ORDER BY e.seq DESC LIMIT 1;
            IF cur_seq IS NULL THEN
                cur_seq := 0;
                prev := repeat('0', 64);
            END IF;
            FOR ev IN SELECT value FROM jsonb_array_elements(events) LOOP
                cur_seq := cur_seq + 1;
                next_hash := encode(sha256(convert_to(
                    (ev->>'head') || prev || (ev->>'mid') || cur_seq::text || (ev->>'tail'),
                    'UTF8')), 'hex');
                INSERT INTO audit_events (seq, time, actor, action, resource, request_id,
                                          before_sha256, after_sha256, prev_hash, hash)
                VALUES (cur_seq, (ev->>'time')::timestamptz, ev->>'actor', ev->>'action',
                        ev->>'resource', ev->>'request_id', ev->>'before_sha256',
                        ev->>'after_sha256', prev, next_hash);
                prev := next_hash;
            END LOOP;
            RETURN cur_seq;
        END
        $$
        """
    )


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute("DROP FUNCTION IF EXISTS modelplane_audit_append(bigint, jsonb)")
