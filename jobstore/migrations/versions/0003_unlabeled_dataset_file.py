"""jobs: unlabeled_dataset_file_id, the optional file of unlabeled in-domain texts a
classification rebuild distils on (issue 21).

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("unlabeled_dataset_file_id", sa.String(length=40), nullable=True)
        )


def downgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_column("unlabeled_dataset_file_id")
