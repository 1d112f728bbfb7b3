"""Audit events are numbered from 1: a CHECK refuses a row with ``seq`` below 1.

The chain starts at 1, and export and verification read it from there, so a row inserted at 0
or below would sit outside every check. Rows already there (a database tampered with before
this revision) are kept for verification to report, not refused by the migration: PostgreSQL
adds the constraint NOT VALID and validates it only when no such row exists; SQLite rebuilds
the table with CHECK constraints ignored while the rows are copied.

On PostgreSQL the append function also reads the chain's head among the rows from 1 on, as
the SQLite path does, so that a row below 1 can neither be taken for the head of an empty
chain nor block appends.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-04
"""

from __future__ import annotations

import importlib

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

CONSTRAINT = "ck_audit_events_seq_from_one"


def upgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name == "postgresql":
        op.execute(
            f"ALTER TABLE audit_events ADD CONSTRAINT {CONSTRAINT} CHECK (seq >= 1) NOT VALID"
        )
        if bind.execute(sa.text("SELECT count(*) FROM audit_events WHERE seq < 1")).scalar() == 0:
            op.execute(f"ALTER TABLE audit_events VALIDATE CONSTRAINT {CONSTRAINT}")
        _append_function()
        return
    op.execute("PRAGMA ignore_check_constraints = ON")
    try:
        with op.batch_alter_table("audit_events", recreate="always") as batch_op:
            batch_op.create_check_constraint(CONSTRAINT, "seq >= 1")
    finally:
        op.execute("PRAGMA ignore_check_constraints = OFF")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(f"ALTER TABLE audit_events DROP CONSTRAINT IF EXISTS {CONSTRAINT}")
        # The function as revision 0010 made it.
        importlib.import_module(
            "controlplane.store.migrations.versions.0010_audit_append_time"
        ).upgrade()
        return
    with op.batch_alter_table("audit_events", recreate="always") as batch_op:
        batch_op.drop_constraint(CONSTRAINT, type_="check")


def _append_function() -> None:
    """Revision 0010's function, reading the head among rows numbered from 1."""
    op.execute(
        """
        CREATE OR REPLACE FUNCTION modelplane_audit_append(lock_key bigint, events jsonb)
        RETURNS bigint
        LANGUAGE plpgsql VOLATILE AS $$
        DECLARE
            ev jsonb;
            cur_seq bigint;
            prev text;
            ev_time timestamptz;
            body text;
            next_hash text;
        BEGIN
            PERFORM pg_advisory_xact_lock(lock_key);
            SELECT e.seq, e.hash, e.time INTO cur_seq, prev, ev_time FROM audit_events AS e
                WHERE e.seq >= 1 ORDER BY e.seq DESC LIMIT 1;
            IF cur_seq IS NULL THEN
                cur_seq := 0;
                prev := repeat('0', 64);
            END IF;
            FOR ev IN SELECT value FROM jsonb_array_elements(events) LOOP
                cur_seq := cur_seq + 1;
                body := (ev->>'head') || prev || (ev->>'mid') || cur_seq::text || (ev->>'tail');
                IF ev ? 'tail_after_time' THEN
                    ev_time := greatest(clock_timestamp(), ev_time);
                    body := body
                        || to_char(ev_time AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')
                        || (ev->>'tail_after_time');
                ELSE
                    ev_time := (ev->>'time')::timestamptz;
                END IF;
                next_hash := encode(sha256(convert_to(body, 'UTF8')), 'hex');
                INSERT INTO audit_events (seq, time, actor, action, resource, request_id,
                                          before_sha256, after_sha256, prev_hash, hash)
                VALUES (cur_seq, ev_time, ev->>'actor', ev->>'action',
                        ev->>'resource', ev->>'request_id', ev->>'before_sha256',
                        ev->>'after_sha256', prev, next_hash);
                prev := next_hash;
            END LOOP;
            RETURN cur_seq;
        END
        $$
        """
    )
