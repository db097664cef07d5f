"""Disk manifests in the catalog: recorded once per region in their compact binary form
(domain/manifest.py), and read back by the one loader here, which checks the bytes still name the digest
they are stored under."""

from __future__ import annotations

import time
from collections.abc import Iterable

from sqlalchemy import select
from sqlalchemy.orm import Session

from stratus.catalog.models import Manifest
from stratus.domain.manifest import DiskManifest
from stratus.service.context import Services


class ManifestMissing(LookupError):
    """The catalog of the region has no manifest with this digest."""

    def __init__(self, region: str, digest: str) -> None:
        self.region, self.digest = region, digest
        super().__init__(f"manifest {digest} is missing from the catalog of {region}")


def record_manifest(s: Session, region: str, manifest: DiskManifest) -> str:
    """Record a manifest in a region unless it is there, and return its digest. Two imports, captures or
    copies of the same content may finish at once: the insert ignores the other's row instead of failing."""
    digest = manifest.digest()
    values = {"region": region, "digest": digest, "body": manifest.encode(),
              "virtual_size": manifest.virtual_size, "created_at": time.time()}
    dialect = s.get_bind().dialect.name
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        s.execute(pg_insert(Manifest).values(**values).on_conflict_do_nothing())
    elif dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        s.execute(sqlite_insert(Manifest).values(**values).on_conflict_do_nothing())
    elif s.get(Manifest, (region, digest)) is None:  # pragma: no cover - only the two databases above
        s.add(Manifest(**values))
    return digest


def parse_manifest(digest: str, body: bytes | memoryview) -> DiskManifest:
    """A stored body, checked to be the manifest named ``digest`` (a row can't stand in for another)."""
    manifest = DiskManifest.decode(body)
    if manifest.digest() != digest:
        raise ValueError(f"manifest {digest} in the catalog holds another manifest ({manifest.digest()})")
    return manifest


def read_manifests(s: Session, region: str, digests: Iterable[str]) -> dict[str, DiskManifest]:
    """The manifests named ``digests`` in ``region``, in the caller's transaction; ManifestMissing if one
    is not there."""
    wanted = set(digests)
    rows = s.execute(
        select(Manifest.digest, Manifest.body).where(Manifest.region == region, Manifest.digest.in_(wanted))
    ).all()
    found = {digest: parse_manifest(digest, body) for digest, body in rows}
    for digest in sorted(wanted - found.keys()):
        raise ManifestMissing(region, digest)
    return found


def load_manifest(svc: Services, region: str, digest: str) -> DiskManifest:
    """The manifest ``digest`` of ``region``; ManifestMissing if the catalog has none."""
    with svc.db.read() as s:
        return read_manifests(s, region, [digest])[digest]
