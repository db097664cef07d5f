"""No cross-account oracle: what an account reads says nothing about whether its data was already in the
store because of someone else's images; and lineage naming another account's resources is the owner's only.

Two accounts import the same disk (the second one's chunks all exist already) and a third a disk of its own
(none exist): every task result, image field and copy result they read has the same shape and the same
per-image figures. Then an owner copies, shares and publishes: a grantee or a public viewer sees no lineage."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests import hostile
from tests.conftest import Account, Server
from tests.e2e.helpers import catalog_task_result, describe, file_server, import_request, wait_image, wait_task

MiB = 1024 * 1024
GZ, SH = "ap-guangzhou", "ap-shanghai"
LINEAGE = ("SourceImageId", "SourceRegion", "SourceInstanceId", "SourceUrl")


@pytest.fixture(scope="module")
def web(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str]]:
    directory = tmp_path_factory.mktemp("oracle-images")
    with file_server(directory, "127.0.0.2") as (url, _):
        yield directory, url


def _task_of(server: Server, account: Account, image_id: str) -> dict[str, Any]:
    """The account's task for an image (DescribeTasks shows only the caller's own)."""
    tasks = server.common(account).call_json("DescribeTasks", {"TaskIds": list(range(1, 100))})["Response"]
    [task] = [t for t in tasks["TaskSet"] if t["ImageId"] == image_id]
    return wait_task(server, account, task["TaskId"])


def _import(server: Server, account: Account, name: str, url: str) -> tuple[dict[str, Any], dict[str, Any]]:
    image_id = server.client(account).ImportImage(import_request(name, url)).ImageId
    image = wait_image(server, account, image_id)
    assert image["ImageState"] == "NORMAL", image
    return image, _task_of(server, account, image_id)


def _shape(value: Any) -> Any:
    """The structure of a JSON value with its strings masked (ids and digests differ between accounts)."""
    if isinstance(value, dict):
        return {k: _shape(v) for k, v in value.items() if k not in ("ImageId", "TaskId")}
    if isinstance(value, list):
        return [_shape(v) for v in value]
    return "<str>" if isinstance(value, str) else value


def _image_view(image: dict[str, Any]) -> dict[str, Any]:
    keep = ("ImageSize", "ImageState", "ImageStateReason", "ImageProgress", "SnapshotSet", "DiskSet", "SyncPercent")
    return {k: _shape(image[k]) for k in keep}


def test_nothing_says_whether_chunks_already_existed(server: Server, web: tuple[Path, str]) -> None:
    directory, url = web
    first, second, third = server.account("o-first"), server.account("o-second"), server.account("o-third")
    shared_disk = hostile.make_test_disk(directory, "qcow2", 4 * MiB, seed=901)
    own_disk = hostile.make_test_disk(directory, "qcow2", 4 * MiB, seed=902)
    a_img, _ = _import(server, first, "same", f"{url}/{shared_disk.name}")
    b_img, b_task = _import(server, second, "same", f"{url}/{shared_disk.name}")  # every chunk already there
    c_img, c_task = _import(server, third, "own", f"{url}/{own_disk.name}")  # no chunk there
    # The store did know: the operator's view of the second import says it wrote nothing new.
    assert catalog_task_result(server, b_task["TaskId"])["disks"]["0"]["new_bytes"] == 0
    assert catalog_task_result(server, c_task["TaskId"])["disks"]["0"]["new_bytes"] > 0
    # What the accounts read is alike.
    assert "new_bytes" not in str(b_task["Result"]) and "new_bytes" not in str(c_task["Result"])
    assert _shape(b_task) == _shape(c_task)
    assert _image_view(b_img) == _image_view(c_img)
    assert b_img["DiskSet"][0]["StoredBytes"] == a_img["DiskSet"][0]["StoredBytes"] > 0  # the image's own bytes

    # A copy into a region whose store already holds every chunk (first copied there before) reads like a
    # copy into one that holds none.
    copies = {}
    for acct, img in ((first, a_img), (second, b_img), (third, c_img)):
        resp = server.common(acct).call_json("SyncImages", {"ImageIds": [img["ImageId"]], "DestinationRegions": [SH],
                                                            "ImageSetRequired": True})["Response"]
        [entry] = resp["ImageSet"]
        copies[acct.name] = wait_task(server, acct, entry["TaskId"])
        assert wait_image(server, acct, entry["ImageId"], region=SH)["ImageState"] == "NORMAL"
    b_copy, c_copy = copies["o-second"], copies["o-third"]
    assert catalog_task_result(server, b_copy["TaskId"])["BytesCopied"] == 0  # the store knew
    assert catalog_task_result(server, c_copy["TaskId"])["BytesCopied"] > 0
    for field in ("BytesCopied", "ChunksCopied", "BytesPresent", "ChunksPresent"):
        assert field not in b_copy["Result"] and field not in c_copy["Result"]
    assert _shape(b_copy) == _shape(c_copy)
    assert b_copy["Result"]["BytesTotal"] == c_copy["Result"]["BytesTotal"]  # per image: the image's bytes


def test_lineage_is_shown_to_the_owner_only(server: Server, web: tuple[Path, str]) -> None:
    directory, url = web
    owner, grantee = server.account("l-owner"), server.account("l-grantee")
    ops = server.account("l-ops", operator=True)
    disk = hostile.make_test_disk(directory, "qcow2", 2 * MiB, seed=903)
    src, _ = _import(server, owner, "lineage-src", f"{url}/{disk.name}")
    [entry] = server.common(owner).call_json("SyncImages", {"ImageIds": [src["ImageId"]], "DestinationRegions": [SH],
                                                            "ImageSetRequired": True})["Response"]["ImageSet"]
    copy = wait_image(server, owner, entry["ImageId"], region=SH)
    assert (copy["SourceImageId"], copy["SourceRegion"]) == (src["ImageId"], GZ)  # the owner sees its lineage
    assert src["SourceUrl"] == f"{url}/{disk.name}" and copy["DiskSet"][0]["ManifestDigest"]
    for image_id, region in ((src["ImageId"], GZ), (copy["ImageId"], SH)):
        server.common(owner, region).call_json("ModifyImageSharePermission", {
            "ImageId": image_id, "AccountIds": [grantee.account_id], "Permission": "SHARE"})
        seen = describe(server, grantee, image_id, region)
        assert seen is not None and seen["ImageType"] == "SHARED_IMAGE"
        assert all(seen[k] is None for k in LINEAGE), {k: seen[k] for k in LINEAGE}
        assert seen["DiskSet"][0]["ManifestDigest"] is None
        mine = describe(server, owner, image_id, region)
        assert mine["SourceUrl"] or mine["SourceImageId"]
    # A public image: the operator who published it sees its lineage, everyone else doesn't.
    golden, _ = _import(server, ops, "golden-lineage", f"{url}/{disk.name}")
    server.run("image", "publish", golden["ImageId"], env=ops.env())
    viewer = describe(server, grantee, golden["ImageId"])
    assert viewer is not None and viewer["ImageType"] == "PUBLIC_IMAGE"
    assert all(viewer[k] is None for k in LINEAGE)
    assert describe(server, ops, golden["ImageId"])["SourceUrl"] == f"{url}/{disk.name}"


def test_a_copy_skips_only_the_chunks_its_account_could_read(server: Server, web: tuple[Path, str]) -> None:
    """Chunks a destination store holds because of another account's copy are read from the source (verified,
    paced) as if missing; only the account's own (or public) chunks are skipped. Seen through a damaged
    source chunk: the copy that reads it fails, the copy that may skip it doesn't."""
    from stratus.storage.dirstore import DirStore

    directory, url = web
    owner, other = server.account("k-owner"), server.account("k-other")
    disk = hostile.make_test_disk(directory, "raw", 3 * MiB, seed=904)
    mine, _ = _import(server, owner, "known", f"{url}/{disk.name}")
    theirs, _ = _import(server, other, "known", f"{url}/{disk.name}")  # the same chunks, in one store

    def sync(acct: Account, image_id: str, name: str = "known") -> dict[str, Any]:
        resp = server.common(acct).call_json("SyncImages", {"ImageIds": [image_id], "DestinationRegions": [SH],
                                                            "ImageName": name, "ImageSetRequired": True})["Response"]
        [entry] = resp["ImageSet"]
        return wait_image(server, acct, entry["ImageId"], region=SH)

    assert sync(owner, mine["ImageId"])["ImageState"] == "NORMAL"  # every chunk now in the SH store
    # Rot one chunk of the shared data in the source store, behind the service's back.
    store = DirStore(server.data_dir / "regions" / GZ / "store")
    victim = next(p for p in sorted(store.chunks_dir.rglob("*")) if p.is_file() and p.stat().st_size == MiB
                  and _is_chunk_of(p, disk))
    good = victim.read_bytes()
    victim.chmod(0o644)
    victim.write_bytes(b"\0" + good[1:])
    try:
        # The other account could not read SH's copy of these chunks: its copy reads them from the source,
        # finds the damage, and fails, exactly as it would if SH held none of them.
        failed = sync(other, theirs["ImageId"])
        assert failed["ImageState"] == "CREATEFAILED" and "stratus fsck" in (failed["ImageStateReason"] or ""), failed
        # The owner's second copy skips what it could already read in SH: the damage in GZ is never touched.
        assert sync(owner, mine["ImageId"], "known-again")["ImageState"] == "NORMAL"
    finally:
        victim.write_bytes(good)


