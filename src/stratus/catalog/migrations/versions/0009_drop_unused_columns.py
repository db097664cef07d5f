"""instances: drop vm_pid and vm_owner, which nothing ever wrote (the qemu driver keeps the VM's pid in
qemu.pid in the instance directory, and adoption after a restart reads it from there)

Revision ID: 0009_drop_unused_columns
Revises: 0008_compute_hosts
"""

import sqlalchemy as sa
from alembic import op

revision = "0009_drop_unused_columns"
down_revision = "0008_compute_hosts"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("instances") as batch:
        batch.drop_column("vm_owner")
        batch.drop_column("vm_pid")


def downgrade() -> None:
    with op.batch_alter_table("instances") as batch:
        batch.add_column(sa.Column("vm_pid", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("vm_owner", sa.String(length=64), nullable=True))
