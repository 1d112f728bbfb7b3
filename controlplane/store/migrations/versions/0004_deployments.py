"""Deployments, rollouts, rollout events and window reports.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def _ts(name: str, nullable: bool = False) -> sa.Column:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "deployments",
        sa.Column("id", sa.String(length=63), nullable=False),
        sa.Column("model_id", sa.String(length=63), nullable=False),
        sa.Column("description", sa.String(), nullable=False),
        sa.Column("labels", sa.JSON(), nullable=False),
        sa.Column("champion_version", sa.BigInteger(), nullable=False),
        sa.Column("guards", sa.JSON(), nullable=False),
        sa.Column("drift_thresholds", sa.JSON(), nullable=False),
        sa.Column("webhook_url", sa.String(), nullable=False),
        sa.Column("generation", sa.BigInteger(), nullable=False),
        sa.Column("rollout_id", sa.String(length=63), nullable=False),
        _ts("last_drift_time", nullable=True),
        sa.Column("created_by", sa.String(), nullable=False),
        _ts("create_time"),
        _ts("update_time"),
        sa.Column("revision", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("deployments", schema=None) as batch_op:
        batch_op.create_index("ix_deployments_model_id", ["model_id"], unique=False)

    op.create_table(
        "rollouts",
        sa.Column("deployment_id", sa.String(length=63), nullable=False),
        sa.Column("id", sa.String(length=63), nullable=False),
        sa.Column("candidate_version", sa.BigInteger(), nullable=False),
        sa.Column("champion_version", sa.BigInteger(), nullable=False),
        sa.Column("strategy", sa.String(length=16), nullable=False),
        sa.Column("steps", sa.JSON(), nullable=False),
        sa.Column("split", sa.Float(), nullable=False),
        sa.Column("shadow_fraction", sa.Float(), nullable=False),
        sa.Column("step_duration_seconds", sa.Float(), nullable=False),
        sa.Column("min_requests", sa.BigInteger(), nullable=False),
        sa.Column("guards", sa.JSON(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("phase", sa.String(length=16), nullable=False),
        sa.Column("step", sa.Integer(), nullable=False),
        sa.Column("candidate_percent", sa.Float(), nullable=False),
        _ts("phase_start_time"),
        _ts("start_time"),
        _ts("end_time", nullable=True),
        sa.Column("started_by", sa.String(), nullable=False),
        sa.Column("reason", sa.String(), nullable=False),
        sa.Column("step_generation", sa.BigInteger(), nullable=False),
        sa.Column("step_candidate_requests", sa.BigInteger(), nullable=False),
        sa.Column("evidence", sa.JSON(), nullable=False),
        sa.Column("champion_reference", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("deployment_id", "id"),
    )
    with op.batch_alter_table("rollouts", schema=None) as batch_op:
        batch_op.create_index("ix_rollouts_state", ["state"], unique=False)

    op.create_table(
        "rollout_events",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("deployment_id", sa.String(length=63), nullable=False),
        sa.Column("rollout_id", sa.String(length=63), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("phase", sa.String(length=16), nullable=False),
        sa.Column("step", sa.Integer(), nullable=False),
        sa.Column("candidate_percent", sa.Float(), nullable=False),
        sa.Column("action", sa.String(length=32), nullable=False),
        sa.Column("reason", sa.String(), nullable=False),
        sa.Column("actor", sa.String(), nullable=False),
        sa.Column("evidence", sa.JSON(), nullable=False),
        _ts("create_time"),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("rollout_events", schema=None) as batch_op:
        batch_op.create_index("ix_rollout_events_deployment", ["deployment_id", "id"], unique=False)

    op.create_table(
        "window_reports",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("deployment_id", sa.String(length=63), nullable=False),
        sa.Column("replica", sa.String(length=200), nullable=False),
        sa.Column("sequence", sa.BigInteger(), nullable=False),
        sa.Column("generation", sa.BigInteger(), nullable=False),
        sa.Column("rollout_id", sa.String(length=63), nullable=False),
        _ts("start_time", nullable=True),
        _ts("end_time", nullable=True),
        _ts("receive_time"),
        sa.Column("body", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("deployment_id", "replica", "sequence", name="uq_window_reports_seq"),
    )
    with op.batch_alter_table("window_reports", schema=None) as batch_op:
        batch_op.create_index(
            "ix_window_reports_recent",
            ["deployment_id", "rollout_id", "receive_time"],
            unique=False,
        )


def downgrade() -> None:
    with op.batch_alter_table("window_reports", schema=None) as batch_op:
        batch_op.drop_index("ix_window_reports_recent")
    op.drop_table("window_reports")
    with op.batch_alter_table("rollout_events", schema=None) as batch_op:
        batch_op.drop_index("ix_rollout_events_deployment")
    op.drop_table("rollout_events")
    with op.batch_alter_table("rollouts", schema=None) as batch_op:
        batch_op.drop_index("ix_rollouts_state")
    op.drop_table("rollouts")
    with op.batch_alter_table("deployments", schema=None) as batch_op:
        batch_op.drop_index("ix_deployments_model_id")
    op.drop_table("deployments")
