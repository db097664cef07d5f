"""Instance actions (contract §11) and CreateImage: wire ↔ `stratus.service.instances` / `capture`."""

from __future__ import annotations

import base64
from typing import Any

from stratus.api.cvm import shapes
from stratus.api.cvm.params import ANY, ActionSchema
from stratus.api.cvm.table import Action, Call
from stratus.domain import errors
from stratus.service import capture, image_rules, instances, visibility

FILTERS = [{"Name": str, "Values": [str]}]
TAG_SPEC = [{"ResourceType": str, "Tags": [{"Key": str, "Value": str}]}]
PLACEMENT = {"Zone": str, "ProjectId": int, "HostIds": [str], "HostId": str, "DedicatedResourcePackTenancy": str,
             "DedicatedResourcePackIds": [str], "RackId": int}
SYSTEM_DISK = {"DiskType": str, "DiskId": str, "DiskSize": int, "CdcId": str, "DiskName": str, "Encrypt": bool,
               "KmsKeyId": str}
DATA_DISK = {"DiskSize": int, "DiskType": str, "DiskId": str, "DeleteWithInstance": bool, "SnapshotId": str,
             "Encrypt": bool, "KmsKeyId": str, "ThroughputPerformance": int, "CdcId": str, "BurstPerformance": bool,
             "DiskName": str}
LOGIN = {"Password": str, "KeyIds": [str], "KeepImageLogin": str}


def run_instances(call: Call) -> dict[str, Any]:
    p = call.params
    placement = p.get("Placement") or {}
    if not placement.get("Zone"):
        raise errors.MissingParameter(name="Placement.Zone")
    if not p.get("ImageId"):
        raise errors.MissingParameter(name="ImageId")
    system = p.get("SystemDisk") or {}
    spec = instances.RunSpec(
        image_id=visibility.check_image_id(p["ImageId"]), zone=placement["Zone"],
        instance_type=p.get("InstanceType", "S5.SMALL1"), count=p.get("InstanceCount", 1),
        system_disk_gib=system.get("DiskSize"), system_disk_type=system.get("DiskType", "CLOUD_PREMIUM"),
        data_disks=[instances.DataDiskSpec(d["DiskSize"], d.get("DiskType", "CLOUD_PREMIUM"),
                                           d.get("DeleteWithInstance", True)) for d in p.get("DataDisks") or []],
        name=p.get("InstanceName", ""), host_name=p.get("HostName", ""), user_data=p.get("UserData"),
        client_token=p.get("ClientToken"), tags=instances.validate_tags(p.get("TagSpecification")),
        dry_run=p.get("DryRun", False), raw_params=p,
    )
    ids = instances.run_instances(call.svc, call.caller, call.region or "", spec, call.request_id)
    return {} if ids is None else {"InstanceIdSet": ids}


def describe_instances(call: Call) -> dict[str, Any]:
    p = call.params
    page = instances.describe_instances(call.svc, call.caller, call.region or "", instance_ids=p.get("InstanceIds"),
                                        filters=p.get("Filters"), offset=p.get("Offset", 0), limit=p.get("Limit", 20))
    image_ids = {i.image_id for i in page.instances}
    os_names = instances.os_names(call.svc, image_ids)
    return {"TotalCount": page.total,
            "InstanceSet": [shapes.instance(call.svc, i, os_names.get(i.image_id, "")) for i in page.instances]}


def describe_instances_status(call: Call) -> dict[str, Any]:
    p = call.params
    page = instances.describe_instances(call.svc, call.caller, call.region or "", instance_ids=p.get("InstanceIds"),
                                        offset=p.get("Offset", 0), limit=p.get("Limit", 20))
    return {"TotalCount": page.total,
            "InstanceStatusSet": [{"InstanceId": i.id, "InstanceState": i.state} for i in page.instances]}


def _changer(action: str):
    def handler(call: Call) -> dict[str, Any]:
        p = call.params
        stop_type = p.get("StopType", "SOFT")
        if stop_type not in ("SOFT", "HARD", "SOFT_FIRST"):
            raise errors.InvalidParameterValue(detail=f"StopType must be SOFT, HARD or SOFT_FIRST, not {stop_type!r}.")
        force = stop_type == "HARD" or bool(p.get("ForceStop")) or bool(p.get("ForceReboot"))
        instances.change_instances(call.svc, call.caller, call.region or "", action, p["InstanceIds"], force=force,
                                   request_id=call.request_id)
        return {}

    return handler


def reset_instance(call: Call) -> dict[str, Any]:
    p = call.params
    if p.get("ImageId") is not None:
        visibility.check_image_id(p["ImageId"])
    instances.reset_instance(call.svc, call.caller, call.region or "", p["InstanceId"], image_id=p.get("ImageId"),
                             system_disk_gib=(p.get("SystemDisk") or {}).get("DiskSize"),
                             user_data=p.get("UserData"), host_name=p.get("HostName"), request_id=call.request_id)
    return {}


