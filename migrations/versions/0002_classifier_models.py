"""classifier models: a model's type, class names and the model it was trained from

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-04
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("models", schema=None) as batch_op:
        batch_op.add_column(sa.Column("type", sa.String(length=16), nullable=False, server_default="encoder"))
        batch_op.add_column(sa.Column("classes", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("source_model_id", sa.String(length=32), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("models", schema=None) as batch_op:
        batch_op.drop_column("source_model_id")
        batch_op.drop_column("classes")
        batch_op.drop_column("type")
