"""Disk manifests in the catalog: recorded once per region, read back verified by their parser."""

from __future__ import annotations

import time

from sqlalchemy import select
from sqlalchemy.orm import Session

from stratus.catalog.models import Manifest
from stratus.domain.manifest import DiskManifest
from stratus.service.context import Services


def record_manifest(s: Session, region: str, manifest: DiskManifest) -> str:
    """Record a manifest in a region unless it is there, and return its digest. Two imports, captures or
    copies of the same content may finish at once: the insert ignores the other's row instead of failing."""
    digest = manifest.digest()
    values = {"region": region, "digest": digest, "body": manifest.to_json(),
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


def load_manifest(svc: Services, region: str, digest: str) -> DiskManifest:
    with svc.db.read() as s:
        body = s.scalar(select(Manifest.body).where(Manifest.region == region, Manifest.digest == digest))
    if body is None:
        raise RuntimeError(f"manifest {digest} is missing from the catalog of {region}")
    return DiskManifest.from_json(body)
