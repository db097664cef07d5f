"""Instances with the disk driver, end to end: the official SDK, tccli and the stratus CLI against a real
server; qemu-io plays the guest writing to its disk."""

from __future__ import annotations

import base64
import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
from tencentcloud.common.exception.tencent_cloud_sdk_exception import TencentCloudSDKException
from tencentcloud.cvm.v20170312 import models

from stratus.disk import qemu_img
from tests import hostile
from tests.conftest import Account, Server
from tests.e2e.helpers import describe, wait_image

MiB = 1024 * 1024
GiB = 1024 * MiB
ZONE = "ap-guangzhou-1"


def code_of(fn, *args) -> str:  # type: ignore[no-untyped-def]
    with pytest.raises(TencentCloudSDKException) as info:
        fn(*args)
    return info.value.code


def req(cls: type, **params: Any) -> Any:
    r = cls()
    r._deserialize(params)
    return r


@pytest.fixture(scope="module")
def owner(server: Server) -> Account:
    return server.account("ivan")


@pytest.fixture(scope="module")
def stranger(server: Server) -> Account:
    return server.account("judy")


@pytest.fixture(scope="module")
def image_id(server: Server, owner: Account, tmp_path_factory: pytest.TempPathFactory) -> str:
    src = hostile.make_test_disk(tmp_path_factory.mktemp("inst-img"), "qcow2", 24 * MiB, seed=301)
    out = server.run("image", "import", str(src), "--name", "inst-base", env=owner.env())
    return out.stdout.split()[-1]


def host(server: Server) -> Path:
    return server.data_dir / "regions" / "ap-guangzhou" / "host"


def instances(server: Server, account: Account, ids: list[str]) -> list[dict[str, Any]]:
    resp = server.common(account).call_json("DescribeInstances", {"InstanceIds": ids, "Limit": 100})["Response"]
    return resp["InstanceSet"]


def wait_settled(server: Server, account: Account, ids: list[str], timeout: float = 120) -> list[dict[str, Any]]:
    from tests.conftest import wait_for

    def settled() -> list[dict[str, Any]] | None:
        found = instances(server, account, ids)
        ok = all(i["LatestOperationState"] != "OPERATING" and i["InstanceState"] in
                 ("RUNNING", "STOPPED", "LAUNCH_FAILED") for i in found)
        return found if ok else None

    return wait_for(settled, timeout=timeout, what=f"{len(ids)} instances to settle")


def run(server: Server, account: Account, image: str, count: int = 1, **extra: Any) -> list[str]:
    params = {"ImageId": image, "InstanceCount": count, "Placement": {"Zone": ZONE}, **extra}
    return server.client(account).RunInstances(req(models.RunInstancesRequest, **params)).InstanceIdSet


