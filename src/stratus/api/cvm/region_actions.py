"""Region copies and sharing: SyncImages, ModifyImageSharePermission, DescribeImageSharePermission
(contract §5.5–5.7). Handlers only translate between the wire and `stratus.service.sync` / `sharing`.
"""

from __future__ import annotations

from typing import Any

from stratus.api.cvm import shapes
from stratus.api.cvm.params import ActionSchema
from stratus.api.cvm.table import Action, Call
from stratus.service import sharing, sync


def sync_images(call: Call) -> dict[str, Any]:
    p = call.params
    copies = sync.sync_images(
        call.svc, call.caller, call.region or "", p["ImageIds"], p["DestinationRegions"],
        image_name=p.get("ImageName"), dry_run=p.get("DryRun", False), encrypt=p.get("Encrypt", False),
        kms_key_id=p.get("KmsKeyId"),
    )
    if not p.get("ImageSetRequired") or not copies:
        return {}
    # SyncImage is {ImageId, Region}; TaskId is an extension (DescribeTasks follows the copy).
    return {"ImageSet": [{"ImageId": c.image_id, "Region": c.region, "TaskId": c.task_id} for c in copies]}


def modify_image_share_permission(call: Call) -> dict[str, Any]:
    p = call.params
    sharing.modify_image_share_permission(call.svc, call.caller, call.region or "", p["ImageId"], p["AccountIds"],
                                          p["Permission"])
    return {}


def describe_image_share_permission(call: Call) -> dict[str, Any]:
    shares = sharing.describe_image_share_permission(call.svc, call.caller, call.region or "",
                                                     call.params["ImageId"])
    return {"SharePermissionSet": [{"CreatedTime": shapes.iso_time(sh.created_at), "AccountId": sh.account_id}
                                   for sh in shares]}


ACTIONS: dict[str, Action] = {
    "SyncImages": Action(
        ActionSchema({"ImageIds": [str], "DestinationRegions": [str], "DryRun": bool, "ImageName": str,
                      "ImageSetRequired": bool, "Encrypt": bool, "KmsKeyId": str},
                     required=frozenset({"ImageIds", "DestinationRegions"})),
        sync_images,
    ),
    "ModifyImageSharePermission": Action(
        ActionSchema({"ImageId": str, "AccountIds": [str], "Permission": str},
                     required=frozenset({"ImageId", "AccountIds", "Permission"})),
        modify_image_share_permission,
    ),
    "DescribeImageSharePermission": Action(
        ActionSchema({"ImageId": str}, required=frozenset({"ImageId"})), describe_image_share_permission,
    ),
}
