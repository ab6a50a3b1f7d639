"""teams and quotas: teams (a model allowlist and quotas shared by their keys), a key's team
and quotas, and quota_usage (what each key and team used per window, summed by every replica)

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-05 08:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op


revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('teams',
    sa.Column('name', sa.String(length=100), nullable=False),
    sa.Column('models', sa.JSON(), nullable=True),
    sa.Column('quotas', sa.JSON(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('name', name=op.f('pk_teams'))
    )
    op.create_table('quota_usage',
    sa.Column('scope', sa.String(length=120), nullable=False),
    sa.Column('period', sa.String(length=16), nullable=False),
    sa.Column('tokens', sa.BigInteger(), nullable=False),
    sa.Column('requests', sa.BigInteger(), nullable=False),
    sa.Column('backend_seconds', sa.Float(), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('scope', 'period', name=op.f('pk_quota_usage'))
    )
    with op.batch_alter_table('api_keys', schema=None) as batch_op:
        batch_op.add_column(sa.Column('team', sa.String(length=100), nullable=True))
        batch_op.add_column(sa.Column('quotas', sa.JSON(), nullable=True))
        batch_op.create_index('ix_api_keys_team', ['team'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('api_keys', schema=None) as batch_op:
        batch_op.drop_index('ix_api_keys_team')
        batch_op.drop_column('quotas')
        batch_op.drop_column('team')

    op.drop_table('quota_usage')
    op.drop_table('teams')