def test_run_describe_and_state_machine(server: Server, owner: Account, image_id: str) -> None:
    ids = run(server, owner, image_id, 3, InstanceName="web-{R:1,F:2}", InstanceType="S5.MEDIUM2",
              TagSpecification=[{"ResourceType": "instance", "Tags": [{"Key": "tier", "Value": "web"}]}])
    found = wait_settled(server, owner, ids)
    assert sorted(i["InstanceName"] for i in found) == ["web-01", "web-02", "web-03"]
    assert {i["InstanceState"] for i in found} == {"RUNNING"}
    one = found[0]
    assert one["ImageId"] == image_id and one["Placement"]["Zone"] == ZONE and one["CPU"] == 2
    assert one["SystemDisk"]["DiskSize"] == 50 and one["LatestOperation"] == "RunInstances"
    assert one["OsName"] == "CentOS 7 64bit" or one["OsName"]
    # Each instance has its own overlay on one shared base.
    bases = list((host(server) / "bases").glob("*.raw"))
    assert len(bases) == 1
    for iid in ids:
        disk = next((host(server) / "instances" / iid).glob("disk-*.qcow2"))
        info = qemu_img.info(disk, "qcow2")
        assert info["virtual-size"] == 50 * GiB
        assert Path(info["full-backing-filename"]) == bases[0]
    c = server.client(owner)
    filt = c.DescribeInstances(req(models.DescribeInstancesRequest,
                                   Filters=[{"Name": "instance-name", "Values": ["web-0"]},
                                            {"Name": "tag:tier", "Values": ["web"]}], Limit=2))
    assert filt.TotalCount == 3 and len(filt.InstanceSet) == 2
    status = c.DescribeInstancesStatus(req(models.DescribeInstancesStatusRequest, InstanceIds=ids))
    assert {s.InstanceState for s in status.InstanceStatusSet} == {"RUNNING"}
    # Wrong states get their codes.
    assert code_of(c.StartInstances, req(models.StartInstancesRequest, InstanceIds=ids[:1])) == \
        "UnsupportedOperation.InstanceStateRunning"
    c.StopInstances(req(models.StopInstancesRequest, InstanceIds=ids[:2], StopType="HARD"))
    assert {i["InstanceState"] for i in wait_settled(server, owner, ids[:2])} == {"STOPPED"}
    assert code_of(c.StopInstances, req(models.StopInstancesRequest, InstanceIds=ids[:1])) == \
        "UnsupportedOperation.InstanceStateStopped"
    assert code_of(c.RebootInstances, req(models.RebootInstancesRequest, InstanceIds=ids)) == \
        "UnsupportedOperation.InstanceStateStopped"
    c.StartInstances(req(models.StartInstancesRequest, InstanceIds=ids[:2]))
    c.RebootInstances(req(models.RebootInstancesRequest, InstanceIds=ids[2:]))
    assert {i["InstanceState"] for i in wait_settled(server, owner, ids)} == {"RUNNING"}
    c.TerminateInstances(req(models.TerminateInstancesRequest, InstanceIds=ids))
    from tests.conftest import wait_for

    wait_for(lambda: not instances(server, owner, ids), what="termination")
    for iid in ids:
        assert not (host(server) / "instances" / iid).exists()
    assert code_of(c.StopInstances, req(models.StopInstancesRequest, InstanceIds=ids[:1])) == \
        "InvalidInstanceId.NotFound"


