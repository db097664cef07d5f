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

from collections.abc import Iterable
from typing import Any

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from stratus.catalog.models import Image, ImageDisk, Instance, InstanceDisk
from stratus.service.context import Caller
from stratus.service.manifests import read_manifests

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


def readable_chunks(s: Session, account_id: str, region: str, digests: Iterable[str]) -> set[str]:
    """Which of ``digests`` ``account_id`` could already read in ``region``: chunks of its own images, of the
    public images there, and of the bases under its instances. Only these may be *known* to be in the
    store; any other chunk is sent in full (and verified) even when the store holds it, so the time and
    progress of a copy say nothing about other accounts' data."""
    wanted = set(digests)
    if not wanted:
        return set()
    images = select(ImageDisk.manifest_digest).join(Image, Image.id == ImageDisk.image_id).where(
        Image.region == region, or_(Image.owner_id == account_id, Image.is_public),
        ImageDisk.manifest_digest.is_not(None))
    bases = select(InstanceDisk.base_manifest).join(Instance, Instance.id == InstanceDisk.instance_id).where(
        Instance.region == region, Instance.owner_id == account_id, InstanceDisk.base_manifest.is_not(None))
    manifests = {d for d in s.scalars(images.union(bases)) if d}
    readable: set[str] = set()
    for digest in manifests:  # one at a time: an account's manifests in a region, never the whole catalog
        try:
            manifest = read_manifests(s, region, [digest])[digest]
        except LookupError:  # an image row whose manifest gc has not kept: nothing readable through it
            continue
        readable.update(d for d in manifest.chunks if d is not None and d in wanted)
    return readable
