"""trials keep strategy outputs and the time of their last change

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("trials") as batch_op:
        batch_op.add_column(sa.Column("outputs", sa.JSON(), nullable=False, server_default="{}"))
        batch_op.add_column(sa.Column("updated_at", sa.DateTime(timezone=True), nullable=True))
    op.execute("UPDATE trials SET updated_at = COALESCE(finished_at, started_at, created_at)")
    with op.batch_alter_table("trials") as batch_op:
        batch_op.alter_column("updated_at", nullable=False, existing_type=sa.DateTime(timezone=True))
        batch_op.create_index("ix_trials_job_updated", ["job_id", "updated_at"])


def downgrade() -> None:
    with op.batch_alter_table("trials") as batch_op:
        batch_op.drop_index("ix_trials_job_updated")
        batch_op.drop_column("updated_at")
        batch_op.drop_column("outputs")
