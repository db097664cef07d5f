"""public images listed newest first from an index

Revision ID: 0003
Revises: 0002
"""

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("images") as batch:
        batch.drop_index("ix_images_region_public")
        batch.create_index("ix_images_region_public_created", ["region", "is_public", "created_at"])


def downgrade() -> None:
    with op.batch_alter_table("images") as batch:
        batch.drop_index("ix_images_region_public_created")
        batch.create_index("ix_images_region_public", ["region", "is_public"])
