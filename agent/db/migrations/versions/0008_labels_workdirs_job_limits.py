"""labels (and job_labels for finding jobs by label), workdirs, per-job disk budget, stop grace
and stall timeout

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-25
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("labels", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("workdir", sa.String(length=64), nullable=True))
        batch.add_column(sa.Column("disk_bytes", sa.BigInteger(), nullable=True))
        batch.add_column(sa.Column("stop_grace_seconds", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("stall_timeout_seconds", sa.Integer(), nullable=True))
    op.create_table(
        "job_labels",
        sa.Column("job_id", sa.String(length=32), nullable=False),
        sa.Column("key", sa.String(length=63), nullable=False),
        sa.Column("value", sa.String(length=256), nullable=False),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("job_id", "key"),
    )
    op.create_index("ix_job_labels_key_value", "job_labels", ["key", "value"])
    op.create_table(
        "workdirs",
        sa.Column("digest", sa.String(length=64), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("owner", sa.String(length=64), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("data", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("digest"),
    )


def downgrade() -> None:
    op.drop_table("workdirs")
    op.drop_index("ix_job_labels_key_value", table_name="job_labels")
    op.drop_table("job_labels")
    with op.batch_alter_table("jobs") as batch:
        for column in (
            "stall_timeout_seconds",
            "stop_grace_seconds",
            "disk_bytes",
            "workdir",
            "labels",
        ):
            batch.drop_column(column)
