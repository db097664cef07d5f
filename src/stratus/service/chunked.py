"""Chunked uploads and downloads: the client cuts a raw disk into the region's chunks, and only chunks
the server may admit to having are skipped.

**Import.** The client creates an upload (`POST /uploads`, Size = the virtual size), then sends the
disk's manifest (:func:`set_manifest`). The answer lists the data chunks the server *needs*: every chunk
of the manifest except those this account could already read and the store still holds. The client
sends those (:func:`put_chunks`, several per request); each is hashed before it is written, and must be
one the manifest names. Sending the manifest again answers what is still missing: that is both how a
client resumes and how it finishes (nothing needed turns the upload COMPLETE). ImportImage then names
the upload as it names any other (service/import_task.py assembles it without re-reading the bytes).

**No oracle.** "The server has this chunk" is said to an account only about chunks it could read
anyway: chunks it sent itself (recorded in ``chunk_owners`` as they arrive, so an interrupted upload
resumes), and chunks of its own images or of public images in that region (found in their manifests).
Any other chunk is needed and must be sent in full, even when the store already holds it: the server
verifies it and keeps one copy. So no account learns whether another holds some bytes.

**Export.** The owner of a NORMAL image (an operator for a public one: the rule of ExportImages) may
read its manifest and the chunks it names (:func:`export_manifest`, :func:`read_chunks`); a shared image
is for launching instances only and is not exportable this way either.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from stratus.catalog.models import ImageDisk, Upload
from stratus.domain import chunkframes, errors
from stratus.domain.manifest import DiskManifest
from stratus.service.context import Caller, Services
from stratus.service.disclosure import MANIFEST_DIGESTS, readable_chunks, record_owner
from stratus.service.manifests import load_manifest
from stratus.service.uploads import UploadStatus, owned_upload, upload_status
from stratus.service.visibility import check_exportable, get_visible
from stratus.storage.chunkstore import ChunkCorrupt, StoreError, ZeroChunk

MAX_BATCH_BYTES = 64 * 1024 * 1024 + 4096  # a chunk request body: up to 64 MiB of chunks
MAX_READ_CHUNKS = 64  # chunks per read request
# Chunk writes and reads of all requests share these threads (hashing, reads and fsync release the GIL).
_WRITERS = ThreadPoolExecutor(max_workers=8, thread_name_prefix="chunk-io")


@dataclass(frozen=True)
class ManifestAnswer:
    status: UploadStatus
    needed: list[str]  # hex digests the client must send
    needed_bytes: int

    def as_json(self) -> dict[str, object]:
        return {**self.status.as_json(), "Needed": self.needed, "NeededBytes": self.needed_bytes}




def _upload_manifest(upload: Upload) -> DiskManifest:
    if upload.manifest is None:
        raise errors.InvalidParameterValue(
            detail=f"Upload {upload.id} has no manifest yet; POST it to /uploads/{upload.id}/manifest first."
        )
    return DiskManifest.decode(upload.manifest)


def _upload_digests(upload: Upload) -> frozenset[str]:
    key = f"upload:{upload.id}:{len(upload.manifest or b'')}"
    found = MANIFEST_DIGESTS.get(key)
    return found if found is not None else MANIFEST_DIGESTS.get(key, _upload_manifest(upload))  # type: ignore[return-value]


# --------------------------------------------------------------------------- import


def set_manifest(svc: Services, caller: Caller, upload_id: str, region_name: str | None, body: bytes
                 ) -> ManifestAnswer:
    """Record the manifest of a chunked upload (or check it is the one recorded) and answer what is needed."""
    region = svc.region(region_name)
    try:
        manifest = DiskManifest.decode(body)
    except ValueError as exc:
        raise errors.InvalidParameterValue(detail=f"The body is not a disk manifest (SMF2): {exc}.") from None
    with svc.db.read() as s:
        upload = owned_upload(s, caller, upload_id)
        if upload.manifest is None and upload.received:
            raise errors.InvalidParameterValue(
                detail=f"Upload {upload_id} already holds {upload.received} bytes of a file; a chunked import "
                "needs an upload of its own.")
        if upload.manifest is not None and (upload.manifest != bytes(body) or upload.region != region.name):
            raise errors.InvalidParameterValue(
                detail=f"Upload {upload_id} has another manifest (or region); create a new upload for this disk.")
        if upload.state == "CONSUMED":
            raise errors.InvalidParameterValue(detail=f"Upload {upload_id} was already imported.")
    if manifest.virtual_size != upload.size:
        raise errors.InvalidParameterValue(
            detail=f"The manifest's disk is {manifest.virtual_size} bytes but upload {upload_id} was created with "
            f"Size {upload.size}.")
    if manifest.chunk_size != region.chunk_size:
        raise errors.InvalidParameterValue(
            detail=f"{region.name} cuts disks into chunks of {region.chunk_size} bytes, not {manifest.chunk_size}.")
    if manifest.virtual_size % 512:
        raise errors.InvalidParameterValue(
            detail=f"A raw disk is whole 512-byte sectors; {manifest.virtual_size} bytes is not.")
    wanted = manifest.data_digests()
    with svc.db.read() as s:
        readable = readable_chunks(s, caller.account_id, region.name, wanted)
    # Touching them also keeps gc from taking them before the import records the manifest.
    have = set(svc.store(region.name).present(readable)) if readable else set()
    needed = sorted(wanted - have)
    lengths = _chunk_lengths(manifest, set(needed))
    with svc.db.write() as s:
        upload = owned_upload(s, caller, upload_id)
        upload.manifest, upload.region = bytes(body), region.name
        if not needed and upload.state == "UPLOADING":
            upload.state, upload.received = "COMPLETE", upload.size
        s.flush()
        status = upload_status(upload)
    return ManifestAnswer(status, needed, sum(lengths.values()))


def _chunk_lengths(manifest: DiskManifest, digests: set[str]) -> dict[str, int]:
    lengths: dict[str, int] = {}
    if not digests:
        return lengths
    for index, digest in enumerate(manifest.chunks):
        if digest in digests and digest not in lengths:
            lengths[digest] = manifest.chunk_range(index)[1]
    return lengths


def put_chunks(svc: Services, caller: Caller, upload_id: str, records: list[tuple[str, memoryview]]) -> int:
    """Store chunks of a chunked upload: each must be named by its manifest and hash to its digest
    (checked before anything is written). Returns how many chunks the store did not have: for the
    server's own accounting, never for the client (it would be the oracle this module avoids)."""
    with svc.db.read() as s:
        upload = owned_upload(s, caller, upload_id)
        if upload.state != "UPLOADING":
            raise errors.InvalidParameterValue(detail=f"Upload {upload_id} is {upload.state}; nothing to send.")
        digests = _upload_digests(upload)  # refused if there is no manifest yet
        region = upload.region
    assert region is not None
    for digest, _data in records:
        if digest not in digests:
            raise errors.InvalidParameterValue(
                detail=f"Chunk {digest} is not a data chunk of upload {upload_id}'s manifest.")
    store = svc.store(region)
    try:
        with store.writer(expected=len(records), conceal_present=True) as writer:  # no timing oracle
            # Each chunk file is fsynced before it is named: in parallel, a batch costs about one fsync.
            list(_WRITERS.map(lambda record: writer.put(*record), records))
            writer.commit()
            new = writer.new_chunks
    except ChunkCorrupt as exc:
        raise errors.InvalidParameterValue(
            detail=f"Chunk {exc.digest} arrived damaged (its bytes hash to {exc.actual}); send it again.") from None
    except ZeroChunk:
        raise errors.InvalidParameterValue(
            detail="All-zero chunks are never sent; the manifest records them as zero.") from None
    with svc.db.write() as s:
        record_owner(s, caller.account_id, region, [d for d, _ in records])
    return new


