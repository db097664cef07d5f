"""SyncImages end to end: copies between the two default regions through the official SDK, tccli and the
`stratus` CLI; only the chunks the destination lacks cross (measured); a `kill -9` in the middle of a
copy and the resume; every rule-4 error code; an operator publishing to every region."""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path
from typing import Any

import blake3
import pytest
from tencentcloud.common.exception.tencent_cloud_sdk_exception import TencentCloudSDKException
from tencentcloud.cvm.v20170312 import models

from stratus.config import load_settings
from stratus.disk import qemu_img
from tests import hostile
from tests.conftest import Account, Server, make_server, new_db_url, wait_for
from tests.e2e.helpers import catalog_task_result, describe, file_server, import_request, wait_image, wait_task
from tests.e2e.test_authz_matrix import make_accounts  # accounts in-process: one CLI process each costs seconds

MiB = 1024 * 1024
GZ, SH = "ap-guangzhou", "ap-shanghai"


def code_of(fn, *args) -> str:  # type: ignore[no-untyped-def]
    with pytest.raises(TencentCloudSDKException) as info:
        fn(*args)
    return info.value.code


def sync_call(server: Server, account: Account, params: dict[str, Any], region: str = GZ) -> dict[str, Any]:
    return server.common(account, region).call_json("SyncImages", params)["Response"]


def sync_code(server: Server, account: Account, params: dict[str, Any], region: str = GZ) -> str:
    with pytest.raises(TencentCloudSDKException) as info:
        sync_call(server, account, params, region)
    return info.value.code


def start_sync(server: Server, account: Account, image_id: str, regions: list[str], region: str = GZ,
               **extra: Any) -> list[dict[str, Any]]:
    resp = sync_call(server, account, {"ImageIds": [image_id], "DestinationRegions": regions,
                                       "ImageSetRequired": True, **extra}, region)
    assert [c["Region"] for c in resp["ImageSet"]] == regions
    return resp["ImageSet"]


def task_result(server: Server, account: Account, task_id: int) -> dict[str, Any]:
    task = wait_task(server, account, task_id)
    assert task["TaskState"] == "SUCCESS", task
    assert task["TaskType"] == "sync"
    assert "BytesCopied" not in task["Result"]  # a store-level figure: not for the account (test_oracle.py)
    return catalog_task_result(server, task_id)


def chunk_sizes(path: Path, chunk_size: int) -> dict[str, int]:
    """The oracle: the distinct non-zero chunks of a raw disk, digest → length, computed here."""
    out: dict[str, int] = {}
    with path.open("rb") as f:
        while block := f.read(chunk_size):
            if block.count(0) != len(block):
                out[blake3.blake3(block).hexdigest()] = len(block)
    return out


def random_disk(path: Path, size: int, seed: int, holes: tuple[int, ...] = ()) -> Path:
    """`size` bytes of seeded random data, with the chunks at the offsets in `holes` left all zero."""
    rng = random.Random(seed)
    data = bytearray(rng.randbytes(size))
    for offset in holes:
        data[offset:offset + MiB] = bytes(MiB)
    path.write_bytes(bytes(data))
    return path


def region_chunk_size(server: Server, region: str = GZ) -> int:
    settings = load_settings(data_dir=server.data_dir, config_file=server.config, env={})
    reg = settings.region(region)
    assert reg is not None
    return reg.chunk_size


def store_of(server: Server, region: str) -> Path:
    return server.data_dir / "regions" / region / "store"


@pytest.fixture(scope="module")
def images_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("sync-images")


@pytest.fixture(scope="module")
def web(images_dir: Path):  # type: ignore[no-untyped-def]
    with file_server(images_dir, "127.0.0.2") as (url, hits):
        yield url


@pytest.fixture(scope="module")
def people(server: Server) -> dict[str, Account]:
    return make_accounts(server, ("alice", "bob", "ops"), operators=("ops",))


@pytest.fixture(scope="module")
def alice(people: dict[str, Account]) -> Account:
    return people["alice"]


@pytest.fixture(scope="module")
def ops(people: dict[str, Account]) -> Account:
    return people["ops"]


def imported(server: Server, account: Account, name: str, url: str, region: str = GZ, **extra: Any) -> dict:
    image_id = server.client(account, region).ImportImage(import_request(name, url, **extra)).ImageId
    image = wait_image(server, account, image_id, region=region)
    assert image["ImageState"] == "NORMAL", image["ImageStateReason"]
    return image