def test_bad_input_creates_nothing(server: Server, owner: Account, stranger: Account, image_id: str,
                                   tmp_path: Path) -> None:
    c = server.client(owner)
    before = set((host(server) / "instances").glob("*")) if (host(server) / "instances").exists() else set()
    total = c.DescribeInstances(models.DescribeInstancesRequest()).TotalCount
    failed_src = tmp_path / "junk.qcow2"
    failed_src.write_bytes(b"QFI\xfb" + bytes(100))
    # --whole-file: the server takes the broken qcow2 and fails its import (the chunked path refuses it here).
    failed = server.run("image", "import", str(failed_src), "--name", "failed-img", "--whole-file", env=owner.env(),
                        check=False).stderr.split("import of ")[1].split()[0]
    private = server.run("image", "import", str(hostile.make_test_disk(tmp_path, "raw", MiB, seed=5)), "--name",
                         "judy-private", env=stranger.env()).stdout.split()[-1]
    deleted = server.run("image", "import", str(hostile.make_test_disk(tmp_path, "raw", MiB, seed=6)), "--name",
                         "to-delete", env=owner.env()).stdout.split()[-1]
    server.run("image", "delete", deleted, env=owner.env())
    cases = {
        "InvalidImageId.NotFound": {"ImageId": "img-zzzzzzzz"},
        "InvalidImageId.Malformed": {"ImageId": "img-1"},
        "InvalidParameterValue.InvalidImageState": {"ImageId": failed},
        "InvalidParameterValue.Range": {"InstanceCount": 501},
        "InvalidZone.MismatchRegion": {"Placement": {"Zone": "ap-shanghai-1"}},
        "InvalidParameterValue.ZoneNotSupported": {"Placement": {"Zone": "mars-1"}},
        "InvalidParameterValue.InstanceTypeNotFound": {"InstanceType": "S9.HUGE"},
        "InvalidInstanceType.Malformed": {"InstanceType": "huge"},
        "InvalidParameterValue.InvalidImageForGivenInstanceType": {"InstanceType": "SR1.MEDIUM4"},
        "InvalidParameterValue.InvalidUserDataFormat": {"UserData": "not base64!"},
        "InvalidClientToken.TooLong": {"ClientToken": "x" * 65},
        "InvalidParameterValue.TooLarge": {"InstanceName": "n" * 129},
        "MissingParameter": {"Placement": {}},
    }
    for code, extra in cases.items():
        params = {"ImageId": image_id, "Placement": {"Zone": ZONE}, **extra}
        assert code_of(c.RunInstances, req(models.RunInstancesRequest, **params)) == code, code
    assert code_of(c.RunInstances, req(models.RunInstancesRequest, ImageId=image_id, Placement={"Zone": ZONE},
                                       InstanceCount=0)) == "InvalidParameterValue.Range"
    assert code_of(c.RunInstances, req(models.RunInstancesRequest, ImageId=image_id, Placement={"Zone": ZONE},
                                       SystemDisk={"DiskSize": 0})) == "InvalidParameterValue.Range"
    for foreign in (private, deleted):
        assert code_of(c.RunInstances, req(models.RunInstancesRequest, ImageId=foreign,
                                           Placement={"Zone": ZONE})) == "InvalidImageId.NotFound"
    dry = c.RunInstances(req(models.RunInstancesRequest, ImageId=image_id, Placement={"Zone": ZONE}, DryRun=True,
                             InstanceCount=5))
    assert dry.InstanceIdSet is None
    assert c.DescribeInstances(models.DescribeInstancesRequest()).TotalCount == total
    after = set((host(server) / "instances").glob("*")) if (host(server) / "instances").exists() else set()
    assert after == before


def test_client_token_is_idempotent(server: Server, owner: Account, image_id: str) -> None:
    first = run(server, owner, image_id, 2, ClientToken="tok-1")
    again = run(server, owner, image_id, 2, ClientToken="tok-1")
    assert first == again
    assert code_of(server.client(owner).RunInstances,
                   req(models.RunInstancesRequest, ImageId=image_id, InstanceCount=3, ClientToken="tok-1",
                       Placement={"Zone": ZONE})) == "InvalidParameterValue.Duplicate"
    wait_settled(server, owner, first)
    server.client(owner).TerminateInstances(req(models.TerminateInstancesRequest, InstanceIds=first))


def test_hundred_instances_in_one_call(server: Server, owner: Account, image_id: str) -> None:
    ids = run(server, owner, image_id, 100, InstanceName="batch-{R:0}")
    found = wait_settled(server, owner, ids, timeout=180)
    assert len(found) == 100 and {i["InstanceState"] for i in found} == {"RUNNING"}
    assert len({i["SystemDisk"]["DiskId"] for i in found}) == 100
    per_instance = [sum(f.stat().st_blocks * 512 for f in (host(server) / "instances" / iid).iterdir())
                    for iid in ids]
    assert max(per_instance) <= 1 * MiB, max(per_instance)
    server.client(owner).TerminateInstances(req(models.TerminateInstancesRequest, InstanceIds=ids))


def qemu_io_write(disk: Path, offset: int, length: int, pattern: int) -> None:
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", f"write -P {pattern} {offset} {length}", str(disk)], check=True,
                   capture_output=True)


