"""usage_ledger: what each key, team, model, backend and surface used per hour (requests,
failures, tokens, the backend's own seconds and load seconds), written with the runs

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-05 08:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op


revision = '0010'
down_revision = '0009'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('usage_ledger',
    sa.Column('bucket', sa.DateTime(timezone=True), nullable=False),
    sa.Column('principal', sa.String(length=200), nullable=False),
    sa.Column('team', sa.String(length=200), nullable=False),
    sa.Column('model', sa.String(length=512), nullable=False),
    sa.Column('backend', sa.String(length=512), nullable=False),
    sa.Column('surface', sa.String(length=16), nullable=False),
    sa.Column('requests', sa.BigInteger(), nullable=False),
    sa.Column('failures', sa.BigInteger(), nullable=False),
    sa.Column('prompt_tokens', sa.BigInteger(), nullable=False),
    sa.Column('output_tokens', sa.BigInteger(), nullable=False),
    sa.Column('backend_seconds', sa.Float(), nullable=False),
    sa.Column('load_seconds', sa.Float(), nullable=False),
    sa.PrimaryKeyConstraint('bucket', 'principal', 'team', 'model', 'backend', 'surface', name=op.f('pk_usage_ledger'))
    )
    with op.batch_alter_table('usage_ledger', schema=None) as batch_op:
        batch_op.create_index('ix_usage_ledger_principal_bucket', ['principal', 'bucket'], unique=False)
        batch_op.create_index('ix_usage_ledger_team_bucket', ['team', 'bucket'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('usage_ledger', schema=None) as batch_op:
        batch_op.drop_index('ix_usage_ledger_team_bucket')
        batch_op.drop_index('ix_usage_ledger_principal_bucket')

    op.drop_table('usage_ledger')