# --------------------------------------------------------------------------- copies


def test_copy_to_another_region(server: Server, alice: Account, images_dir: Path, web: str,
                                tmp_path: Path) -> None:
    system = hostile.make_test_disk(images_dir, "qcow2", 12 * MiB, seed=101)
    data = hostile.make_test_disk(images_dir, "raw", 6 * MiB, seed=102)
    src = imported(server, alice, "two-disks", f"{web}/{system.name}",
                   ImportImageDataDiskList=[{"ImageUrl": f"{web}/{data.name}"}], ImageDescription="copied")
    [c] = start_sync(server, alice, src["ImageId"], [SH])
    copy_id = c["ImageId"]
    assert copy_id != src["ImageId"]
    first = describe(server, alice, copy_id, SH)
    assert first is not None and first["ImageState"] in ("SYNCING", "NORMAL")
    assert first["SyncPercent"] is not None and 0 <= first["SyncPercent"] <= 100
    copy = wait_image(server, alice, copy_id, region=SH)
    assert copy["ImageState"] == "NORMAL" and copy["SyncPercent"] == 100
    assert (copy["ImageName"], copy["ImageDescription"], copy["ImageType"], copy["ImageCreator"]) == \
        ("two-disks", "copied", "PRIVATE_IMAGE", alice.account_id)
    assert (copy["SourceImageId"], copy["SourceRegion"]) == (src["ImageId"], GZ)
    assert copy["SourceUrl"] is None
    assert [d["ManifestDigest"] for d in copy["DiskSet"]] == [d["ManifestDigest"] for d in src["DiskSet"]]
    assert [d["DiskUsage"] for d in copy["SnapshotSet"]] == ["SYSTEM_DISK", "DATA_DISK"]
    assert not {d["SnapshotId"] for d in copy["SnapshotSet"]} & {d["SnapshotId"] for d in src["SnapshotSet"]}
    assert src["SyncPercent"] is None  # not a copy
    # The source is not visible from the other region, nor the copy from this one.
    assert describe(server, alice, src["ImageId"], SH) is None and describe(server, alice, copy_id, GZ) is None
    # Every chunk crossed: the Shanghai store had none of them (the oracle hashes the raw disks here).
    chunk = region_chunk_size(server)
    raw_sys = hostile.make_test_disk(tmp_path, "raw", 12 * MiB, seed=101)
    raw_data = hostile.make_test_disk(tmp_path, "raw", 6 * MiB, seed=102)
    expected = chunk_sizes(raw_sys, chunk) | chunk_sizes(raw_data, chunk)
    result = task_result(server, alice, c["TaskId"])
    assert result["BytesCopied"] == sum(expected.values()) == result["BytesTotal"]
    assert result["ChunksCopied"] == len(expected) and result["BytesPresent"] == 0
    assert (result["SourceImageId"], result["SourceRegion"], result["ResumedAtBytes"]) == (src["ImageId"], GZ, [])
    # The bytes are the right ones.
    out = tmp_path / "copy.raw"
    server.run("image", "export", copy_id, "--region", SH, "-o", str(out), env=alice.env())
    assert qemu_img.compare(raw_sys, "raw", out, "raw")


def test_only_the_chunks_the_destination_lacks_cross(server: Server, alice: Account, images_dir: Path,
                                                     web: str) -> None:
    """An image derived from another whose base is already in the destination: only the changed chunks
    cross. The oracle is computed here from the two raw files, at the server's chunk size."""
    chunk = region_chunk_size(server)
    size = 16 * chunk
    base = random_disk(images_dir / "base.raw", size, seed=201, holes=(5 * chunk,))
    derived_path = images_dir / "derived.raw"
    shutil.copy(base, derived_path)
    rng = random.Random(202)
    with derived_path.open("r+b") as f:
        for offset, length in ((2 * chunk, chunk), (9 * chunk, chunk), (12 * chunk + 4096, 100_000)):
            f.seek(offset)
            f.write(rng.randbytes(length))
    base_chunks, derived_chunks = chunk_sizes(base, chunk), chunk_sizes(derived_path, chunk)
    new_chunks = {d: n for d, n in derived_chunks.items() if d not in base_chunks}
    assert len(new_chunks) == 3  # the test is not vacuous: three chunks changed, the rest didn't

    b = imported(server, alice, "base", f"{web}/base.raw")
    [bc] = start_sync(server, alice, b["ImageId"], [SH])
    first = task_result(server, alice, bc["TaskId"])
    assert first["BytesCopied"] == sum(base_chunks.values())

    d = imported(server, alice, "derived", f"{web}/derived.raw")
    [dc] = start_sync(server, alice, d["ImageId"], [SH])
    result = task_result(server, alice, dc["TaskId"])
    assert result["BytesCopied"] == sum(new_chunks.values()) == 2 * chunk + chunk
    assert result["ChunksCopied"] == 3
    assert result["ChunksPresent"] == len(derived_chunks) - 3
    assert result["BytesTotal"] == sum(derived_chunks.values())
    assert wait_image(server, alice, dc["ImageId"], region=SH)["ImageState"] == "NORMAL"
    # The Shanghai store holds each chunk once.
    for digest in derived_chunks:
        assert (store_of(server, SH) / "chunks" / digest[:2] / digest[2:4] / digest).is_file()


