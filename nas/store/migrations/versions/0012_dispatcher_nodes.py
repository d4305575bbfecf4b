"""dispatchers record their Ray cluster's nodes (CPUs, GPUs), against which the API checks a job's resources

Revision ID: 0012
Revises: 0011
"""

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("dispatchers") as batch_op:
        batch_op.add_column(sa.Column("nodes", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("dispatchers") as batch_op:
        batch_op.drop_column("nodes")