def test_capture_reset_and_image_lifetimes(server: Server, owner: Account, image_id: str, tmp_path: Path) -> None:
    c = server.client(owner)
    [iid] = run(server, owner, image_id, 1, DataDisks=[{"DiskSize": 1}], SystemDisk={"DiskSize": 1})
    [inst] = wait_settled(server, owner, [iid])
    system_id, data_id = inst["SystemDisk"]["DiskId"], inst["DataDisks"][0]["DiskId"]
    workdir = host(server) / "instances" / iid
    # The "guest" changes 8 MiB of its system disk and writes to its data disk.
    qemu_io_write(workdir / f"{system_id}.qcow2", 4 * MiB, 8 * MiB, 0xAB)
    qemu_io_write(workdir / f"{data_id}.qcow2", 0, 1 * MiB, 0xCD)
    store = server.data_dir / "regions" / "ap-guangzhou" / "store"
    before = sum(p.stat().st_size for p in store.rglob("*") if p.is_file())
    new_id = c.CreateImage(req(models.CreateImageRequest, InstanceId=iid, ImageName="captured",
                               DataDiskIds=[data_id])).ImageId
    image = wait_image(server, owner, new_id)
    assert image["ImageState"] == "NORMAL", image["ImageStateReason"]
    assert image["ImageSource"] == "CREATE_IMAGE" and image["SourceInstanceId"] == iid
    assert image["SourceImageId"] == image_id
    assert [s["DiskUsage"] for s in image["SnapshotSet"]] == ["SYSTEM_DISK", "DATA_DISK"]
    grown = sum(p.stat().st_size for p in store.rglob("*") if p.is_file()) - before
    assert grown <= 9 * MiB + 4 * MiB, grown  # the changed chunks only, not the 1 GiB disk
    # The captured system disk is the base plus the guest's write.
    expected = tmp_path / "expected.qcow2"
    subprocess.run(["qemu-img", "convert", "-f", "qcow2", "-O", "qcow2", str(workdir / f"{system_id}.qcow2"),
                    str(expected)], check=True)
    out = tmp_path / "captured.raw"
    server.run("image", "export", new_id, "-o", str(out), env=owner.env())
    assert qemu_img.compare(expected, "qcow2", out, "raw")
    # A new instance from the full-instance image gets both disks, with the guest's data.
    [clone] = run(server, owner, new_id, 1)
    [cl] = wait_settled(server, owner, [clone])
    assert len(cl["DataDisks"]) == 1
    # Errors of CreateImage.
    assert code_of(c.CreateImage, req(models.CreateImageRequest, InstanceId=iid, ImageName="x",
                                      DataDiskIds=[system_id])) == "InvalidParameter.DataDiskIdContainsRootDisk"
    assert code_of(c.CreateImage, req(models.CreateImageRequest, InstanceId=iid, ImageName="x",
                                      DataDiskIds=["disk-zzzzzzzz"])) == \
        "InvalidParameter.DataDiskNotBelongSpecifiedInstance"
    assert code_of(c.CreateImage, req(models.CreateImageRequest, ImageName="x")) == \
        "InvalidParameter.SpecifyOneParameter"
    assert code_of(c.CreateImage, req(models.CreateImageRequest, InstanceId=iid, ImageName="captured")) == \
        "InvalidImageName.Duplicate"
    assert code_of(c.CreateImage, req(models.CreateImageRequest, InstanceId="ins-zzzzzzzz", ImageName="y")) == \
        "InvalidInstanceId.NotFound"
    # Reset to the original image: the system disk is replaced, the data disk is kept.
    c.ResetInstance(req(models.ResetInstanceRequest, InstanceId=iid, ImageId=image_id))
    [after] = wait_settled(server, owner, [iid])
    assert after["LatestOperation"] == "ResetInstance" and after["LatestOperationState"] == "SUCCESS"
    original = tmp_path / "orig.raw"
    server.run("image", "export", image_id, "-o", str(original), env=owner.env())
    # Plain qemu-img here: the overlay is read through its backing base (the gated compare forbids backing).
    same = subprocess.run(["qemu-img", "compare", "-f", "raw", "-F", "qcow2", str(original),
                           str(workdir / f"{system_id}.qcow2")], capture_output=True, text=True)
    assert same.returncode == 0, same.stdout + same.stderr
    data = subprocess.run(["qemu-io", "-f", "qcow2", "-c", "read -P 0xcd 0 1M", str(workdir / f"{data_id}.qcow2")],
                          capture_output=True, text=True)
    assert "Pattern verification failed" not in data.stdout and data.returncode == 0
    # Deleting an image never breaks an instance made from it; its base goes when nothing needs it.
    server.run("image", "delete", new_id, env=owner.env())
    c.StopInstances(req(models.StopInstancesRequest, InstanceIds=[clone]))
    assert wait_settled(server, owner, [clone])[0]["InstanceState"] == "STOPPED"
    c.StartInstances(req(models.StartInstancesRequest, InstanceIds=[clone]))
    assert wait_settled(server, owner, [clone])[0]["InstanceState"] == "RUNNING"
    bases_before = set((host(server) / "bases").glob("*.raw"))
    c.TerminateInstances(req(models.TerminateInstancesRequest, InstanceIds=[clone, iid]))
    from tests.conftest import wait_for

    wait_for(lambda: not instances(server, owner, [clone, iid]), what="termination")
    bases_after = set((host(server) / "bases").glob("*.raw"))
    assert len(bases_after) < len(bases_before)  # the deleted image's bases are gone
    assert describe(server, owner, image_id)  # the original image and its base stay


