"""latency observations of finished trials, for the predictor's online correction

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "latency_observations",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("target_key", sa.String(length=200), nullable=False),
        sa.Column("predictor_id", sa.String(length=64), nullable=False),
        sa.Column("record", sa.JSON(), nullable=False),
        sa.Column("job_id", sa.String(length=32), nullable=True),
        sa.Column("trial_id", sa.String(length=32), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("trial_id", name="uq_latency_observations_trial"),
    )
    op.create_index(
        "ix_latency_observations_target_predictor", "latency_observations", ["target_key", "predictor_id", "id"]
    )


def downgrade() -> None:
    op.drop_index("ix_latency_observations_target_predictor", table_name="latency_observations")
    op.drop_table("latency_observations")
