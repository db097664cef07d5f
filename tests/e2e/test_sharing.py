"""Image sharing end to end, both sides: the owner shares and cancels (SDK, tccli, CLI); the receiver sees
a SHARED_IMAGE it can launch from and copy into its own image but not modify, delete, export or re-share;
every rule-5 code; 500 accounts per image; after CANCEL the receiver sees nothing and its instances run on."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from tencentcloud.common.exception.tencent_cloud_sdk_exception import TencentCloudSDKException
from tencentcloud.cvm.v20170312 import models

from stratus.api.cvm.registry import ACTIONS
from tests import hostile
from tests.conftest import Account, Server, wait_for
from tests.e2e.helpers import catalog_task_result, describe, file_server, import_request, wait_image, wait_task
from tests.e2e.test_authz_matrix import make_accounts  # accounts in-process: one CLI process each costs seconds

MiB = 1024 * 1024
GZ, SH = "ap-guangzhou", "ap-shanghai"


def error_of(server: Server, account: Account, action: str, params: dict[str, Any],
             region: str = GZ) -> tuple[str, str]:
    with pytest.raises(TencentCloudSDKException) as info:
        server.common(account, region).call_json(action, params)
    return info.value.code, info.value.message


def code_of(server: Server, account: Account, action: str, params: dict[str, Any], region: str = GZ) -> str:
    return error_of(server, account, action, params, region)[0]


def call(server: Server, account: Account, action: str, params: dict[str, Any], region: str = GZ) -> dict:
    return server.common(account, region).call_json(action, params)["Response"]


def share(server: Server, owner: Account, image_id: str, *accounts: Account, permission: str = "SHARE") -> None:
    req = models.ModifyImageSharePermissionRequest()
    req._deserialize({"ImageId": image_id, "AccountIds": [a.account_id for a in accounts], "Permission": permission})
    server.client(owner).ModifyImageSharePermission(req)


def shared_with(server: Server, owner: Account, image_id: str) -> list[str]:
    req = models.DescribeImageSharePermissionRequest()
    req.ImageId = image_id
    return [p.AccountId for p in server.client(owner).DescribeImageSharePermission(req).SharePermissionSet]


@pytest.fixture(scope="module")
def images_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("share-images")


@pytest.fixture(scope="module")
def web(images_dir: Path):  # type: ignore[no-untyped-def]
    with file_server(images_dir, "127.0.0.2") as (url, _):
        yield url


@pytest.fixture(scope="module")
def people(server: Server) -> dict[str, Account]:
    return make_accounts(server, ("alice", "bob", "carol", "ops"), operators=("ops",))


@pytest.fixture(scope="module")
def alice(people: dict[str, Account]) -> Account:
    return people["alice"]


@pytest.fixture(scope="module")
def bob(people: dict[str, Account]) -> Account:
    return people["bob"]


@pytest.fixture(scope="module")
def carol(people: dict[str, Account]) -> Account:
    return people["carol"]


@pytest.fixture(scope="module")
def ops(people: dict[str, Account]) -> Account:
    return people["ops"]


def new_image(server: Server, owner: Account, name: str, web: str, images_dir: Path, seed: int,
              **extra: Any) -> str:
    disk = hostile.make_test_disk(images_dir, "raw", 2 * MiB, seed=seed)
    image_id = server.client(owner).ImportImage(import_request(name, f"{web}/{disk.name}", **extra)).ImageId
    assert wait_image(server, owner, image_id)["ImageState"] == "NORMAL"
    return image_id


# The operations a receiver may not do, each with the code it gets while the image is shared with it.
def receiver_attempts(image_id: str, other: Account) -> dict[str, tuple[str, dict[str, Any]]]:
    return {
        "modify": ("ModifyImageAttribute", {"ImageId": image_id, "ImageName": "mine now"}),
        "delete": ("DeleteImages", {"ImageIds": [image_id]}),
        "export": ("ExportImages", {"BucketName": "stratus-exports", "ImageIds": [image_id]}),
        "reshare": ("ModifyImageSharePermission", {"ImageId": image_id, "AccountIds": [other.account_id],
                                                   "Permission": "SHARE"}),
        "shares": ("DescribeImageSharePermission", {"ImageId": image_id}),
        "copy-elsewhere": ("SyncImages", {"ImageIds": [image_id], "DestinationRegions": [SH]}),
    }


WHILE_SHARED = {
    "modify": "UnsupportedOperation.SharedImageModifyUnsupported",
    "delete": "InvalidParameterValue.InvalidImageIdIsShared",
    "export": "UnsupportedOperation.SharedImageExportUnsupported",
    "reshare": "UnauthorizedOperation.ImageNotBelongToAccount",
    "shares": "UnauthorizedOperation.ImageNotBelongToAccount",
    "copy-elsewhere": "UnsupportedOperation.Region",
}


def test_share_and_cancel_both_sides(server: Server, alice: Account, bob: Account, carol: Account, web: str,
                                     images_dir: Path) -> None:
    image_id = new_image(server, alice, "to-share", web, images_dir, seed=1)
    assert shared_with(server, alice, image_id) == []
    share(server, alice, image_id, bob)
    req = models.DescribeImageSharePermissionRequest()
    req.ImageId = image_id
    [perm] = server.client(alice).DescribeImageSharePermission(req).SharePermissionSet
    assert perm.AccountId == bob.account_id and re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", perm.CreatedTime)

    # The receiver sees it as SHARED_IMAGE, in its region only; a third account doesn't see it.
    seen = describe(server, bob, image_id)
    assert seen is not None and seen["ImageType"] == "SHARED_IMAGE" and seen["ImageCreator"] == alice.account_id
    assert seen["SourceUrl"] is None, "the owner's import URL is not the receiver's business"
    by_type = call(server, bob, "DescribeImages", {"Filters": [{"Name": "image-type", "Values": ["SHARED_IMAGE"]}]})
    assert [i["ImageId"] for i in by_type["ImageSet"]] == [image_id]
    mine = call(server, bob, "DescribeImages", {"Filters": [{"Name": "image-type", "Values": ["PRIVATE_IMAGE"]}]})
    assert image_id not in [i["ImageId"] for i in mine["ImageSet"]]
    assert describe(server, bob, image_id, SH) is None
    assert describe(server, carol, image_id) is None
    assert describe(server, alice, image_id)["ImageType"] == "PRIVATE_IMAGE"
    # Shares don't count against the receiver's quota.
    assert call(server, bob, "DescribeImageQuota", {})["ImageNumUsed"] == 0

    # What the receiver may not do.
    for what, (action, params) in receiver_attempts(image_id, carol).items():
        assert code_of(server, bob, action, params) == WHILE_SHARED[what], what
    # The owner may still change it (the receiver sees the change), but not delete it while shared.
    call(server, alice, "ModifyImageAttribute", {"ImageId": image_id, "ImageDescription": "now with notes"})
    assert describe(server, bob, image_id)["ImageDescription"] == "now with notes"
    code, message = error_of(server, alice, "DeleteImages", {"ImageIds": [image_id]})
    assert code == "InvalidImageId.InShared" and "CANCEL" in message

    # CANCEL: the receiver no longer sees it, and gets exactly what it gets for an id never issued.
    share(server, alice, image_id, bob, permission="CANCEL")
    assert shared_with(server, alice, image_id) == []
    assert describe(server, bob, image_id) is None
    never = "img-zz9zz9zz"
    for what, (action, params) in receiver_attempts(image_id, carol).items():
        got = error_of(server, bob, action, params)
        ref = error_of(server, bob, action, json.loads(json.dumps(params).replace(image_id, never)))
        assert got[0] == "InvalidImageId.NotFound", what
        assert (got[0], got[1].replace(image_id, never)) == ref, what
    # CANCEL again is a no-op; then the owner can delete it.
    share(server, alice, image_id, bob, permission="CANCEL")
    call(server, alice, "DeleteImages", {"ImageIds": [image_id]})
    assert describe(server, alice, image_id) is None


def test_receiver_copies_a_shared_image_into_its_own(server: Server, alice: Account, bob: Account, web: str,
                                                     images_dir: Path) -> None:
    image_id = new_image(server, alice, "base-for-bob", web, images_dir, seed=2)
    share(server, alice, image_id, bob)
    resp = call(server, bob, "SyncImages", {"ImageIds": [image_id], "DestinationRegions": [GZ],
                                            "ImageSetRequired": True})
    [entry] = resp["ImageSet"]
    assert entry["Region"] == GZ
    own = wait_image(server, bob, entry["ImageId"])
    assert own["ImageState"] == "NORMAL" and own["ImageType"] == "PRIVATE_IMAGE"
    assert (own["ImageCreator"], own["SourceImageId"], own["SourceRegion"]) == (bob.account_id, image_id, GZ)
    assert own["ImageName"] == "base-for-bob"
    assert "BytesCopied" not in wait_task(server, bob, entry["TaskId"])["Result"]  # no oracle for bob
    result = catalog_task_result(server, entry["TaskId"])
    assert result["BytesCopied"] == 0 and result["BytesPresent"] == result["BytesTotal"] > 0  # same store
    assert call(server, bob, "DescribeImageQuota", {})["ImageNumUsed"] == 1
    # Its own copy is bob's to do anything with, and outlives the share.
    share(server, alice, image_id, bob, permission="CANCEL")
    assert describe(server, bob, image_id) is None
    assert describe(server, bob, own["ImageId"])["ImageState"] == "NORMAL"
    call(server, bob, "ModifyImageAttribute", {"ImageId": own["ImageId"], "ImageName": "bobs-now"})
    [back] = call(server, bob, "SyncImages", {"ImageIds": [own["ImageId"]], "DestinationRegions": [SH],
                                              "ImageSetRequired": True})["ImageSet"]
    assert wait_image(server, bob, back["ImageId"], region=SH)["ImageState"] == "NORMAL"


def test_share_rules_and_codes(server: Server, alice: Account, bob: Account, carol: Account, ops: Account,
                               web: str, images_dir: Path) -> None:
    image_id = new_image(server, alice, "rules", web, images_dir, seed=3)

    def modify(who: Account, accounts: list[str], permission: str = "SHARE", image: str = image_id) -> str:
        return code_of(server, who, "ModifyImageSharePermission",
                       {"ImageId": image, "AccountIds": accounts, "Permission": permission})

    assert modify(alice, [bob.account_id], image="img-BAD") == "InvalidImageId.Malformed"
    assert modify(alice, [bob.account_id], image="img-zzzzzzzz") == "InvalidImageId.NotFound"
    assert modify(carol, [bob.account_id]) == "InvalidImageId.NotFound"  # carol can't see it
    assert modify(alice, [bob.account_id], permission="GRANT") == "InvalidParameterValue"
    assert modify(alice, []) == "MissingParameter"
    assert modify(alice, [alice.account_id]) == "FailedOperation.AccountIsYourSelf"
    assert modify(alice, [alice.account_id], permission="CANCEL") == "InvalidAccountIs.YourSelf"
    assert modify(alice, ["999999999999"]) == "InvalidAccountId.NotFound"
    assert modify(alice, ["bob"]) == "InvalidAccountId.NotFound"
    # All or nothing: one bad account and nobody gets the image.
    assert modify(alice, [bob.account_id, "999999999999"]) == "InvalidAccountId.NotFound"
    assert shared_with(server, alice, image_id) == []
    share(server, alice, image_id, bob, carol)
    assert sorted(shared_with(server, alice, image_id)) == sorted([bob.account_id, carol.account_id])
    assert modify(alice, [bob.account_id]) == "FailedOperation.AccountAlreadyExists"
    assert code_of(server, bob, "DescribeImageSharePermission", {"ImageId": image_id}) == \
        "UnauthorizedOperation.ImageNotBelongToAccount"
    assert code_of(server, alice, "DescribeImageSharePermission", {"ImageId": "img-BAD"}) == "InvalidImageId.Malformed"
    share(server, alice, image_id, bob, carol, permission="CANCEL")
    # Only NORMAL images are shared; a failed one can be cancelled (nothing to cancel) but not shared.
    failed = server.client(alice).ImportImage(import_request("broken", f"{web}/missing.raw")).ImageId
    assert wait_image(server, alice, failed)["ImageState"] == "IMPORTFAILED"
    assert modify(alice, [bob.account_id], image=failed) == "InvalidParameterValue.InvalidImageState"
    share(server, alice, failed, bob, permission="CANCEL")
    # BYOL images can't be shared.
    byol = new_image(server, alice, "byol", web, images_dir, seed=4, LicenseType="BYOL")
    assert modify(alice, [bob.account_id], image=byol) == "FailedOperation.BYOLImageShareFailed"
    # A public image is everyone's already: its operator can't share it, others don't own it.
    pub = new_image(server, ops, "public", web, images_dir, seed=5)
    call(server, ops, "PublishImage", {"ImageId": pub})
    assert modify(ops, [bob.account_id], image=pub) == "InvalidParameterValue.InvalidImageId"
    assert modify(alice, [bob.account_id], image=pub) == "UnauthorizedOperation.ImageNotBelongToAccount"
    # An image being shared can't be published.
    own_ops = new_image(server, ops, "ops-private", web, images_dir, seed=6)
    share(server, ops, own_ops, bob)
    assert code_of(server, ops, "PublishImage", {"ImageId": own_ops}) == "InvalidImageId.InShared"


def test_500_accounts_per_image(server: Server, alice: Account, web: str, images_dir: Path) -> None:
    """The contract's limit: 500 accounts per image (OverQuota past it; 501 in one call is refused as such)."""
    from stratus.catalog.db import open_database
    from stratus.catalog.models import Account as AccountRow

    image_id = new_image(server, alice, "popular", web, images_dir, seed=7)
    # 500 accounts, made straight in the catalog (`stratus account create` makes them one by one).
    ids = [str(700000000000 + n) for n in range(501)]
    db = open_database(server.env["STRATUS_DATABASE_URL"])
    try:
        with db.write() as s:
            s.add_all([AccountRow(id=i, name=f"crowd-{i}") for i in ids])
    finally:
        db.dispose()
    assert code_of(server, alice, "ModifyImageSharePermission",
                   {"ImageId": image_id, "AccountIds": ids, "Permission": "SHARE"}) == \
        "InvalidParameterValue.LimitExceeded"
    call(server, alice, "ModifyImageSharePermission", {"ImageId": image_id, "AccountIds": ids[:499],
                                                       "Permission": "SHARE"})
    call(server, alice, "ModifyImageSharePermission", {"ImageId": image_id, "AccountIds": ids[499:500],
                                                       "Permission": "SHARE"})
    assert len(call(server, alice, "DescribeImageSharePermission", {"ImageId": image_id})["SharePermissionSet"]) \
        == 500
    code, message = error_of(server, alice, "ModifyImageSharePermission",
                             {"ImageId": image_id, "AccountIds": ids[500:], "Permission": "SHARE"})
    assert code == "OverQuota" and "500" in message
    call(server, alice, "ModifyImageSharePermission", {"ImageId": image_id, "AccountIds": ids[:500],
                                                       "Permission": "CANCEL"})
    assert call(server, alice, "DescribeImageSharePermission", {"ImageId": image_id})["SharePermissionSet"] == []


