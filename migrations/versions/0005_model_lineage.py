"""model lineage: the model a model's weights started from, the jobs that trained it, its input channels

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-06
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

PROTOCOLS = ("linear", "finetune", "supervised")


def upgrade() -> None:
    with op.batch_alter_table("models", schema=None) as batch_op:
        batch_op.add_column(sa.Column("parent_model_id", sa.String(length=32), nullable=True))
        batch_op.add_column(sa.Column("lineage", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("channels", sa.Integer(), nullable=True))
    models = sa.table(
        "models",
        sa.column("id", sa.String),
        sa.column("job_id", sa.String),
        sa.column("dataset_id", sa.String),
        sa.column("method", sa.String),
        sa.column("source_model_id", sa.String),
        sa.column("parent_model_id", sa.String),
        sa.column("lineage", sa.JSON),
    )
    jobs = sa.table("jobs", sa.column("id", sa.String), sa.column("spec", sa.JSON))
    bind = op.get_bind()
    rows = bind.execute(
        sa.select(
            models.c.id, models.c.job_id, models.c.dataset_id, models.c.method, models.c.source_model_id, jobs.c.spec
        ).select_from(models.outerjoin(jobs, jobs.c.id == models.c.job_id))
    ).fetchall()
    for model_id, job_id, dataset_id, method, source, spec in rows:
        # Models before this revision: one job each (a classifier's source's history is not copied).
        protocol = (spec or {}).get("protocol")
        kind = protocol if protocol in PROTOCOLS else "pretrain"
        step = {"job_id": job_id, "kind": kind, "dataset_id": dataset_id, "method": protocol or method}
        bind.execute(models.update().where(models.c.id == model_id).values(lineage=[step], parent_model_id=source))


def downgrade() -> None:
    with op.batch_alter_table("models", schema=None) as batch_op:
        batch_op.drop_column("channels")
        batch_op.drop_column("lineage")
        batch_op.drop_column("parent_model_id")
