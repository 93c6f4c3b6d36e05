"""tenant limits: each tenant's own submit rates, quotas and timeout cap (issue 13)

Revision ID: 0007_tenant_limits
Revises: 0006_recent_sweep_index
Create Date: 2026-12-04 19:00:00
"""
from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision: str = '0007_tenant_limits'
down_revision: str | None = '0006_recent_sweep_index'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

LIMITS = [
    'submits_per_minute', 'submit_burst', 'key_submits_per_minute', 'key_submit_burst',
    'max_waiting', 'max_running', 'max_timeout_seconds',
]


def upgrade() -> None:
    op.create_table('tenant_limits',
    sa.Column('tenant', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    *(sa.Column(name, sa.Integer(), nullable=True) for name in LIMITS),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_by', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True),
    sa.PrimaryKeyConstraint('tenant')
    )


def downgrade() -> None:
    op.drop_table('tenant_limits')
