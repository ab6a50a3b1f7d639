"""responses: the OpenAI Responses API's stored responses (read again, continued with
previous_response_id from any replica), each an index over the run that produced it

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-04 18:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op


revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('responses',
    sa.Column('id', sa.String(length=64), nullable=False),
    sa.Column('principal', sa.String(length=200), nullable=True),
    sa.Column('previous_response_id', sa.String(length=64), nullable=True),
    sa.Column('depth', sa.Integer(), nullable=False),
    sa.Column('execution_id', sa.String(length=32), nullable=False),
    sa.Column('model', sa.String(length=512), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('input_items', sa.JSON(), nullable=False),
    sa.Column('output_items', sa.JSON(), nullable=False),
    sa.Column('params', sa.JSON(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('completed_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['execution_id'], ['executions.id'], name=op.f('fk_responses_execution_id_executions'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_responses'))
    )
    with op.batch_alter_table('responses', schema=None) as batch_op:
        batch_op.create_index('ix_responses_execution_id', ['execution_id'], unique=False)
        batch_op.create_index('ix_responses_previous_response_id', ['previous_response_id'], unique=False)
        batch_op.create_index('ix_responses_principal_created_at', ['principal', 'created_at'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('responses', schema=None) as batch_op:
        batch_op.drop_index('ix_responses_principal_created_at')
        batch_op.drop_index('ix_responses_previous_response_id')
        batch_op.drop_index('ix_responses_execution_id')

    op.drop_table('responses')