def test_sync_rules_and_codes(server: Server, alice: Account, ops: Account, images_dir: Path, web: str) -> None:
    disk = hostile.make_test_disk(images_dir, "raw", 2 * MiB, seed=301)
    src = imported(server, alice, "rules", f"{web}/{disk.name}")
    image_id = src["ImageId"]

    def params(**extra: Any) -> dict[str, Any]:
        return {"ImageIds": [image_id], "DestinationRegions": [SH], **extra}

    assert sync_code(server, alice, params(ImageIds=["img-BAD"])) == "InvalidImageId.Malformed"
    assert sync_code(server, alice, params(ImageIds=["img-zzzzzzzz"])) == "InvalidImageId.NotFound"
    assert sync_code(server, alice, params(ImageIds=[image_id, image_id])) == "InvalidParameterValue.LimitExceeded"
    assert sync_code(server, alice, params(ImageIds=[])) == "MissingParameter"
    assert sync_code(server, alice, params(DestinationRegions=[])) == "MissingParameter"
    assert sync_code(server, alice, params(DestinationRegions=["xx-nowhere"])) == "InvalidRegion.NotFound"
    assert sync_code(server, alice, params(DestinationRegions=[GZ])) == "InvalidParameterValue.InvalidRegion"
    assert sync_code(server, alice, params(DestinationRegions=[SH, GZ])) == "InvalidParameterValue.InvalidRegion"
    assert sync_code(server, alice, params(Encrypt=True)) == "UnsupportedOperation.SyncEncryptImageNotSupport"
    assert sync_code(server, alice, params(KmsKeyId="2bb53791-c2e9-4c42-8772-ecf135a1d92x")) == \
        "InvalidParameter.InvalidKmsKeyId"
    assert sync_code(server, alice, params(ImageName="n" * 61)) == "InvalidParameterValue.TooLarge"
    # Another account's image is invisible: the same answer as for an id never issued.
    bob = server.accounts["bob"]
    assert sync_code(server, bob, params()) == "InvalidImageId.NotFound"
    # A failed image is never NORMAL.
    failed_id = server.client(alice).ImportImage(import_request("failed", f"{web}/no-such.raw")).ImageId
    assert wait_image(server, alice, failed_id)["ImageState"] == "IMPORTFAILED"
    assert sync_code(server, alice, params(ImageIds=[failed_id])) == "InvalidImageId.IncorrectState"
    # A public image belongs to its operator: others launch from it, they don't copy it.
    pub = imported(server, ops, "official", f"{web}/{disk.name}")
    server.common(ops).call_json("PublishImage", {"ImageId": pub["ImageId"]})
    assert sync_code(server, alice, params(ImageIds=[pub["ImageId"]])) == "InvalidParameterValue.InvalidImageId"

    # DryRun checks everything and creates nothing; the answer is only a RequestId.
    before = server.client(alice, SH).DescribeImages(models.DescribeImagesRequest()).TotalCount
    dry = sync_call(server, alice, params(DryRun=True, ImageSetRequired=True))
    assert set(dry) == {"RequestId"}
    assert server.client(alice, SH).DescribeImages(models.DescribeImagesRequest()).TotalCount == before
    # Without ImageSetRequired the answer carries no ImageSet (the contract's example).
    plain = sync_call(server, alice, params())
    assert "ImageSet" not in plain
    copy = wait_for(lambda: _copy_named(server, alice, "rules"), what="the copy to appear")
    assert wait_image(server, alice, copy["ImageId"], region=SH)["ImageState"] == "NORMAL"
    # The name is taken in Shanghai now; ImageName picks another.
    assert sync_code(server, alice, params()) == "InvalidImageName.Duplicate"
    req = models.SyncImagesRequest()  # the typed SDK model, as a client program would use it
    req._deserialize({"ImageIds": [image_id], "DestinationRegions": [SH], "ImageName": "rules-again",
                      "ImageSetRequired": True})
    resp = server.client(alice).SyncImages(req)
    assert [(i.Region, i.ImageId.startswith("img-")) for i in resp.ImageSet] == [(SH, True)]
    renamed = {"ImageId": resp.ImageSet[0].ImageId}
    assert wait_image(server, alice, renamed["ImageId"], region=SH)["ImageName"] == "rules-again"
    # A copy can be copied back: its lineage names its own source.
    [back] = start_sync(server, alice, renamed["ImageId"], [GZ], region=SH, ImageName="rules-back")
    back_image = wait_image(server, alice, back["ImageId"])
    assert (back_image["ImageState"], back_image["SourceImageId"], back_image["SourceRegion"]) == \
        ("NORMAL", renamed["ImageId"], SH)
    assert task_result(server, alice, back["TaskId"])["BytesCopied"] == 0  # Guangzhou had every chunk


