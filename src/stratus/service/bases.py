"""Bases: image disks materialized once per compute host and region, shared by every instance disk made
from them on that host.

A base is an immutable sparse raw file named by its manifest digest (`<host dir>/bases/<digest>.raw`, the
host dir from service/hosts.py), read from the region's store, so two images with the same disk content
share one base on a host. Deleting an image never breaks an instance: its
overlays keep the base alive; a base is removed once no image and no instance disk needs it.
"""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path

from sqlalchemy import select

from stratus.catalog.models import BaseDisk, Image, ImageDisk, Instance, InstanceDisk
from stratus.service.context import Services
from stratus.service.hosts import host_dir
from stratus.service.manifests import load_manifest
from stratus.storage.export import materialize_raw

BUILD_LEASE_SECONDS = 120.0


def bases_dir(svc: Services, region: str, host: str) -> Path:
    return host_dir(svc, region, host) / "bases"


def base_path(svc: Services, region: str, digest: str, host: str) -> Path:
    return bases_dir(svc, region, host) / f"{digest}.raw"


def ensure_base(svc: Services, region: str, digest: str, host: str, *, timeout: float = 3600.0) -> Path:
    """The base file for a manifest, materializing it if no one has. Concurrent callers wait for the
    one that builds it; a builder that died (its lease ran out) is replaced."""
    path = base_path(svc, region, digest, host)
    me = uuid.uuid4().hex
    deadline = time.time() + timeout
    while True:
        now = time.time()
        with svc.db.write() as s:
            q = select(BaseDisk).where(BaseDisk.host == host, BaseDisk.region == region,
                                       BaseDisk.manifest_digest == digest)
            if svc.db.is_postgresql:
                q = q.with_for_update()
            row = s.scalars(q).first()
            if row is not None and row.state == "READY" and path.exists():
                return path
            if row is None or row.state == "READY" or (row.build_expires_at or 0) < now:
                if row is None:
                    row = BaseDisk(host=host, region=region, manifest_digest=digest, path=str(path))
                    s.add(row)
                row.state, row.builder, row.build_expires_at = "BUILDING", me, now + BUILD_LEASE_SECONDS
                break
        if time.time() > deadline:
            raise TimeoutError(f"base {digest[:12]} is still being built by another worker")
        time.sleep(0.2)
    manifest = load_manifest(svc, region, digest)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{me}")
    last = [time.monotonic()]

    def renew(_done: int, _total: int) -> None:
        if time.monotonic() - last[0] > BUILD_LEASE_SECONDS / 4:
            last[0] = time.monotonic()
            with svc.db.write() as s:
                row = s.get(BaseDisk, (host, region, digest))
                if row is not None and row.builder == me:
                    row.build_expires_at = time.time() + BUILD_LEASE_SECONDS

    try:
        materialize_raw(manifest, svc.store(region), tmp, progress=renew)
        os.chmod(tmp, 0o444)  # immutable: every overlay on it depends on its bytes
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        with svc.db.write() as s:
            row = s.get(BaseDisk, (host, region, digest))
            if row is not None and row.builder == me:
                s.delete(row)
        raise
    with svc.db.write() as s:
        row = s.get(BaseDisk, (host, region, digest))
        if row is None:
            row = BaseDisk(host=host, region=region, manifest_digest=digest, path=str(path))
            s.add(row)
        row.state, row.builder, row.build_expires_at = "READY", None, None
        row.virtual_size = manifest.virtual_size
    return path


def release_unused_bases(svc: Services, region: str) -> list[str]:
    """Remove the bases (of every host) no image disk and no instance disk of the region refers to. A base
    whose host directory this process sees (this machine, or a shared filesystem) goes at once, file and
    row; one of a host on another machine is marked RELEASED, and that host deletes it
    (:func:`sweep_released_bases`, on its heartbeat)."""
    removed = []
    with svc.db.write() as s:
        image_refs = select(ImageDisk.manifest_digest).join(Image).where(
            Image.region == region, ImageDisk.manifest_digest.is_not(None))
        instance_refs = select(InstanceDisk.base_manifest).join(Instance).where(
            Instance.region == region, InstanceDisk.base_manifest.is_not(None))
        rows = s.scalars(
            select(BaseDisk).where(
                BaseDisk.region == region, BaseDisk.state == "READY",
                BaseDisk.manifest_digest.not_in(image_refs), BaseDisk.manifest_digest.not_in(instance_refs),
            )
        ).all()
        for row in rows:
            path = Path(row.path)
            if path.parent.is_dir():
                path.unlink(missing_ok=True)
                s.delete(row)
            else:  # another machine's disk: its host removes it
                row.state = "RELEASED"
            removed.append(row.manifest_digest)
    return removed


def sweep_released_bases(svc: Services, host: str) -> list[str]:
    """Delete this host's bases that were released by a process that couldn't reach its directory. A base
    asked for again meanwhile is BUILDING or READY, no longer RELEASED, and stays."""
    swept = []
    with svc.db.write() as s:
        q = select(BaseDisk).where(BaseDisk.host == host, BaseDisk.state == "RELEASED")
        if svc.db.is_postgresql:
            q = q.with_for_update()
        for row in s.scalars(q).all():
            Path(row.path).unlink(missing_ok=True)
            s.delete(row)
            swept.append(row.manifest_digest)
    return swept
