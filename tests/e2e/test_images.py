"""Image actions end to end: a real server, the official SDK, tccli and the stratus CLI."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from tencentcloud.common.exception.tencent_cloud_sdk_exception import TencentCloudSDKException
from tencentcloud.cvm.v20170312 import models

from stratus.disk import qemu_img
from tests import hostile
from tests.conftest import Account, Server
from tests.e2e.helpers import describe, file_server, import_request, wait_image, wait_task

MiB = 1024 * 1024


def code_of(fn, *args) -> str:  # type: ignore[no-untyped-def]
    with pytest.raises(TencentCloudSDKException) as info:
        fn(*args)
    return info.value.code


@pytest.fixture(scope="module")
def images_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("images")


@pytest.fixture(scope="module")
def web(images_dir: Path):  # type: ignore[no-untyped-def]
    with file_server(images_dir, "127.0.0.2") as (url, hits):
        yield url, hits


@pytest.fixture(scope="module")
def alice(server: Server) -> Account:
    return server.account("alice")


@pytest.fixture(scope="module")
def bob(server: Server) -> Account:
    return server.account("bob")


@pytest.fixture(scope="module")
def operator(server: Server) -> Account:
    return server.account("ops", operator=True)


def import_url(server: Server, account: Account, name: str, url: str, **extra: Any) -> str:
    return server.client(account).ImportImage(import_request(name, url, **extra)).ImageId


# --------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("fmt", ["raw", "qcow2", "qcow2-compressed", "vmdk", "vmdk-stream", "vhd"])
def test_import_export_round_trip(server: Server, alice: Account, images_dir: Path, web, fmt: str,
                                  tmp_path: Path) -> None:
    url, _ = web
    src = hostile.make_test_disk(images_dir, fmt, 9 * MiB + 65536 * 3, seed=len(fmt))
    reference = hostile.make_test_disk(tmp_path, "raw", 9 * MiB + 65536 * 3, seed=len(fmt))
    image_id = import_url(server, alice, f"rt-{fmt}", f"{url}/{src.name}")
    image = wait_image(server, alice, image_id)
    assert image["ImageState"] == "NORMAL", image["ImageStateReason"]
    assert image["ImageType"] == "PRIVATE_IMAGE" and image["ImageSource"] == "EXTERNAL_IMPORT"
    assert image["ImageCreator"] == alice.account_id
    assert image["ImageProgress"] == 100
    assert image["DiskSet"][0]["VirtualSize"] == reference.stat().st_size
    assert image["SnapshotSet"][0]["DiskUsage"] == "SYSTEM_DISK" and image["SnapshotSet"][0]["DiskSize"] == 1
    for out_fmt, driver in [("RAW", "raw"), ("QCOW2", "qcow2"), ("VMDK", "vmdk"), ("VHD", "vpc")]:
        resp = server.client(alice).ExportImages(_export_request(image_id, out_fmt))
        task = wait_task(server, alice, resp.TaskId)
        assert task["TaskState"] == "SUCCESS", task
        exported = tmp_path / f"out.{out_fmt.lower()}"
        server.run("image", "export", image_id, "--format", out_fmt.lower(), "-o", str(exported), "--whole-file",
                   env=alice.env())
        assert qemu_img.compare(reference, "raw", exported, driver), f"{fmt} → {out_fmt} differs"
        if out_fmt == "RAW":  # downloaded sparse: the holes of the disk stay holes
            assert exported.stat().st_blocks * 512 < exported.stat().st_size


def _export_request(image_id: str, fmt: str = "RAW", **extra: Any) -> models.ExportImagesRequest:
    req = models.ExportImagesRequest()
    req._deserialize({"BucketName": "stratus-exports", "ImageIds": [image_id], "ExportFormat": fmt, **extra})
    return req


def test_reimport_writes_no_new_chunks(server: Server, alice: Account, images_dir: Path, web) -> None:
    url, _ = web
    src = hostile.make_test_disk(images_dir, "qcow2", 6 * MiB, seed=77)
    store = server.data_dir / "regions" / "ap-guangzhou" / "store"
    first = wait_image(server, alice, import_url(server, alice, "dedup-1", f"{url}/{src.name}"))
    assert first["ImageState"] == "NORMAL"
    before = sorted(p.name for p in store.rglob("*") if p.is_file())
    second = wait_image(server, alice, import_url(server, alice, "dedup-2", f"{url}/{src.name}"))
    assert second["ImageState"] == "NORMAL"
    assert sorted(p.name for p in store.rglob("*") if p.is_file()) == before
    assert first["DiskSet"][0]["ManifestDigest"] == second["DiskSet"][0]["ManifestDigest"]


def test_cli_import_with_progress_and_list_show_delete(server: Server, alice: Account, tmp_path: Path) -> None:
    src = hostile.make_test_disk(tmp_path, "vmdk", 5 * MiB, seed=5)
    res = server.run("image", "import", str(src), "--name", "cli-import", "--os-type", "Ubuntu",
                     "--os-version", "22", "--format", "vmdk", env=alice.env())
    image_id = res.stdout.strip().splitlines()[-1]
    assert image_id.startswith("img-")
    assert "hash" in res.stderr and "send" in res.stderr  # the progress bars went to stderr
    shown = json.loads(server.run("image", "show", image_id, env=alice.env()).stdout)
    assert shown["ImageState"] == "NORMAL" and shown["OsName"] == "Ubuntu 22 64bit" and shown["Platform"] == "Ubuntu"
    listed = json.loads(server.run("image", "list", "--json", env=alice.env()).stdout)
    assert image_id in [i["ImageId"] for i in listed]
    server.run("image", "delete", image_id, env=alice.env())
    assert describe(server, alice, image_id) is None


def test_cli_upload_resumes(server: Server, alice: Account, tmp_path: Path) -> None:
    """An upload cut off midway continues from the server's offset, not from zero."""
    import httpx

    from stratus.cli.common import Endpoint
    from stratus.cli.wholefile import upload_file

    src = hostile.make_test_disk(tmp_path, "qcow2", 8 * MiB, seed=9)
    os.environ.update(alice.env())
    ep = Endpoint(server.url, "ap-guangzhou")
    size = src.stat().st_size
    body = json.dumps({"Size": size, "Format": "QCOW2"}).encode()
    r = httpx.post(server.url + "/uploads", content=body, headers=ep.signed_headers("POST", "/uploads", body=body))
    upload_id = r.json()["Response"]["UploadId"]
    half = src.read_bytes()[: size // 2]
    h = ep.signed_headers("PUT", f"/uploads/{upload_id}", query="offset=0", body=None,
                          content_type="application/octet-stream")
    r = httpx.put(f"{server.url}/uploads/{upload_id}?offset=0", content=half, headers=h)
    assert r.json()["Response"]["Received"] == len(half)
    # A wrong offset is refused with the offset to resume from.
    h = ep.signed_headers("PUT", f"/uploads/{upload_id}", query="offset=0", body=None,
                          content_type="application/octet-stream")
    r = httpx.put(f"{server.url}/uploads/{upload_id}?offset=0", content=b"x", headers=h)
    assert r.status_code == 409 and str(len(half)) in r.json()["Response"]["Error"]["Message"]
    # The CLI's state file knows this upload: pretend the CLI started it.
    from stratus.cli.resume import Unfinished
    from stratus.cli.wholefile import UNFINISHED

    UNFINISHED.remember(Unfinished.key(ep, src), upload_id)
    assert upload_file(ep, src) == upload_id
    image_id = server.client(alice).ImportImage(import_request("resumed", f"upload://{upload_id}")).ImageId
    image = wait_image(server, alice, image_id)
    assert image["ImageState"] == "NORMAL", image["ImageStateReason"]


# --------------------------------------------------------------------------- hostile input


HOSTILE = {
    "backing_file": lambda d: hostile.qcow2_with_backing(d, "/etc/passwd"),
    "data_file": lambda d: hostile.qcow2_with_data_file(d, "/etc/passwd"),
    "vmdk_extent": lambda d: hostile.vmdk_flat_pointing_at(d, "/etc/passwd"),
    "qed": hostile.qed,
    "luks": hostile.luks,
    "multi_format": hostile.multi_format,
    "unknown_features": hostile.qcow2_unknown_feature,
    "too_big": lambda d: hostile.qcow2_huge(d, 2 * 1024**3),
    "truncated": hostile.qcow2_truncated_header,
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_images_are_refused(server: Server, alice: Account, images_dir: Path, web, case: str) -> None:
    url, _ = web
    d = images_dir / f"hostile-{case}"
    d.mkdir(exist_ok=True)
    path = HOSTILE[case](d)
    rel = path.relative_to(images_dir)
    image_id = import_url(server, alice, f"hostile-{case}", f"{url}/{rel}")
    image = wait_image(server, alice, image_id)
    assert image["ImageState"] == "IMPORTFAILED", image
    assert image["ImageStateReason"], "a failed import must say why"
    # Nothing of the host file reached the store.
    secret = Path("/etc/passwd").read_bytes()
    for chunk in (server.data_dir / "regions").rglob("chunks/*/*/*"):
        assert secret[:64] not in chunk.read_bytes()
    # The server still answers.
    assert server.client(alice).DescribeImageQuota(models.DescribeImageQuotaRequest()).ImageNumQuota == 500


def test_declared_format_must_match(server: Server, alice: Account, tmp_path: Path) -> None:
    src = hostile.make_test_disk(tmp_path, "qcow2", 2 * MiB, seed=3)
    res = server.run("image", "import", str(src), "--name", "liar", "--format", "vmdk", env=alice.env(), check=False)
    assert res.returncode == 3
    assert "format_mismatch" in res.stderr or "declared" in res.stderr.lower()


def test_url_import_refuses_addresses_outside_the_allowlist(server: Server, alice: Account, tmp_path: Path,
                                                            images_dir: Path, web) -> None:
    (tmp_path / "x.raw").write_bytes(b"\1" * 4096)
    allowed_url, _ = web
    with file_server(tmp_path, "127.0.0.1") as (url, hits):
        direct = wait_image(server, alice, import_url(server, alice, "ssrf-direct", f"{url}/x.raw"))
        target = url.split("://", 1)[1] + "/x.raw"
        redirected = wait_image(server, alice, import_url(server, alice, "ssrf-redirect",
                                                          f"{allowed_url}/redirect/{target}"))
        assert hits == [], "nothing may be fetched from a refused address"
    for image in (direct, redirected):
        assert image["ImageState"] == "IMPORTFAILED"
        assert "127.0.0.1" in image["ImageStateReason"]
    for bad in ["file:///etc/passwd", "ftp://127.0.0.2/x", "gopher://127.0.0.2/", "not a url"]:
        assert code_of(server.client(alice).ImportImage, import_request("bad-url", bad)) == \
            "InvalidParameter.InvalidParameterUrlError"


# --------------------------------------------------------------------------- rules and errors


def test_import_validation_codes(server: Server, alice: Account, web) -> None:
    url, _ = web
    c = server.client(alice)
    ok = f"{url}/nothing.raw"
    assert code_of(c.ImportImage, import_request("x" * 61, ok)) == "InvalidParameterValue.TooLarge"
    long_description = import_request("d", ok, ImageDescription="y" * 257)
    assert code_of(c.ImportImage, long_description) == "InvalidParameterValue.TooLarge"
    assert code_of(c.ImportImage, import_request("os", ok, OsType="Plan9")) == "InvalidImageOsType.Unsupported"
    assert code_of(c.ImportImage, import_request("ver", ok, OsVersion="99")) == "InvalidImageOsVersion.Unsupported"
    assert code_of(c.ImportImage, import_request("boot", ok, BootMode="EFI")) == "InvalidParameterValue.InvalidBootMode"
    assert code_of(c.ImportImage, import_request("lic", ok, LicenseType="GPL")) == \
        "InvalidParameterValue.InvalidLicenseType"
    assert code_of(c.ImportImage, import_request("fam", ok, ImageFamily="!bad")) == \
        "InvalidParameterValue.InvalidImageFamily"
    assert code_of(c.ImportImage, import_request("iso", f"{url}/cd.iso")) == \
        "InvalidParameterValue.ISOMustImportByForce"
    assert code_of(c.ImportImage, import_request("up", "upload://up-00000000")) == \
        "InvalidParameter.InvalidParameterUrlError"
    # DryRun checks everything and creates nothing.
    before = c.DescribeImages(models.DescribeImagesRequest()).TotalCount
    resp = c.ImportImage(import_request("dry", ok, DryRun=True))
    assert resp.ImageId is None and resp.RequestId
    assert c.DescribeImages(models.DescribeImagesRequest()).TotalCount == before


def test_names_are_unique_per_owner_and_region(server: Server, alice: Account, bob: Account, web) -> None:
    url, _ = web
    first = import_url(server, alice, "same-name", f"{url}/missing.raw")
    assert code_of(server.client(alice).ImportImage, import_request("same-name", f"{url}/x.raw")) == \
        "InvalidImageName.Duplicate"
    # Another account, or another region, may use the name.
    import_url(server, bob, "same-name", f"{url}/missing.raw")
    server.client(alice, region="ap-shanghai").ImportImage(import_request("same-name", f"{url}/missing.raw"))
    failed = wait_image(server, alice, first)
    assert failed["ImageState"] == "IMPORTFAILED" and "404" in failed["ImageStateReason"]


def test_visibility_between_accounts(server: Server, alice: Account, bob: Account, images_dir: Path, web) -> None:
    url, _ = web
    src = hostile.make_test_disk(images_dir, "raw", 2 * MiB, seed=11)
    image_id = import_url(server, alice, "private-one", f"{url}/{src.name}")
    assert wait_image(server, alice, image_id)["ImageState"] == "NORMAL"
    b = server.client(bob)
    req = models.DescribeImagesRequest()
    req.ImageIds = [image_id]
    assert b.DescribeImages(req).TotalCount == 0
    modify = models.ModifyImageAttributeRequest()
    modify._deserialize({"ImageId": image_id, "ImageName": "stolen"})
    assert code_of(b.ModifyImageAttribute, modify) == "InvalidImageId.NotFound"
    delete = models.DeleteImagesRequest()
    delete.ImageIds = [image_id]
    assert code_of(b.DeleteImages, delete) == "InvalidImageId.NotFound"
    assert code_of(b.ExportImages, _export_request(image_id)) == "InvalidImageId.NotFound"
    # The same answer as for an image that never existed.
    delete.ImageIds = ["img-zzzzzzzz"]
    assert code_of(b.DeleteImages, delete) == "InvalidImageId.NotFound"
    filt = models.DescribeImagesRequest()
    filt._deserialize({"Filters": [{"Name": "image-id", "Values": [image_id]}]})
    assert b.DescribeImages(filt).TotalCount == 0
    # bob can't download alice's export either.
    task = server.client(alice).ExportImages(_export_request(image_id))
    assert wait_task(server, alice, task.TaskId)["TaskState"] == "SUCCESS"
    res = server.run("image", "export", image_id, "-o", "/dev/null", env=bob.env(), check=False)
    assert res.returncode == 1 and "InvalidImageId.NotFound" in res.stderr


def test_public_images(server: Server, alice: Account, bob: Account, operator: Account, images_dir: Path,
                       web) -> None:
    url, _ = web
    src = hostile.make_test_disk(images_dir, "qcow2", 2 * MiB, seed=12)
    image_id = import_url(server, operator, "official-centos", f"{url}/{src.name}", ImageFamily="centos")
    assert wait_image(server, operator, image_id)["ImageState"] == "NORMAL"
    res = server.run("image", "publish", image_id, env=alice.env(), check=False)
    assert res.returncode == 1 and "UnauthorizedOperation.PermissionDenied" in res.stderr
    server.run("image", "publish", image_id, env=operator.env())
    for who in (alice, bob, operator):
        image = describe(server, who, image_id)
        assert image and image["ImageType"] == "PUBLIC_IMAGE" and image["ImageSource"] == "OFFICIAL"
    own = server.run("image", "import", str(src), "--name", "alice-pub", env=alice.env()).stdout.split()[-1]
    res = server.run("image", "publish", own, env=alice.env(), check=False)
    assert res.returncode == 1 and "UnauthorizedOperation.PermissionDenied" in res.stderr
    modify = models.ModifyImageAttributeRequest()
    modify._deserialize({"ImageId": image_id, "ImageDescription": "mine now"})
    assert code_of(server.client(alice).ModifyImageAttribute, modify) == "InvalidParameterValue.InvalidImageId"
    delete = models.DeleteImagesRequest()
    delete.ImageIds = [image_id]
    assert code_of(server.client(bob).DeleteImages, delete) == "InvalidParameterValue.InvalidImageId"
    assert code_of(server.client(bob).ExportImages, _export_request(image_id)) == \
        "UnsupportedOperation.PublicImageExportUnsupported"
    server.client(operator).ModifyImageAttribute(modify)
    assert describe(server, bob, image_id)["ImageDescription"] == "mine now"
    # Families resolve to the newest usable image the caller can see.
    fam = models.DescribeImageFromFamilyRequest()
    fam.ImageFamily = "centos"
    assert server.client(bob).DescribeImageFromFamily(fam).Image.ImageId == image_id
    fam.ImageFamily = "no-such-family"
    assert server.client(bob).DescribeImageFromFamily(fam).Image is None
    by_type = models.DescribeImagesRequest()
    by_type._deserialize({"Filters": [{"Name": "image-type", "Values": ["PUBLIC_IMAGE"]}]})
    assert [i.ImageId for i in server.client(bob).DescribeImages(by_type).ImageSet] == [image_id]


def test_describe_images_filters_and_paging(server: Server, tmp_path: Path, web) -> None:
    carol = server.account("carol")
    url, _ = web
    c = server.client(carol)
    ids = []
    for i in range(7):
        extra: dict[str, Any] = {"TagSpecification": [{"ResourceType": "image",
                                                       "Tags": [{"Key": "team", "Value": f"t{i % 2}"}]}]}
        ids.append(import_url(server, carol, f"page-{i}-{'web' if i < 3 else 'db'}", f"{url}/none.raw", **extra))

    def query(**params: Any) -> models.DescribeImagesResponse:
        req = models.DescribeImagesRequest()
        req._deserialize(params)
        return c.DescribeImages(req)

    page = query(Filters=[{"Name": "image-type", "Values": ["PRIVATE_IMAGE"]}], Limit=3, Offset=0)
    assert page.TotalCount == 7 and len(page.ImageSet) == 3
    rest = query(Filters=[{"Name": "image-type", "Values": ["PRIVATE_IMAGE"]}], Limit=5, Offset=3)
    assert len(rest.ImageSet) == 4
    assert {i.ImageId for i in page.ImageSet + rest.ImageSet} == set(ids)
    assert query(Filters=[{"Name": "image-name", "Values": ["WEB"]}]).TotalCount == 3  # fuzzy, any case
    assert query(Filters=[{"Name": "tag:team", "Values": ["t1"]}]).TotalCount == 3
    assert query(Filters=[{"Name": "tag-key", "Values": ["team"]}]).TotalCount == 7
    assert query(Filters=[{"Name": "tag-value", "Values": ["t0"]}]).TotalCount == 4
    mine = {"Name": "image-type", "Values": ["PRIVATE_IMAGE"]}
    assert query(Filters=[{"Name": "platform", "Values": ["cent"]}, mine]).TotalCount == 7
    assert query(Filters=[{"Name": "image-type", "Values": ["SHARED_IMAGE"]}]).TotalCount == 0
    assert query(ImageIds=ids[:2]).TotalCount == 2
    assert query(InstanceType="S5.MEDIUM2").TotalCount >= 7
    assert code_of(c.DescribeImages, _req(ImageIds=ids[:1], Filters=[{"Name": "image-id", "Values": ids[:1]}])) == \
        "InvalidParameter.InvalidParameterCoexistImageIdsFilters"
    assert code_of(c.DescribeImages, _req(Filters=[{"Name": "colour", "Values": ["x"]}])) == "InvalidFilter"
    assert code_of(c.DescribeImages, _req(Filters=[{"Name": "image-name", "Values": list("abcdef")}])) == \
        "InvalidFilterValue.LimitExceeded"
    assert code_of(c.DescribeImages, _req(Filters=[{"Name": "image-name", "Values": ["a"]}] * 11)) == \
        "InvalidParameterValue.LimitExceeded"
    assert code_of(c.DescribeImages, _req(ImageIds=["img-BAD"])) == "InvalidImageId.Malformed"
    assert code_of(c.DescribeImages, _req(Limit=101)) == "InvalidParameterValue.InvalidParameterValueLimit"
    assert code_of(c.DescribeImages, _req(InstanceType="tiny")) == "InvalidInstanceType.Malformed"
    assert code_of(c.DescribeImages, _req(InstanceType="S9.HUGE")) == "InvalidParameterValue.InstanceTypeNotFound"
    # tccli sees the same.
    res = server.tccli(carol, "DescribeImages", "--Filters", '[{"Name":"image-name","Values":["db"]}]',
                       home=tmp_path)
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["TotalCount"] == 4


def _req(**params: Any) -> models.DescribeImagesRequest:
    req = models.DescribeImagesRequest()
    req._deserialize(params)
    return req


def test_modify_and_delete_rules(server: Server, images_dir: Path, web) -> None:
    dave = server.account("dave")
    url, _ = web
    c = server.client(dave)
    src = hostile.make_test_disk(images_dir, "raw", 1 * MiB, seed=21)
    a = import_url(server, dave, "mod-a", f"{url}/{src.name}")
    b = import_url(server, dave, "mod-b", f"{url}/{src.name}")
    wait_image(server, dave, a)
    wait_image(server, dave, b)
    modify = models.ModifyImageAttributeRequest()
    modify._deserialize({"ImageId": a, "ImageName": "mod-b"})
    assert code_of(c.ModifyImageAttribute, modify) == "InvalidImageName.Duplicate"
    modify._deserialize({"ImageId": a, "ImageName": "renamed", "ImageDescription": "d", "ImageFamily": "fam",
                         "ImageDeprecated": True})
    c.ModifyImageAttribute(modify)
    image = describe(server, dave, a)
    assert (image["ImageName"], image["ImageDescription"], image["ImageFamily"], image["ImageDeprecated"]) == \
        ("renamed", "d", "fam", True)
    fam = models.DescribeImageFromFamilyRequest()
    fam.ImageFamily = "fam"
    assert c.DescribeImageFromFamily(fam).Image is None  # deprecated images are skipped
    modify._deserialize({"ImageId": "img-nope"})
    assert code_of(c.ModifyImageAttribute, modify) == "InvalidImageId.Malformed"
    delete = models.DeleteImagesRequest()
    delete._deserialize({"ImageIds": [a, "img-zzzzzzzz"]})
    assert code_of(c.DeleteImages, delete) == "InvalidImageId.NotFound"
    assert describe(server, dave, a) is not None  # all or nothing
    delete._deserialize({"ImageIds": [a, b], "DryRun": True})
    c.DeleteImages(delete)
    assert describe(server, dave, a) is not None
    delete._deserialize({"ImageIds": [a, b], "DryRun": False})
    c.DeleteImages(delete)
    assert describe(server, dave, a) is None and describe(server, dave, b) is None


def test_export_rules(server: Server, alice: Account, tmp_path: Path) -> None:
    c = server.client(alice)
    src = hostile.make_test_disk(tmp_path, "raw", 1 * MiB, seed=31)
    image_id = server.run("image", "import", str(src), "--name", "exp-rules", env=alice.env()).stdout.split()[-1]
    req = _export_request(image_id)
    req.BucketName = "no-such-bucket"
    assert code_of(c.ExportImages, req) == "InvalidParameterValue.BucketNotFound"
    req = _export_request(image_id, FileNamePrefixList=["a", "b"])
    assert code_of(c.ExportImages, req) == "InvalidParameterValue.InvalidFileNamePrefixList"
    req = models.ExportImagesRequest()
    req.BucketName = "stratus-exports"
    assert code_of(c.ExportImages, req) == "InvalidParameter.ImageIdsSnapshotIdsMustOne"
    resp = c.ExportImages(_export_request(image_id, "QCOW2", FileNamePrefixList=["nightly"]))
    snap = describe(server, alice, image_id)["SnapshotSet"][0]["SnapshotId"]
    assert resp.CosPaths == [f"/nightly_{image_id}_system_{snap}.qcow2"]
    assert wait_task(server, alice, resp.TaskId)["Progress"] == 100
    dry = c.ExportImages(_export_request(image_id, DryRun=True))
    assert dry.TaskId is None


def test_quota_is_enforced_by_reservation(tmp_path_factory: pytest.TempPathFactory, db_url: str) -> None:
    """Concurrent imports can't overshoot the quota: 12 requests race for 5 slots."""
    from concurrent.futures import ThreadPoolExecutor

    from tests.conftest import make_server, new_db_url

    tmp = tmp_path_factory.mktemp("quota")
    # A separate server and catalog with a quota of 5 (db_url marks the test for both databases).
    assert db_url
    srv = make_server(tmp, new_db_url(tmp), config_extra="[quotas]\nimages_per_region = 5\n")
    srv.start()
    try:
        erin = srv.account("erin-quota")
        c = srv.client(erin)
        quota = c.DescribeImageQuota(models.DescribeImageQuotaRequest())
        assert quota.ImageNumQuota == 5

        def attempt(i: int) -> str:
            try:
                c2 = srv.client(erin)
                return c2.ImportImage(import_request(f"q-{i}", "http://127.0.0.2:1/none.raw")).ImageId
            except TencentCloudSDKException as exc:
                return exc.code

        with ThreadPoolExecutor(12) as pool:
            results = list(pool.map(attempt, range(12)))
        assert sum(r.startswith("img-") for r in results) == 5, results
        assert results.count("ImageQuotaLimitExceeded") == 7
        raw = srv.common(erin).call_json("DescribeImageQuota", {})["Response"]
        assert raw["ImageNumUsed"] == 5
    finally:
        srv.stop()


def test_describe_import_image_os(server: Server, alice: Account, tmp_path: Path) -> None:
    resp = server.client(alice).DescribeImportImageOs(models.DescribeImportImageOsRequest())
    assert "CentOS" in resp.ImportImageOsListSupported.Linux
    assert "Windows Server 2016" in resp.ImportImageOsListSupported.Windows
    centos = next(v for v in resp.ImportImageOsVersionSet if v.OsName == "CentOS")
    assert "7" in centos.OsVersions and "x86_64" in centos.Architecture
    res = server.tccli(alice, "DescribeImportImageOs", home=tmp_path)
    assert res.returncode == 0 and "Ubuntu" in res.stdout


def test_tccli_import_and_delete(server: Server, alice: Account, images_dir: Path, web, tmp_path: Path) -> None:
    url, _ = web
    src = hostile.make_test_disk(images_dir, "vhd", 3 * MiB, seed=41)
    res = server.tccli(alice, "ImportImage", "--ImageName", "via-tccli", "--ImageUrl", f"{url}/{src.name}",
                       "--OsType", "Debian", "--OsVersion", "12", "--Architecture", "x86_64", home=tmp_path)
    assert res.returncode == 0, res.stderr
    image_id = json.loads(res.stdout)["ImageId"]
    assert wait_image(server, alice, image_id)["ImageState"] == "NORMAL"
    res = server.tccli(alice, "DeleteImages", "--ImageIds", json.dumps([image_id]), home=tmp_path)
    assert res.returncode == 0, res.stderr
    assert describe(server, alice, image_id) is None


def test_qemu_img_available() -> None:
    assert shutil.which("qemu-img"), "make test installs qemu-utils"
    assert subprocess.run(["qemu-img", "--version"], capture_output=True).returncode == 0