def _copy_named(server: Server, account: Account, name: str) -> dict[str, Any] | None:
    req = models.DescribeImagesRequest()
    req._deserialize({"Filters": [{"Name": "image-name", "Values": [name]}]})
    for image in server.client(account, SH).DescribeImages(req).ImageSet:
        if image.ImageName == name:
            return {"ImageId": image.ImageId}
    return None


def test_tccli_and_cli_copy(server: Server, alice: Account, images_dir: Path, web: str, tmp_path: Path) -> None:
    disk = hostile.make_test_disk(images_dir, "vmdk", 3 * MiB, seed=401)
    src = imported(server, alice, "by-tools", f"{web}/{disk.name}")
    res = server.tccli(alice, "SyncImages", "--ImageIds", json.dumps([src["ImageId"]]), "--DestinationRegions",
                       json.dumps([SH]), "--ImageName", "by-tccli", "--ImageSetRequired", "true", home=tmp_path)
    assert res.returncode == 0, res.stderr
    [entry] = json.loads(res.stdout)["ImageSet"]
    assert entry["Region"] == SH
    assert wait_image(server, alice, entry["ImageId"], region=SH)["ImageName"] == "by-tccli"
    res = server.run("image", "copy", src["ImageId"], "--to", SH, "--name", "by-cli", env=alice.env())
    # No "bytes crossed" column: how much crossed is a store-level figure, not shown to an account.
    region, copy_id, state = res.stdout.strip().splitlines()[-1].split("\t")
    assert (region, state) == (SH, "NORMAL") and copy_id.startswith("img-")
    assert "copy " in res.stderr and "%" in res.stderr  # the progress bar
    assert describe(server, alice, copy_id, SH)["ImageName"] == "by-cli"
    res = server.run("image", "copy", src["ImageId"], "--to", "xx-nowhere", env=alice.env(), check=False)
    assert res.returncode == 1 and "InvalidRegion.NotFound" in res.stderr


def test_operator_publishes_to_every_region(server: Server, ops: Account, alice: Account, images_dir: Path,
                                            web: str) -> None:
    disk = hostile.make_test_disk(images_dir, "qcow2", 2 * MiB, seed=501)
    image_id = imported(server, ops, "golden", f"{web}/{disk.name}")["ImageId"]
    # An account that may not publish is refused before anything is copied.
    own = imported(server, alice, "not-golden", f"{web}/{disk.name}")["ImageId"]
    res = server.run("image", "publish", own, "--all-regions", env=alice.env(), check=False)
    assert res.returncode == 1 and "UnauthorizedOperation.PermissionDenied" in res.stderr
    assert _copy_named(server, alice, "not-golden") is None
    res = server.run("image", "publish", image_id, "--all-regions", "--json", env=ops.env())
    published = {p["Region"]: p["ImageId"] for p in json.loads(res.stdout)}
    assert set(published) == {GZ, SH} and published[GZ] == image_id
    for region, pid in published.items():
        image = describe(server, alice, pid, region)
        assert image is not None and image["ImageType"] == "PUBLIC_IMAGE" and image["ImageSource"] == "OFFICIAL"
        assert image["ImageName"] == "golden"
    assert describe(server, ops, published[SH], SH)["SourceImageId"] == image_id
    assert describe(server, alice, published[SH], SH)["SourceImageId"] is None  # lineage is the owner's


