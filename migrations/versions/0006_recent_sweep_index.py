"""recent sweep: an index on (status, updated_at) for the reconciler's 30-second sweep of recent waiting jobs

Revision ID: 0006_recent_sweep_index
Revises: 0005_history
Create Date: 2026-12-03 09:00:00
"""
from collections.abc import Sequence

from alembic import op

revision: str = '0006_recent_sweep_index'
down_revision: str | None = '0005_history'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.create_index('ix_jobs_status_updated', ['status', 'updated_at'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.drop_index('ix_jobs_status_updated')