def test_failed_launch_leaves_no_disk(server: Server, owner: Account, tmp_path: Path) -> None:
    src = hostile.make_test_disk(tmp_path, "raw", 4 * MiB, seed=333)
    broken = server.run("image", "import", str(src), "--name", "broken-store", env=owner.env()).stdout.split()[-1]
    digest = describe(server, owner, broken)["DiskSet"][0]["ManifestDigest"]
    from stratus.config import load_settings
    from stratus.service.manifests import load_manifest
    from stratus.service.runtime import prepare

    svc = prepare(load_settings(server.data_dir, server.config, env={**os.environ, **server.env}))
    victim = sorted(load_manifest(svc, "ap-guangzhou", digest).data_digests())[0]
    chunk = svc.store("ap-guangzhou").path_for(victim)
    saved = chunk.read_bytes()
    os.chmod(chunk, 0o644)
    chunk.unlink()
    try:
        ids = run(server, owner, broken, 3)
        found = wait_settled(server, owner, ids)
        assert {i["InstanceState"] for i in found} == {"LAUNCH_FAILED"}
        assert victim[:12] in found[0]["LatestOperationErrorMsg"]
        for iid in ids:
            assert not (host(server) / "instances" / iid).exists()
        server.client(owner).TerminateInstances(req(models.TerminateInstancesRequest, InstanceIds=ids))
    finally:
        svc.store("ap-guangzhou").put(victim, saved)


def test_cli_and_tccli(server: Server, owner: Account, image_id: str, tmp_path: Path) -> None:
    out = server.run("instance", "run", "--image", image_id, "--count", "2", "--name", "cli-{R:1}",
                     env=owner.env())
    ids = out.stdout.split()
    assert len(ids) == 2 and "launching" in out.stderr
    listed = json.loads(server.run("instance", "list", "--json", env=owner.env()).stdout)
    assert set(ids) <= {i["InstanceId"] for i in listed}
    server.run("instance", "stop", ids[0], env=owner.env())
    server.run("instance", "start", ids[0], env=owner.env())
    server.run("instance", "reboot", ids[0], env=owner.env())
    captured = server.run("image", "create", "--instance", ids[0], "--name", "cli-capture", env=owner.env())
    new_image = captured.stdout.split()[-1]
    server.run("instance", "reset", ids[1], "--image", new_image, env=owner.env())
    shown = json.loads(server.run("instance", "show", ids[1], env=owner.env()).stdout)
    assert shown["ImageId"] == new_image
    no_console = server.run("instance", "console", ids[0], env=owner.env(), check=False)  # disk driver: it says so
    assert no_console.returncode == 3 and "has no console" in no_console.stderr
    res = server.tccli(owner, "DescribeInstances", "--InstanceIds", json.dumps(ids), home=tmp_path)
    assert res.returncode == 0 and json.loads(res.stdout)["TotalCount"] == 2
    res = server.tccli(owner, "RunInstances", "--ImageId", image_id, "--Placement", json.dumps({"Zone": ZONE}),
                       "--UserData", base64.b64encode(b"#!/bin/sh\necho hi\n").decode(), home=tmp_path)
    assert res.returncode == 0, res.stderr
    more = json.loads(res.stdout)["InstanceIdSet"]
    wait_settled(server, owner, more)
    server.run("instance", "terminate", *ids, *more, env=owner.env())
    assert not instances(server, owner, ids + more)


