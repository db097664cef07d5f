"""own images listed newest first from an index that also carries is_public

Revision ID: 0004
Revises: 0003
"""

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("images") as batch:
        batch.drop_index("ix_images_region_owner_created")
        batch.create_index("ix_images_region_owner_public_created", ["region", "owner_id", "is_public", "created_at"])


def downgrade() -> None:
    with op.batch_alter_table("images") as batch:
        batch.drop_index("ix_images_region_owner_public_created")
        batch.create_index("ix_images_region_owner_created", ["region", "owner_id", "created_at"])
