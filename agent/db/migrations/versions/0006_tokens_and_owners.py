"""API tokens; jobs by owner (indexes), and jobs from before tokens owned by "local"

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-26

The unique constraint on jobs (owner, idempotency_key), which makes two submissions with one
key from one user impossible, exists since 0001 (uq_jobs_owner_idempotency_key).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "tokens",
        sa.Column("id", sa.String(length=16), nullable=False),
        sa.Column("username", sa.String(length=64), nullable=False),
        sa.Column("admin", sa.Boolean(), nullable=False),
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("prefix", sa.String(length=16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("token_hash"),
    )
    op.create_index("ix_jobs_owner_created", "jobs", ["owner", "created_at"], unique=False)
    op.create_index("ix_jobs_owner_status", "jobs", ["owner", "status"], unique=False)
    # Jobs submitted before users existed belong to the single-user mode's user: admins see
    # them, and so does a token created with --user local.
    op.execute(sa.text("UPDATE jobs SET owner = 'local' WHERE owner IS NULL"))


def downgrade() -> None:
    op.drop_index("ix_jobs_owner_status", table_name="jobs")
    op.drop_index("ix_jobs_owner_created", table_name="jobs")
    op.drop_table("tokens")