def test_cli_and_tccli(server: Server, alice: Account, bob: Account, carol: Account, web: str,
                       images_dir: Path, tmp_path: Path) -> None:
    image_id = new_image(server, alice, "cli-share", web, images_dir, seed=8)
    res = server.run("image", "share", image_id, "--account", bob.account_id, "--account", carol.account_id,
                     env=alice.env())
    assert "shared" in res.stdout
    listed = json.loads(server.run("image", "shares", image_id, "--json", env=alice.env()).stdout)
    assert sorted(r["AccountId"] for r in listed) == sorted([bob.account_id, carol.account_id])
    res = server.tccli(alice, "DescribeImageSharePermission", "--ImageId", image_id, home=tmp_path)
    assert res.returncode == 0, res.stderr
    assert len(json.loads(res.stdout)["SharePermissionSet"]) == 2
    server.run("image", "unshare", image_id, "--account", f"{bob.account_id},{carol.account_id}", env=alice.env())
    res = server.tccli(alice, "ModifyImageSharePermission", "--ImageId", image_id, "--AccountIds",
                       json.dumps([carol.account_id]), "--Permission", "SHARE", home=tmp_path)
    assert res.returncode == 0, res.stderr
    assert describe(server, carol, image_id)["ImageType"] == "SHARED_IMAGE"
    res = server.run("image", "share", image_id, "--account", alice.account_id, env=alice.env(), check=False)
    assert res.returncode == 1 and "FailedOperation.AccountIsYourSelf" in res.stderr
    res = server.run("image", "shares", image_id, env=bob.env(), check=False)
    assert res.returncode == 1 and "InvalidImageId.NotFound" in res.stderr


