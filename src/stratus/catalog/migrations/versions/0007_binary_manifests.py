"""manifests stored in the binary SMF2 form (32 bytes per data chunk) instead of hex JSON

Revision ID: 0007
Revises: 0006

The manifest digest (BLAKE3 of the canonical JSON) does not change, so no reference to a manifest
(image disks, instance disks, base files) is touched: only ``manifests.body`` is rewritten, one row at
a time, each checked to keep its digest. A body already in the binary form is left alone, so the
upgrade can be rerun after an interruption.
"""

import sqlalchemy as sa
from alembic import op

from stratus.domain.manifest import DiskManifest

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

_manifests = sa.table(
    "manifests",
    sa.column("region", sa.String),
    sa.column("digest", sa.String),
    sa.column("body", sa.LargeBinary),
)


def _rewrite(convert) -> None:
    conn = op.get_bind()
    keys = conn.execute(sa.select(_manifests.c.region, _manifests.c.digest)).all()
    for region, digest in keys:
        where = (_manifests.c.region == region) & (_manifests.c.digest == digest)
        body = bytes(conn.execute(sa.select(_manifests.c.body).where(where)).scalar_one())
        new = convert(digest, body)
        if new is not None:
            conn.execute(sa.update(_manifests).where(where).values(body=new))


def _to_binary(digest: str, body: bytes) -> bytes | None:
    if not body.startswith(b"{"):
        return None  # already binary
    manifest = DiskManifest.from_json(body)
    if manifest.digest() != digest:
        raise RuntimeError(f"manifest {digest} holds another manifest ({manifest.digest()}); not converted")
    return manifest.encode()


def _to_json(digest: str, body: bytes) -> bytes | None:
    if body.startswith(b"{"):
        return None
    return DiskManifest.decode(body).to_json()


def upgrade() -> None:
    _rewrite(_to_binary)


def downgrade() -> None:
    _rewrite(_to_json)
