"""resource ledger (gpu_holds, attempts.released_at) and agent registry

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-22
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("attempts") as batch:
        batch.add_column(sa.Column("released_at", sa.DateTime(timezone=True), nullable=True))
    # Attempts that ended before the ledger existed hold nothing.
    op.execute("UPDATE attempts SET released_at = finished_at WHERE finished_at IS NOT NULL")
    op.create_index(
        "ix_attempts_agent_unreleased", "attempts", ["agent_id", "released_at"], unique=False
    )
    op.create_table(
        "gpu_holds",
        sa.Column("agent_id", sa.String(length=64), nullable=False),
        sa.Column("gpu_id", sa.String(length=16), nullable=False),
        sa.Column("job_id", sa.String(length=32), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("acquired_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("agent_id", "gpu_id"),
    )
    op.create_index("ix_gpu_holds_job_id", "gpu_holds", ["job_id"], unique=False)
    op.create_table(
        "agents",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("hostname", sa.String(length=255), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("slots", sa.Integer(), nullable=False),
        sa.Column("memory_bytes", sa.BigInteger(), nullable=False),
        sa.Column("cpus", sa.Float(), nullable=False),
        sa.Column("gpu_ids", sa.JSON(), nullable=False),
        sa.Column("engine_error", sa.Text(), nullable=True),
        sa.Column("stopped_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )


def downgrade() -> None:
    op.drop_table("agents")
    op.drop_index("ix_gpu_holds_job_id", table_name="gpu_holds")
    op.drop_table("gpu_holds")
    op.drop_index("ix_attempts_agent_unreleased", table_name="attempts")
    with op.batch_alter_table("attempts") as batch:
        batch.drop_column("released_at")
