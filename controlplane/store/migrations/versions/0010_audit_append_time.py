"""PostgreSQL: the append function takes each audit event's time under its lock.

Events used to carry their transaction's start time, rendered by the caller. Under concurrent
writers a transaction that began earlier could append later, so event times did not follow
the sequence, and a reader tailing the trail by ``since`` could miss an event. The caller now
leaves a third gap in the canonical JSON, the time text (``tail || time || tail_after_time``);
the function fills it with the clock time once it holds the lock, never earlier than the
event before. Events rendered the old way (a ``time``, no ``tail_after_time``) are appended as
before, so servers of the previous version keep working during an upgrade. SQLite needs
nothing.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-03
"""

from __future__ import annotations

import importlib

from alembic import op

revision = "0010"
down_revision = "0009"
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
            ev_time timestamptz;
            body text;
            next_hash text;
        BEGIN
            PERFORM pg_advisory_xact_lock(lock_key);
            SELECT e.seq, e.hash, e.time INTO cur_seq, prev, ev_time FROM audit_events AS e
                ORDER BY e.seq DESC LIMIT 1;
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


def downgrade() -> None:
    # The function as revision 0006 made it.
    importlib.import_module("controlplane.store.migrations.versions.0006_audit_append").upgrade()
