"""What an account may learn of the store and of other accounts' resources (no cross-account oracle).

Chunks are shared across accounts in a region's store, so how many bytes an import or a copy *wrote* says
whether someone else already had the same data. Such store-level figures are kept in the task's result for the
operator (operator accounts and the server log) and left out of what any other account reads; an account sees
per-image figures only (the bytes of its image, which it could compute from its own disk).

Lineage (the image or instance an image was made from, the region and URL it came from, its manifest digest)
can name another account's resources; it is shown to the image's owner only, never to a grantee of a shared
image or a viewer of a public one.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Collection, Iterable
from functools import partial
from typing import Any

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from stratus.catalog.models import ChunkOwner, Image, ImageDisk, Instance, InstanceDisk, Manifest
from stratus.domain.manifest import DiskManifest
from stratus.service.context import Caller

# Keys of task results that measure the store rather than the image: how much was new, or already there.
STORE_FIGURES = frozenset({"new_bytes", "BytesCopied", "ChunksCopied", "BytesPresent", "ChunksPresent"})


def _without_store_figures(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_store_figures(v) for k, v in value.items() if k not in STORE_FIGURES}
    if isinstance(value, list):
        return [_without_store_figures(v) for v in value]
    return value


def task_result(result: Any, caller: Caller) -> Any:
    """A task's result as ``caller`` (its owner) may read it."""
    return result if caller.is_operator else _without_store_figures(result)


def sees_lineage(image: Image, caller: Caller) -> bool:
    """Whether ``caller`` may see where ``image`` came from (source image, instance, region, URL, manifest)."""
    return image.owner_id == caller.account_id


class DigestSets:
    """The data digests of recently used manifests, by manifest digest (manifests are immutable, so a
    cached set is never stale). Bounded: a few large manifests, not the catalog."""

    def __init__(self, size: int = 16) -> None:
        self._items: OrderedDict[str, frozenset[str]] = OrderedDict()
        self._size = size
        self._lock = threading.Lock()

    def get(self, key: str, load: Callable[[], DiskManifest | None]) -> frozenset[str] | None:
        """The data digests of the manifest ``key``, from the cache or from ``load()`` (None: no manifest)."""
        with self._lock:
            found = self._items.get(key)
            if found is not None:
                self._items.move_to_end(key)
                return found
        manifest = load()
        if manifest is None:
            return None
        digests = manifest.data_digests()
        with self._lock:
            self._items[key] = digests
            while len(self._items) > self._size:
                self._items.popitem(last=False)
        return digests


MANIFEST_DIGESTS = DigestSets()
_IN_BATCH = 500  # digests per IN (...) query


def readable_chunks(s: Session, account_id: str, region: str, wanted: Collection[str]) -> set[str]:
    """Which of ``wanted`` (hex digests) ``account_id`` could already read in ``region``: chunks it sent
    (``chunk_owners``), then chunks of its own images, of the region's public images and of the bases under
    its instances (by their manifests). Only these may be *known* to be in the store: an upload must send
    any other chunk, and a copy reads it from its source, even when the store already holds it."""
    wanted = set(wanted)
    found: set[str] = set()
    batch = list(wanted)
    for i in range(0, len(batch), _IN_BATCH):
        found.update(s.scalars(select(ChunkOwner.digest).where(
            ChunkOwner.account_id == account_id, ChunkOwner.region == region,
            ChunkOwner.digest.in_(batch[i : i + _IN_BATCH]))))
    rest = wanted - found
    if not rest:
        return found
    images = select(ImageDisk.manifest_digest).join(Image, Image.id == ImageDisk.image_id).where(
        Image.region == region, or_(Image.owner_id == account_id, Image.is_public),
        ImageDisk.manifest_digest.is_not(None))
    bases = select(InstanceDisk.base_manifest).join(Instance, Instance.id == InstanceDisk.instance_id).where(
        Instance.region == region, Instance.owner_id == account_id, InstanceDisk.base_manifest.is_not(None))
    for digest in s.scalars(images.union(bases)).all():
        if not rest:
            break
        if not digest:
            continue
        digests = MANIFEST_DIGESTS.get(digest, partial(_stored_manifest, s, region, digest))
        if digests is None:  # an image row whose manifest is gone: nothing readable through it
            continue
        hit = rest & digests
        found |= hit
        rest -= hit
    return found


def _stored_manifest(s: Session, region: str, digest: str) -> DiskManifest | None:
    body = s.scalar(select(Manifest.body).where(Manifest.region == region, Manifest.digest == digest))
    return DiskManifest.decode(body) if body is not None else None


def record_owner(s: Session, account_id: str, region: str, digests: Iterable[str]) -> None:
    """Remember that the account sent these chunks (insert, ignoring rows already there)."""
    rows = [{"account_id": account_id, "region": region, "digest": d, "created_at": time.time()}
            for d in dict.fromkeys(digests)]
    if not rows:
        return
    dialect = s.get_bind().dialect.name
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        s.execute(pg_insert(ChunkOwner).values(rows).on_conflict_do_nothing())
    else:
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        s.execute(sqlite_insert(ChunkOwner).values(rows).on_conflict_do_nothing())
