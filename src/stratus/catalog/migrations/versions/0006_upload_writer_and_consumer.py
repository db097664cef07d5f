"""uploads: the PUT that holds the write claim (and until when), and the image that consumed the upload

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("uploads") as batch:
        batch.add_column(sa.Column("writer", sa.String(length=64), nullable=True))
        batch.add_column(sa.Column("writer_until", sa.Float(), nullable=True))
        batch.add_column(sa.Column("image_id", sa.String(length=16), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("uploads") as batch:
        batch.drop_column("image_id")
        batch.drop_column("writer_until")
        batch.drop_column("writer")
