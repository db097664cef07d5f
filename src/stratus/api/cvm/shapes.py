"""CVM response shapes: catalog rows → the JSON models of contract §6."""

from __future__ import annotations

import json
import math
import uuid
from datetime import UTC, datetime
from typing import Any

from stratus.catalog.models import Image, Instance, Task
from stratus.domain.redact import redact_paths
from stratus.service import disclosure
from stratus.service.context import Caller, Services
from stratus.service.visibility import image_type

GiB = 1024**3


def iso_time(epoch: float | None) -> str | None:
    if epoch is None:
        return None
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def gib(size: int) -> int:
    return math.ceil(size / GiB) if size else 0


def image(img: Image, caller: Caller) -> dict[str, Any]:
    system = img.disks[0] if img.disks else None
    owner = disclosure.sees_lineage(img, caller)  # lineage may name another account's resources
    return {
        "ImageId": img.id,
        "OsName": img.os_name,
        "ImageType": image_type(img, caller).value,
        "CreatedTime": iso_time(img.created_at),
        "ImageName": img.name,
        "ImageDescription": img.description,
        "ImageSize": gib(system.virtual_size) if system else 0,
        "Architecture": img.architecture,
        "ImageState": img.state,
        "Platform": img.platform,
        "ImageCreator": img.owner_id,
        "ImageSource": img.source,
        "SyncPercent": img.sync_percent,
        "IsSupportCloudinit": img.support_cloudinit,
        "SnapshotSet": [
            {"SnapshotId": d.snapshot_id, "DiskUsage": d.usage, "DiskSize": gib(d.virtual_size)} for d in img.disks
        ],
        "Tags": [{"Key": t.key, "Value": t.value} for t in img.tags],
        "LicenseType": img.license_type,
        "ImageFamily": img.family,
        "ImageDeprecated": img.deprecated,
        "CdcCacheStatus": "",
        # Extensions (the SDK ignores unknown fields): why an image failed, progress, lineage, sizes.
        "ImageStateReason": redact_paths(img.state_reason),
        "ImageProgress": round(img.progress, 1),
        "BootMode": img.boot_mode,
        "SourceImageId": img.source_image_id if owner else None,
        "SourceRegion": img.source_region if owner else None,
        "SourceInstanceId": img.source_instance_id if owner else None,
        "SourceUrl": img.source_url if owner else None,
        "DiskSet": [
            {"SnapshotId": d.snapshot_id, "DiskUsage": d.usage, "VirtualSize": d.virtual_size,
             "StoredBytes": d.stored_bytes, "SourceFormat": d.source_format,
             "ManifestDigest": d.manifest_digest if owner else None}
            for d in img.disks
        ],
    }


def task(t: Task, caller: Caller, cos_paths: list[str] | None = None) -> dict[str, Any]:
    return {
        "TaskId": t.id,
        "TaskType": t.kind,
        "TaskState": {"QUEUED": "PENDING", "RUNNING": "RUNNING", "DONE": "SUCCESS", "FAILED": "FAILED"}[t.state],
        "Stage": t.stage,
        "Progress": round(t.progress, 1),
        "ErrorMessage": redact_paths(t.error),
        "ImageId": t.image_id,
        "CreatedTime": iso_time(t.created_at),
        "FinishedTime": iso_time(t.finished_at),
        "CosPaths": cos_paths or [],
        # What the finished task reports (docs/api.md, DescribeTasks), without store-level figures.
        "Result": disclosure.task_result(json.loads(t.result), caller) if t.result else None,
    }


def instance(svc: Services, inst: Instance, os_name: str) -> dict[str, Any]:
    itype = svc.settings.instance_type(inst.instance_type)
    system = inst.disks[0] if inst.disks else None
    return {
        "Placement": {"Zone": inst.zone, "ProjectId": 0, "HostIds": [], "HostId": ""},
        "InstanceId": inst.id,
        "InstanceType": inst.instance_type,
        "CPU": itype.cpu if itype else 0,
        "Memory": itype.memory_gib if itype else 0,
        "RestrictState": "NORMAL",
        "InstanceName": inst.name,
        "InstanceChargeType": "POSTPAID_BY_HOUR",
        "SystemDisk": {"DiskType": system.disk_type, "DiskId": system.id, "DiskSize": system.size_gib}
        if system else None,
        "DataDisks": [
            {"DiskSize": d.size_gib, "DiskType": d.disk_type, "DiskId": d.id, "DeleteWithInstance": True,
             "Encrypt": False}
            for d in inst.disks[1:]
        ],
        "PrivateIpAddresses": [],
        "PublicIpAddresses": None,
        "InternetAccessible": None,
        "VirtualPrivateCloud": None,
        "ImageId": inst.image_id,
        "RenewFlag": None,
        "CreatedTime": iso_time(inst.created_at),
        "ExpiredTime": None,
        "OsName": os_name,
        "SecurityGroupIds": [],
        "LoginSettings": {},
        "InstanceState": inst.state,
        "Tags": [{"Key": t.key, "Value": t.value} for t in inst.tags],
        "StopChargingMode": "NOT_APPLICABLE",
        "Uuid": str(uuid.uuid5(uuid.NAMESPACE_URL, "stratus:" + inst.id)),
        "LatestOperation": inst.latest_operation,
        "LatestOperationState": inst.latest_operation_state,
        "LatestOperationRequestId": inst.latest_operation_request_id,
        "LatestOperationErrorMsg": redact_paths(inst.latest_operation_error) or "",
        "DisasterRecoverGroupId": "",
        "IPv6Addresses": None,
        "CamRoleName": "",
        "HpcClusterId": "",
        "RdmaIpAddresses": [],
        "DedicatedClusterId": "",
        "IsolatedSource": "NOTISOLATED",
        "DisableApiTermination": False,
        "DefaultLoginUser": "root",
        "DefaultLoginPort": 22,
        "LatestOperationErrorMsgDetail": None,
        # Extensions: why an instance failed or stopped on its own, and how it runs.
        "InstanceStateReason": redact_paths(inst.state_reason),
        "ComputeDriver": inst.driver,
        "ComputeHost": inst.compute_host,  # the contract's HostName is the guest's hostname, just above
        "HostName": inst.host_name,
    }


def compute_host(h: Any) -> dict[str, Any]:
    """A compute host (extension DescribeComputeHosts): `HostState` UP while its heartbeat is fresh."""
    return {
        "HostName": h.name, "HostState": h.state, "Regions": h.regions, "ComputeDriver": h.compute or None,
        "CapacityInstances": h.capacity_instances, "InstanceCount": h.instances,
        "LastHeartbeatTime": iso_time(h.heartbeat_at), "StartedTime": iso_time(h.started_at),
    }
