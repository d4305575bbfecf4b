"""Measurement agents: agent keys, targets, agents, measurement tasks, calibrations, predictors per target

Revision ID: 0011
Revises: 0010
"""

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("api_keys") as batch_op:
        batch_op.add_column(sa.Column("kind", sa.String(16), nullable=False, server_default="user"))
    op.create_table(
        "targets",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("owner", sa.String(200), nullable=False, index=True),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("owner", "name", name="uq_targets_owner_name"),
    )
    op.create_table(
        "agents",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("target_id", sa.String(32), sa.ForeignKey("targets.id", ondelete="CASCADE"), nullable=False, index=True),
        sa.Column("key_id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("hardware", sa.JSON(), nullable=False),
        sa.Column("runtimes", sa.JSON(), nullable=False),
        sa.Column("concurrency", sa.Integer(), nullable=False),
        sa.Column("registered_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("measurements_done", sa.Integer(), nullable=False),
        sa.UniqueConstraint("target_id", "name", name="uq_agents_target_name"),
    )
    op.create_table(
        "measurement_tasks",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("target_id", sa.String(32), sa.ForeignKey("targets.id", ondelete="CASCADE"), nullable=False),
        sa.Column("purpose", sa.String(16), nullable=False),
        sa.Column("trial_id", sa.String(36), nullable=True, index=True),
        sa.Column("calibration_id", sa.String(32), nullable=True, index=True),
        sa.Column("runtime", sa.String(32), nullable=False),
        sa.Column("input_shape", sa.JSON(), nullable=False),
        sa.Column("batch_size", sa.Integer(), nullable=False),
        sa.Column("num_threads", sa.Integer(), nullable=False),
        sa.Column("min_run_time", sa.Float(), nullable=False),
        sa.Column("rounds", sa.Integer(), nullable=False),
        sa.Column("model_path", sa.Text(), nullable=False),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("lease_id", sa.String(32), nullable=True),
        sa.Column("agent_id", sa.String(32), nullable=True),
        sa.Column("lease_expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("result", sa.JSON(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.create_index("ix_measurement_tasks_target_state", "measurement_tasks", ["target_id", "state"])
    op.create_table(
        "calibrations",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("target_id", sa.String(32), sa.ForeignKey("targets.id", ondelete="CASCADE"), nullable=False, index=True),
        sa.Column("runtime", sa.String(32), nullable=False),
        sa.Column("quick", sa.Boolean(), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("progress", sa.Text(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("predictor_version", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.create_table(
        "target_predictors",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("target_id", sa.String(32), sa.ForeignKey("targets.id", ondelete="CASCADE"), nullable=False, index=True),
        sa.Column("runtime", sa.String(32), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("predictor", sa.Text(), nullable=False),
        sa.Column("accuracy", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("target_id", "runtime", "version", name="uq_target_predictors_version"),
    )


def downgrade() -> None:
    op.drop_table("target_predictors")
    op.drop_table("calibrations")
    op.drop_index("ix_measurement_tasks_target_state", table_name="measurement_tasks")
    op.drop_table("measurement_tasks")
    op.drop_table("agents")
    op.drop_table("targets")
    with op.batch_alter_table("api_keys") as batch_op:
        batch_op.drop_column("kind")