def _is_chunk_of(chunk: Path, disk: Path) -> bool:
    data = chunk.read_bytes()
    with disk.open("rb") as f:
        while block := f.read(MiB):
            if block == data:
                return True
    return False


def _written(server: Server) -> int:
    """Bytes the server process has written to storage (its threads' writes, fsynced or not)."""
    assert server.proc is not None
    fields = dict(line.split(": ") for line in Path(f"/proc/{server.proc.pid}/io").read_text().splitlines())
    return int(fields["write_bytes"])


def test_an_import_costs_the_same_whether_or_not_the_store_held_its_chunks(
        server: Server, web: tuple[Path, str]) -> None:
    """The duration of an import is part of what its account reads (DescribeTasks CreatedTime/FinishedTime):
    a chunk another account already stored is written (and thrown away) like a new one, so an import of
    data someone else holds does the same I/O as one of data no one holds. Measured as the bytes the server
    writes, which time follows."""
    import os

    directory, url = web
    first, second, third = server.account("w-first"), server.account("w-second"), server.account("w-third")
    shared = directory / "shared-16m.raw"
    shared.write_bytes(os.urandom(16 * MiB))
    own = directory / "own-16m.raw"
    own.write_bytes(os.urandom(16 * MiB))
    _import(server, first, "held", f"{url}/{shared.name}")
    before = _written(server)
    _import(server, second, "held", f"{url}/{shared.name}")  # every chunk already in the store
    held = _written(server) - before
    before = _written(server)
    _import(server, third, "fresh", f"{url}/{own.name}")  # no chunk in the store
    fresh = _written(server) - before
    assert fresh >= 16 * MiB, fresh
    assert held >= 0.9 * fresh, (held, fresh)