def parse_chunks(body: bytes | memoryview) -> list[tuple[str, memoryview]]:
    try:
        return list(chunkframes.decode(body))
    except chunkframes.FrameError as exc:
        raise errors.InvalidParameterValue(detail=f"Malformed chunk batch: {exc}.") from None


# --------------------------------------------------------------------------- export


def _exportable(svc: Services, caller: Caller, region: str, image_id: str) -> list[ImageDisk]:
    with svc.db.read() as s:
        image = get_visible(s, caller, region, image_id)
        check_exportable(image, caller)
        return list(image.disks)


def export_manifest(svc: Services, caller: Caller, region: str, image_id: str, disk_index: int) -> DiskManifest:
    disks = {d.index: d for d in _exportable(svc, caller, region, image_id)}
    disk = disks.get(disk_index)
    if disk is None or disk.manifest_digest is None:
        raise errors.InvalidParameterValue(detail=f"Image {image_id} has no disk {disk_index}.")
    manifest = load_manifest(svc, region, disk.manifest_digest)
    MANIFEST_DIGESTS.get(disk.manifest_digest, manifest)
    return manifest


def read_chunks(svc: Services, caller: Caller, region: str, image_id: str, digests: list[str]
                ) -> list[bytes | memoryview]:
    """The bytes of chunks of an exportable image (each re-hashed by the store as it is read)."""
    allowed: set[str] = set()
    for disk in _exportable(svc, caller, region, image_id):
        if disk.manifest_digest is None:
            continue
        found = MANIFEST_DIGESTS.get(disk.manifest_digest)
        if found is None:
            found = MANIFEST_DIGESTS.get(disk.manifest_digest, load_manifest(svc, region, disk.manifest_digest))
        allowed |= found or frozenset()
    for digest in digests:
        if digest not in allowed:
            raise errors.InvalidParameterValue(detail=f"Chunk {digest[:80]!r} is not a data chunk of image {image_id}.")
    try:
        return list(_WRITERS.map(svc.store(region).get, digests))
    except StoreError as exc:  # damaged or lost in the store: name the chunk, as a failed ExportImages task does
        raise errors.InternalError(f"{exc}.") from exc


