"""int8 OpenVINO files made through NNCF on first request, and the format a deployment serves

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-04 21:00:00
"""
from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0004'
down_revision: str | None = '0003'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('checkpoints', schema=None) as batch_op:
        batch_op.add_column(sa.Column('openvino_int8_blob_id', sa.String(length=32), nullable=True))
        batch_op.create_foreign_key('fk_checkpoints_openvino_int8_blob_id_blobs', 'blobs',
                                    ['openvino_int8_blob_id'], ['id'])
    with op.batch_alter_table('deployments', schema=None) as batch_op:
        batch_op.add_column(sa.Column('format', sa.String(length=32), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('deployments', schema=None) as batch_op:
        batch_op.drop_column('format')
    with op.batch_alter_table('checkpoints', schema=None) as batch_op:
        batch_op.drop_constraint('fk_checkpoints_openvino_int8_blob_id_blobs', type_='foreignkey')
        batch_op.drop_column('openvino_int8_blob_id')