# --------------------------------------------------------------------------- a private server: limits, crash


@pytest.fixture(scope="module")
def paced_web(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    files = tmp_path_factory.mktemp("paced-images")
    with file_server(files, "127.0.0.2") as (url, _):
        yield files, url


@pytest.fixture(scope="module")
def paced(tmp_path_factory: pytest.TempPathFactory, db_url: str):  # type: ignore[no-untyped-def]
    """Copies paced at 8 MiB/s (so a crash lands mid-copy), images up to 64 MiB, 3 images per region,
    and a region that takes no copies."""
    assert db_url  # marks the tests for both databases
    tmp = tmp_path_factory.mktemp("paced")
    srv = make_server(tmp, new_db_url(tmp), env_extra={"STRATUS_IMPORT_URL_ALLOW": "127.0.0.2/32"}, config_extra=(
        f"sync_bytes_per_second = {8 * MiB}\n"
        f"sync_max_image_bytes = {64 * MiB}\n"
        "[quotas]\nimages_per_region = 3\n"
        '[[regions]]\nname = "ap-guangzhou"\nzones = ["ap-guangzhou-1"]\n'
        '[[regions]]\nname = "ap-shanghai"\nzones = ["ap-shanghai-1"]\n'
        '[[regions]]\nname = "ap-beijing"\nzones = ["ap-beijing-1"]\n'
        '[[regions]]\nname = "ap-closed"\nzones = ["ap-closed-1"]\nsync_target = false\n'
    ))
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


def url_import(srv: Server, account: Account, web: tuple[Path, str], path: Path, name: str) -> str:
    assert path.parent == web[0]
    return imported(srv, account, name, f"{web[1]}/{path.name}")["ImageId"]


def test_kill9_during_a_copy_resumes(paced: Server, paced_web: tuple[Path, str], tmp_path: Path) -> None:
    srv = paced
    acct = make_accounts(srv, ("crash",))["crash"]
    chunk = region_chunk_size(srv)
    disk = random_disk(paced_web[0] / "big.raw", 32 * MiB, seed=601)
    chunks = chunk_sizes(disk, chunk)
    total = sum(chunks.values())
    image_id = url_import(srv, acct, paced_web, disk, "big")
    [c] = start_sync(srv, acct, image_id, [SH])
    copy_id = c["ImageId"]
    samples: list[int] = []

    def percent() -> int:
        image = describe(srv, acct, copy_id, SH)
        assert image is not None
        if image["ImageState"] == "SYNCING":
            samples.append(image["SyncPercent"])
        return image["SyncPercent"] if image["ImageState"] == "SYNCING" else 100

    wait_for(lambda: percent() >= 5, timeout=30, interval=0.1, what="the copy to start")
    # While it runs: the rules of work in flight.
    assert sync_code(srv, acct, {"ImageIds": [image_id], "DestinationRegions": [SH], "ImageName": "twice"}) == \
        "InvalidParameterValue.InvalidImageState"
    assert sync_code(srv, acct, {"ImageIds": [copy_id], "DestinationRegions": [GZ]}, region=SH) == \
        "FailedOperation.InvalidImageState"
    delete = models.DeleteImagesRequest()
    delete.ImageIds = [copy_id]
    assert code_of(srv.client(acct, SH).DeleteImages, delete) == "InvalidImageId.IncorrectState"
    delete.ImageIds = [image_id]  # the source can't go either while a copy reads its chunks
    assert code_of(srv.client(acct, GZ).DeleteImages, delete) == "MutexOperation.TaskRunning"
    # SyncPercent is truthful: never ahead of the chunks that are in the Shanghai store.
    pct = percent()
    present = sum(n for d, n in chunks.items() if (store_of(srv, SH) / "chunks" / d[:2] / d[2:4] / d).exists())
    assert pct <= 100 * present / total
    wait_for(lambda: percent() >= 25, timeout=30, interval=0.1, what="a quarter of the copy")
    before_kill = samples[-1]
    assert before_kill < 90, "the pace should keep the copy in flight; the crash must land mid-copy"
    srv.kill9()
    srv.start()
    wait_for(lambda: percent() == 100, timeout=120, interval=0.1, what="the copy to settle after the restart")
    image = describe(srv, acct, copy_id, SH)
    samples.append(image["SyncPercent"])
    assert image["ImageState"] == "NORMAL", image["ImageStateReason"]
    assert samples == sorted(samples), f"SyncPercent went back: {samples}"
    assert any(0 < s < 100 for s in samples)
    result = task_result(srv, acct, c["TaskId"])
    assert result["BytesTotal"] == total
    assert result["BytesCopied"] + result["BytesPresent"] == total
    assert result["ResumedAtBytes"] and result["ResumedAtBytes"][0] > 0, "the copy resumed from its checkpoint"
    assert result["BytesCopied"] >= result["ResumedAtBytes"][0]
    out = tmp_path / "back.raw"
    srv.run("image", "export", copy_id, "--region", SH, "-o", str(out), env=acct.env())
    assert out.read_bytes() == disk.read_bytes()
    fsck = srv.run("fsck", "--data-dir", str(srv.data_dir), "--config", str(srv.config), check=False)
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr


def test_size_region_and_quota_limits(paced: Server, paced_web: tuple[Path, str]) -> None:
    srv = paced
    acct = make_accounts(srv, ("limits",))["limits"]
    small = url_import(srv, acct, paced_web, random_disk(paced_web[0] / "small.raw", 2 * MiB, seed=701), "small")
    sparse = paced_web[0] / "sparse.raw"
    with sparse.open("wb") as f:
        f.truncate(96 * MiB)
        f.write(b"x" * 4096)
    big = url_import(srv, acct, paced_web, sparse, "sparse")
    assert sync_code(srv, acct, {"ImageIds": [big], "DestinationRegions": [SH]}) == "InvalidImageId.TooLarge"
    assert sync_code(srv, acct, {"ImageIds": [small], "DestinationRegions": ["ap-closed"]}) == \
        "InvalidRegion.Unavailable"
    # Fill the Shanghai quota (3) with failed imports: the rows count, as they do for DeleteImages' quota.
    for n in range(3):
        srv.client(acct, SH).ImportImage(import_request(f"filler-{n}", "http://127.0.0.2:1/none.raw"))
    assert sync_code(srv, acct, {"ImageIds": [small], "DestinationRegions": ["ap-beijing", SH]}) == \
        "ImageQuotaLimitExceeded"
    assert srv.client(acct, "ap-beijing").DescribeImages(models.DescribeImagesRequest()).TotalCount == 0, \
        "all or nothing: no copy in Beijing either"
    [ok] = start_sync(srv, acct, small, ["ap-beijing"])
    assert wait_image(srv, acct, ok["ImageId"], region="ap-beijing")["ImageState"] == "NORMAL"


def test_a_damaged_source_chunk_fails_the_copy_with_a_reason(paced: Server, paced_web: tuple[Path, str]) -> None:
    srv = paced
    acct = make_accounts(srv, ("damage",))["damage"]
    chunk = region_chunk_size(srv)
    disk = random_disk(paced_web[0] / "victim.raw", 2 * chunk, seed=801)
    image_id = url_import(srv, acct, paced_web, disk, "victim")
    digest = next(iter(chunk_sizes(disk, chunk)))
    path = store_of(srv, GZ) / "chunks" / digest[:2] / digest[2:4] / digest
    original = path.read_bytes()
    path.chmod(0o644)
    path.write_bytes(b"\x00rot" + original[4:])
    try:
        [c] = start_sync(srv, acct, image_id, ["ap-beijing"])
        image = wait_image(srv, acct, c["ImageId"], region="ap-beijing")
        assert image["ImageState"] == "CREATEFAILED"
        reason = image["ImageStateReason"]
        assert reason.startswith(f"sync of {image_id} from {GZ} failed:") and digest in reason and "fsck" in reason
        task = wait_task(srv, acct, c["TaskId"])
        assert task["TaskState"] == "FAILED" and digest in task["ErrorMessage"]
        assert not (store_of(srv, "ap-beijing") / "chunks" / digest[:2] / digest[2:4] / digest).exists()
        # A failed copy can be deleted, which frees its quota slot.
        delete = models.DeleteImagesRequest()
        delete.ImageIds = [c["ImageId"]]
        srv.client(acct, "ap-beijing").DeleteImages(delete)
    finally:
        path.write_bytes(original)
        os.chmod(path, 0o444)
    [again] = start_sync(srv, acct, image_id, ["ap-beijing"])
    assert wait_image(srv, acct, again["ImageId"], region="ap-beijing")["ImageState"] == "NORMAL"