def test_instances_are_private(server: Server, owner: Account, stranger: Account, image_id: str) -> None:
    [iid] = run(server, owner, image_id, 1)
    wait_settled(server, owner, [iid])
    s = server.client(stranger)
    assert s.DescribeInstances(req(models.DescribeInstancesRequest, InstanceIds=[iid])).TotalCount == 0
    for action, cls in [("StopInstances", models.StopInstancesRequest),
                        ("TerminateInstances", models.TerminateInstancesRequest)]:
        assert code_of(getattr(s, action), req(cls, InstanceIds=[iid])) == "InvalidInstanceId.NotFound"
    assert code_of(s.ResetInstance, req(models.ResetInstanceRequest, InstanceId=iid)) == "InvalidInstanceId.NotFound"
    assert code_of(s.CreateImage, req(models.CreateImageRequest, InstanceId=iid, ImageName="steal")) == \
        "InvalidInstanceId.NotFound"
    server.client(owner).TerminateInstances(req(models.TerminateInstancesRequest, InstanceIds=[iid]))



def test_the_instance_flow_through_tccli(server: Server, owner: Account, image_id: str, tmp_path: Path) -> None:
    """Launch, stop, start, reboot, capture, reset and terminate with tccli alone (exit 255 on errors)."""

    def tccli(action: str, **params: Any) -> dict[str, Any]:
        args = [a for k, v in params.items() for a in (f"--{k}", v if isinstance(v, str) else json.dumps(v))]
        res = server.tccli(owner, action, *args, home=tmp_path)
        assert res.returncode == 0, f"{action}: {res.stderr}"
        return json.loads(res.stdout)

    [iid] = tccli("RunInstances", ImageId=image_id, Placement={"Zone": ZONE}, InstanceName="via-tccli")["InstanceIdSet"]
    assert wait_settled(server, owner, [iid])[0]["InstanceState"] == "RUNNING"
    tccli("StopInstances", InstanceIds=[iid], StopType="HARD")
    assert wait_settled(server, owner, [iid])[0]["InstanceState"] == "STOPPED"
    tccli("StartInstances", InstanceIds=[iid])
    assert wait_settled(server, owner, [iid])[0]["InstanceState"] == "RUNNING"
    tccli("RebootInstances", InstanceIds=[iid])
    assert wait_settled(server, owner, [iid])[0]["InstanceState"] == "RUNNING"
    captured = tccli("CreateImage", InstanceId=iid, ImageName="tccli-capture")["ImageId"]
    assert wait_image(server, owner, captured)["ImageState"] == "NORMAL"
    tccli("ResetInstance", InstanceId=iid, ImageId=captured)
    [after] = wait_settled(server, owner, [iid])
    assert after["ImageId"] == captured and after["LatestOperationState"] == "SUCCESS"
    status = tccli("DescribeInstancesStatus", InstanceIds=[iid])
    assert status["InstanceStatusSet"][0]["InstanceState"] == "RUNNING"
    tccli("TerminateInstances", InstanceIds=[iid])
    res = server.tccli(owner, "StartInstances", "--InstanceIds", json.dumps([iid]), home=tmp_path)
    said = res.stderr + res.stdout
    assert res.returncode == 255
    assert "InvalidInstanceId.NotFound" in said or "UnsupportedOperation.InstanceStateTerminating" in said