# --------------------------------------------------------------------------- the import of a chunked upload

PROBE_HEAD = 8 * 1024 * 1024  # what the gate reads of a raw disk: every format's header lies in it


class ChunkedImportError(Exception):
    """A chunked upload that can't become an image (the message says what to do)."""


def chunked_upload(svc: Services, upload_id: str) -> Upload | None:
    """The upload if it is chunked (has a manifest), else None."""
    with svc.db.read() as s:
        upload = s.get(Upload, upload_id)
        return upload if upload is not None and upload.manifest is not None else None


def assemble(svc: Services, upload: Upload, region: str, work: Path) -> tuple[DiskManifest, Path]:
    """Check every chunk of a chunked upload is in the store and write a probe of the assembled raw disk
    for the gate: a sparse file of the disk's size holding its first ``PROBE_HEAD`` bytes and its last
    chunk (where a format header or footer would be), zeros elsewhere. The server never sees the client's
    qcow2/vmdk/vhd: only raw chunks, whose raw-disk checks (no format hiding inside, size) run on this."""
    if upload.region != region:
        raise ChunkedImportError(
            f"the upload's chunks are in {upload.region}, not {region}: import it in {upload.region}")
    assert upload.manifest is not None
    manifest = DiskManifest.decode(upload.manifest)
    store = svc.store(region)
    wanted = manifest.data_digests()
    missing = wanted - set(store.present(wanted))
    if missing:
        raise ChunkedImportError(
            f"{len(missing)} of the disk's chunks never arrived; run `stratus image import` again to send them")
    probe = work / "probe.raw"
    head = -(-min(PROBE_HEAD, manifest.virtual_size) // manifest.chunk_size)
    indexes = sorted({*range(head), manifest.chunk_count - 1})
    with probe.open("wb") as f:
        f.truncate(manifest.virtual_size)
        for index in indexes:
            digest = manifest.chunks[index]
            if digest is not None:
                f.seek(manifest.chunk_range(index)[0])
                f.write(store.get(digest))
    return manifest, probe
