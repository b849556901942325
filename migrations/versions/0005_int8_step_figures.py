"""A step's int8 file as its job measured it (`deploy_format` openvino-int8)

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-06 01:00:00
"""
from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0005'
down_revision: str | None = '0004'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    for table in ('checkpoints', 'job_steps'):
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.add_column(sa.Column('int8', sa.JSON(), nullable=True))


def downgrade() -> None:
    for table in ('job_steps', 'checkpoints'):
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.drop_column('int8')