# --------------------------------------------------------------------------- instances from a shared image


def wait_instance(server: Server, account: Account, instance_id: str, states: tuple[str, ...]) -> dict[str, Any]:
    def settled() -> dict[str, Any] | None:
        resp = call(server, account, "DescribeInstances", {"InstanceIds": [instance_id]})
        inst = resp["InstanceSet"][0] if resp["InstanceSet"] else None
        busy = inst is None or inst.get("LatestOperationState") == "OPERATING"
        return inst if inst and inst["InstanceState"] in states and not busy else None

    return wait_for(settled, timeout=120, what=f"{instance_id} to be {states}")


@pytest.mark.skipif("RunInstances" not in ACTIONS or "ResetInstance" not in ACTIONS,
                    reason="RunInstances/ResetInstance are not in the action registry yet (issue 3)")
def test_receiver_launches_and_reinstalls_and_keeps_its_instances(server: Server, alice: Account, bob: Account,
                                                                  web: str, images_dir: Path) -> None:
    image_id = new_image(server, alice, "launchable", web, images_dir, seed=9)
    share(server, alice, image_id, bob)
    run = {"ImageId": image_id, "InstanceType": "S5.SMALL1", "Placement": {"Zone": "ap-guangzhou-1"}}
    [instance_id] = call(server, bob, "RunInstances", run)["InstanceIdSet"]
    inst = wait_instance(server, bob, instance_id, ("RUNNING",))
    assert inst["ImageId"] == image_id
    call(server, bob, "ResetInstance", {"InstanceId": instance_id, "ImageId": image_id})
    wait_instance(server, bob, instance_id, ("RUNNING",))
    share(server, alice, image_id, bob, permission="CANCEL")
    # Launched instances keep working; new launches and reinstalls from the image are refused.
    assert wait_instance(server, bob, instance_id, ("RUNNING",))["InstanceState"] == "RUNNING"
    call(server, bob, "RebootInstances", {"InstanceIds": [instance_id]})
    assert wait_instance(server, bob, instance_id, ("RUNNING",))["InstanceState"] == "RUNNING"
    assert code_of(server, bob, "RunInstances", run) == "InvalidImageId.NotFound"
    assert code_of(server, bob, "ResetInstance", {"InstanceId": instance_id, "ImageId": image_id}) == \
        "InvalidImageId.NotFound"
    call(server, bob, "TerminateInstances", {"InstanceIds": [instance_id]})
