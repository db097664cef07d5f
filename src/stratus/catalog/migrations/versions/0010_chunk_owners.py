"""chunked uploads: an upload's region and manifest, and which chunks each account has sent or owns

Revision ID: 0010_chunk_owners
Revises: 0009_drop_unused_columns
"""

import sqlalchemy as sa
from alembic import op

revision = "0010_chunk_owners"
down_revision = "0009_drop_unused_columns"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("uploads") as batch:
        batch.add_column(sa.Column("region", sa.String(length=64), nullable=True))
        batch.add_column(sa.Column("manifest", sa.LargeBinary(), nullable=True))
    op.create_table(
        "chunk_owners",
        sa.Column("account_id", sa.String(length=20), nullable=False),
        sa.Column("region", sa.String(length=64), nullable=False),
        sa.Column("digest", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("account_id", "region", "digest"),
    )


def downgrade() -> None:
    op.drop_table("chunk_owners")
    with op.batch_alter_table("uploads") as batch:
        batch.drop_column("manifest")
        batch.drop_column("region")
