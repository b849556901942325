"""OpenVINO export per checkpoint: the IR zip, its measured latency and per-layer precision

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01 10:00:00
"""
from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0003'
down_revision: str | None = '0002'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('checkpoints', schema=None) as batch_op:
        batch_op.add_column(sa.Column('openvino_blob_id', sa.String(length=32), nullable=True))
        batch_op.add_column(sa.Column('latency_ms', sa.Float(), nullable=True))
        batch_op.add_column(sa.Column('layer_precision', sa.JSON(), nullable=True))
        batch_op.create_foreign_key('fk_checkpoints_openvino_blob_id_blobs', 'blobs', ['openvino_blob_id'], ['id'])
    with op.batch_alter_table('job_steps', schema=None) as batch_op:
        batch_op.add_column(sa.Column('latency_ms', sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('job_steps', schema=None) as batch_op:
        batch_op.drop_column('latency_ms')
    with op.batch_alter_table('checkpoints', schema=None) as batch_op:
        batch_op.drop_constraint('fk_checkpoints_openvino_blob_id_blobs', type_='foreignkey')
        batch_op.drop_column('layer_precision')
        batch_op.drop_column('latency_ms')
        batch_op.drop_column('openvino_blob_id')
