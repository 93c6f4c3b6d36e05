"""history: result references, error signatures, tags, large results, and the indexes history queries need

Revision ID: 0005_history
Revises: 0004_job_control
Create Date: 2026-11-23 09:15:02.941654
"""
from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = '0005_history'
down_revision: str | None = '0004_job_control'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql')
ANALYTICS = ['queue', 'task', 'status', 'attempt', 'run_ms', 'wait_ms']


def upgrade() -> None:
    op.create_table('job_results',
    sa.Column('job_id', sqlmodel.sql.sqltypes.AutoString(length=36), nullable=False),
    sa.Column('attempt', sa.Integer(), nullable=False),
    sa.Column('size_bytes', sa.Integer(), nullable=False),
    sa.Column('sha256', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('body', sa.Text(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['job_id'], ['jobs.job_id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('job_id')
    )
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('result_ref', JSON, nullable=True))
        batch_op.add_column(sa.Column('error_signature', sqlmodel.sql.sqltypes.AutoString(length=255), nullable=True))
        batch_op.add_column(sa.Column('tags', JSON, nullable=True))
        batch_op.drop_index('ix_jobs_ended_at')
        batch_op.drop_index('ix_jobs_queue')
        batch_op.drop_index('ix_jobs_task')
        batch_op.create_index('ix_jobs_ended', ['ended_at', *ANALYTICS], unique=False)
        batch_op.create_index('ix_jobs_tenant_ended', ['tenant', 'ended_at', *ANALYTICS], unique=False)
        batch_op.create_index('ix_jobs_created', ['created_at', 'job_id'], unique=False)
        batch_op.create_index('ix_jobs_owner_created', ['owner', 'created_at'], unique=False)
        batch_op.create_index('ix_jobs_parent_id', ['parent_id'], unique=False)
        batch_op.create_index('ix_jobs_trace_id', ['trace_id'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.drop_index('ix_jobs_trace_id')
        batch_op.drop_index('ix_jobs_parent_id')
        batch_op.drop_index('ix_jobs_owner_created')
        batch_op.drop_index('ix_jobs_created')
        batch_op.drop_index('ix_jobs_tenant_ended')
        batch_op.drop_index('ix_jobs_ended')
        batch_op.create_index('ix_jobs_ended_at', ['ended_at'], unique=False)
        batch_op.create_index('ix_jobs_queue', ['queue'], unique=False)
        batch_op.create_index('ix_jobs_task', ['task'], unique=False)
        batch_op.drop_column('tags')
        batch_op.drop_column('error_signature')
        batch_op.drop_column('result_ref')

    op.drop_table('job_results')