def create_image(call: Call) -> dict[str, Any]:
    p = call.params
    force = p.get("ForcePoweroff", "false")
    if str(force).lower() not in ("true", "false"):
        raise errors.InvalidParameterValue(detail=f"ForcePoweroff is the string 'true' or 'false', not {force!r}.")
    image_id = capture.create_image(
        call.svc, call.caller, call.region or "", name=p["ImageName"], instance_id=p.get("InstanceId"),
        snapshot_ids=p.get("SnapshotIds"), data_disk_ids=p.get("DataDiskIds"),
        description=p.get("ImageDescription", ""), force_poweroff=str(force).lower() == "true",
        family=p.get("ImageFamily", ""), tags=image_rules.validate_tags(p.get("TagSpecification")),
        dry_run=p.get("DryRun", False),
    )
    return {} if image_id is None else {"ImageId": image_id}


def console_output(call: Call) -> dict[str, Any]:
    p = call.params
    data = instances.console_output(call.svc, call.caller, call.region or "", p["InstanceId"],
                                    min(p.get("MaxBytes", 1 << 20), 8 << 20))
    return {"InstanceId": p["InstanceId"], "Output": base64.b64encode(data).decode()}


def describe_instance_type_configs(call: Call) -> dict[str, Any]:
    region = call.svc.region(call.region)
    return {"InstanceTypeConfigSet": [
        {"Zone": z, "InstanceType": t.name, "InstanceFamily": t.name.split(".")[0], "GPU": 0, "CPU": t.cpu,
         "Memory": t.memory_gib, "FPGA": 0, "Architecture": t.architecture}
        for z in region.zones for t in call.svc.settings.instance_types
    ]}


IDS = {"InstanceIds": [str]}
ACTIONS: dict[str, Action] = {
    "RunInstances": Action(ActionSchema({
        "InstanceChargeType": str, "InstanceChargePrepaid": ANY, "Placement": PLACEMENT, "InstanceType": str,
        "ImageId": str, "SystemDisk": SYSTEM_DISK, "DataDisks": [DATA_DISK], "VirtualPrivateCloud": ANY,
        "InternetAccessible": ANY, "InstanceCount": int, "MinCount": int, "InstanceName": str, "LoginSettings": LOGIN,
        "SecurityGroupIds": [str], "EnhancedService": ANY, "ClientToken": str, "HostName": str, "ActionTimer": ANY,
        "DisasterRecoverGroupIds": [str], "TagSpecification": TAG_SPEC, "InstanceMarketOptions": ANY,
        "UserData": str, "Metadata": ANY, "DryRun": bool, "CpuTopology": ANY, "CamRoleName": str,
        "HpcClusterId": str, "LaunchTemplate": ANY, "DedicatedClusterId": str, "ChcIds": [str],
        "PartitionNumber": int, "DisableApiTermination": bool, "EnableJumboFrame": bool, "NetworkInterfaces": ANY,
    }, nested_required=frozenset({"DataDisks.DiskSize"})), run_instances),
    "DescribeInstances": Action(ActionSchema({**IDS, "Filters": FILTERS, "Offset": int, "Limit": int},
                                             nested_required=frozenset({"Filters.Name", "Filters.Values"})),
                                describe_instances),
    "DescribeInstancesStatus": Action(ActionSchema({**IDS, "Offset": int, "Limit": int}), describe_instances_status),
    "StartInstances": Action(ActionSchema(IDS, required=frozenset({"InstanceIds"})), _changer("StartInstances")),
    "StopInstances": Action(ActionSchema({**IDS, "ForceStop": bool, "StopType": str, "StoppedMode": str},
                                         required=frozenset({"InstanceIds"})), _changer("StopInstances")),
    "RebootInstances": Action(ActionSchema({**IDS, "ForceReboot": bool, "StopType": str},
                                           required=frozenset({"InstanceIds"})), _changer("RebootInstances")),
    "TerminateInstances": Action(ActionSchema({**IDS, "ReleaseAddress": bool, "ReleasePrepaidDataDisks": bool},
                                              required=frozenset({"InstanceIds"})), _changer("TerminateInstances")),
    "ResetInstance": Action(ActionSchema({
        "InstanceId": str, "ImageId": str, "SystemDisk": SYSTEM_DISK, "LoginSettings": LOGIN, "EnhancedService": ANY,
        "HostName": str, "UserData": str}, required=frozenset({"InstanceId"})), reset_instance),
    "CreateImage": Action(ActionSchema({
        "ImageName": str, "InstanceId": str, "ImageDescription": str, "ForcePoweroff": str, "Sysprep": str,
        "DataDiskIds": [str], "SnapshotIds": [str], "DryRun": bool, "TagSpecification": TAG_SPEC,
        "ImageFamily": str}, required=frozenset({"ImageName"})), create_image),
    "DescribeInstanceTypeConfigs": Action(ActionSchema({"Filters": FILTERS}), describe_instance_type_configs),
    # Extension: the serial console of a qemu instance, base64.
    "GetInstanceConsoleOutput": Action(ActionSchema({"InstanceId": str, "MaxBytes": int},
                                                    required=frozenset({"InstanceId"})), console_output),
}
