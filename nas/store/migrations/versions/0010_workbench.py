"""Trials keep their log; jobs and trials carry a note and user attributes

Revision ID: 0010
Revises: 0009
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("trials") as batch_op:
        batch_op.add_column(sa.Column("log", sa.Text(), nullable=True))
        batch_op.add_column(sa.Column("note", sa.Text(), nullable=True))
        batch_op.add_column(sa.Column("user_attrs", sa.JSON(), nullable=False, server_default="{}"))
    with op.batch_alter_table("jobs") as batch_op:
        batch_op.add_column(sa.Column("note", sa.Text(), nullable=True))
        batch_op.add_column(sa.Column("user_attrs", sa.JSON(), nullable=False, server_default="{}"))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch_op:
        batch_op.drop_column("user_attrs")
        batch_op.drop_column("note")
    with op.batch_alter_table("trials") as batch_op:
        batch_op.drop_column("user_attrs")
        batch_op.drop_column("note")
        batch_op.drop_column("log")
