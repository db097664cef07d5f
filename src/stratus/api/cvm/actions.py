"""Image and region actions. `registry.ACTIONS` joins them with the instance and sharing actions into
the one table the endpoint dispatches on.

Handlers only translate between the wire and `stratus.service`; the rules live there.
"""

from __future__ import annotations

from typing import Any

from stratus.api.cvm import shapes
from stratus.api.cvm.params import ActionSchema
from stratus.api.cvm.table import Action, Call
from stratus.domain import errors, os_catalog
from stratus.service import image_describe, image_export, image_import, image_rules, images, task_status

TAG = {"Key": str, "Value": str}
TAG_SPEC = [{"ResourceType": str, "Tags": [TAG]}]
FILTERS = [{"Name": str, "Values": [str]}]


# --------------------------------------------------------------------------- regions


def describe_regions(call: Call) -> dict[str, Any]:
    regions = call.svc.settings.regions
    return {
        "TotalCount": len(regions),
        "RegionSet": [{"Region": r.name, "RegionName": r.display_name, "RegionState": "AVAILABLE"} for r in regions],
    }


def describe_zones(call: Call) -> dict[str, Any]:
    region = call.svc.region(call.region)
    region_no = call.svc.settings.regions.index(region) + 1
    zones = [
        {"Zone": z, "ZoneName": f"{region.display_name} Zone {i + 1}", "ZoneId": str(100000 * region_no + i + 1),
         "ZoneState": "AVAILABLE"}
        for i, z in enumerate(region.zones)
    ]
    return {"TotalCount": len(zones), "ZoneSet": zones}


# --------------------------------------------------------------------------- images


def describe_images(call: Call) -> dict[str, Any]:
    p = call.params
    page = image_describe.describe_images(
        call.svc, call.caller, call.region or "",
        image_ids=p.get("ImageIds"), filters=p.get("Filters"),
        offset=p.get("Offset", 0), limit=p.get("Limit", 20), instance_type=p.get("InstanceType"),
    )
    return {"TotalCount": page.total, "ImageSet": [shapes.image(i, call.caller) for i in page.images]}


def import_image(call: Call) -> dict[str, Any]:
    p = call.params
    req = image_import.ImportRequest(
        name=p["ImageName"], os_type=p["OsType"], os_version=p["OsVersion"], architecture=p["Architecture"],
        image_url=p["ImageUrl"], description=p.get("ImageDescription", ""),
        data_disk_urls=[d["ImageUrl"] for d in p.get("ImportImageDataDiskList", [])],
        force=p.get("Force", False), license_type=p.get("LicenseType", "TencentCloud"),
        boot_mode=p.get("BootMode", "Legacy BIOS"), family=p.get("ImageFamily", ""),
        tags=image_rules.validate_tags(p.get("TagSpecification")), dry_run=p.get("DryRun", False),
    )
    image_id = image_import.import_image(call.svc, call.caller, call.region or "", req)
    return {} if image_id is None else {"ImageId": image_id}


def describe_import_image_os(call: Call) -> dict[str, Any]:
    fams = os_catalog.OS_FAMILIES
    return {
        "ImportImageOsListSupported": {
            "Windows": [f.name for f in fams if f.kind == "Windows"],
            "Linux": [f.name for f in fams if f.kind == "Linux"],
        },
        "ImportImageOsVersionSet": [
            {"OsName": f.name, "OsVersions": list(f.versions), "Architecture": list(f.architectures)} for f in fams
        ],
    }


def modify_image_attribute(call: Call) -> dict[str, Any]:
    p = call.params
    images.modify_image_attribute(
        call.svc, call.caller, call.region or "", p["ImageId"],
        name=p.get("ImageName"), description=p.get("ImageDescription"),
        family=p.get("ImageFamily"), deprecated=p.get("ImageDeprecated"),
    )
    return {}


def delete_images(call: Call) -> dict[str, Any]:
    p = call.params
    images.delete_images(call.svc, call.caller, call.region or "", p["ImageIds"], dry_run=p.get("DryRun", False))
    return {}


def export_images(call: Call) -> dict[str, Any]:
    p = call.params
    started = image_export.export_images(
        call.svc, call.caller, call.region or "", bucket=p["BucketName"], image_ids=p.get("ImageIds"),
        export_format=p.get("ExportFormat", "RAW"), prefixes=p.get("FileNamePrefixList"),
        only_root_disk=p.get("OnlyExportRootDisk", False), dry_run=p.get("DryRun", False),
    )
    if started is None:
        return {}
    return {"TaskId": started.task_id, "CosPaths": started.cos_paths}


def describe_image_quota(call: Call) -> dict[str, Any]:
    quota, used = image_describe.describe_image_quota(call.svc, call.caller, call.region or "")
    return {"ImageNumQuota": quota, "ImageNumUsed": used}


def describe_image_from_family(call: Call) -> dict[str, Any]:
    image = image_describe.describe_image_from_family(call.svc, call.caller, call.region or "",
                                              call.params.get("ImageFamily"))
    return {"Image": shapes.image(image, call.caller) if image else None}


# --------------------------------------------------------------------------- extensions


def describe_tasks(call: Call) -> dict[str, Any]:
    task_ids = call.params["TaskIds"]
    if len(task_ids) > 100:
        raise errors.InvalidParameterValueLimitExceeded(detail="At most 100 TaskIds per request.")
    tasks = task_status.describe_tasks(call.svc, call.caller, task_ids)
    objects = task_status.export_objects_of(call.svc, [t.id for t in tasks])
    return {
        "TotalCount": len(tasks),
        "TaskSet": [shapes.task(t, call.caller, ["/" + o.key for o in objects.get(t.id, [])]) for t in tasks],
    }


def describe_compute_hosts(call: Call) -> dict[str, Any]:
    """Extension, operators only: every compute host, UP or DOWN by its heartbeat."""
    from stratus.service import hosts

    found = hosts.describe_compute_hosts(call.svc, call.caller)
    return {"TotalCount": len(found), "HostSet": [shapes.compute_host(h) for h in found]}


def publish_image(call: Call) -> dict[str, Any]:
    images.publish_image(call.svc, call.caller, call.region or "", call.params["ImageId"])
    return {}


ACTIONS: dict[str, Action] = {
    "DescribeRegions": Action(ActionSchema(), describe_regions, needs_region=False, on_loop=True),
    "DescribeZones": Action(ActionSchema(), describe_zones, on_loop=True),
    "DescribeImages": Action(
        ActionSchema({"ImageIds": [str], "Filters": FILTERS, "Offset": int, "Limit": int, "InstanceType": str},
                     nested_required=frozenset({"Filters.Name", "Filters.Values"})),
        describe_images,
    ),
    "ImportImage": Action(
        ActionSchema(
            {"Architecture": str, "OsType": str, "OsVersion": str, "ImageUrl": str, "ImageName": str,
             "ImageDescription": str, "DryRun": bool, "Force": bool, "TagSpecification": TAG_SPEC,
             "LicenseType": str, "BootMode": str, "ImageFamily": str, "ImportImageDataDiskList": [{"ImageUrl": str}]},
            required=frozenset({"Architecture", "OsType", "OsVersion", "ImageUrl", "ImageName"}),
            nested_required=frozenset({"ImportImageDataDiskList.ImageUrl"}),
        ),
        import_image,
    ),
    "DescribeImportImageOs": Action(ActionSchema(), describe_import_image_os),
    "ModifyImageAttribute": Action(
        ActionSchema({"ImageId": str, "ImageName": str, "ImageDescription": str, "ImageFamily": str,
                      "ImageDeprecated": bool}, required=frozenset({"ImageId"})),
        modify_image_attribute,
    ),
    "DeleteImages": Action(
        ActionSchema({"ImageIds": [str], "DeleteBindedSnap": bool, "DryRun": bool}, required=frozenset({"ImageIds"})),
        delete_images,
    ),
    "ExportImages": Action(
        ActionSchema({"BucketName": str, "ImageIds": [str], "ExportFormat": str, "FileNamePrefixList": [str],
                      "OnlyExportRootDisk": bool, "DryRun": bool, "RoleName": str},
                     required=frozenset({"BucketName"})),
        export_images,
    ),
    "DescribeImageQuota": Action(ActionSchema(), describe_image_quota),
    "DescribeImageFromFamily": Action(ActionSchema({"ImageFamily": str}), describe_image_from_family),
    # Extensions, callable with the SDK's CommonClient or `tccli cvm <Action> --cli-input-json`.
    "DescribeTasks": Action(ActionSchema({"TaskIds": [int]}, required=frozenset({"TaskIds"})), describe_tasks,
                            needs_region=False),
    "PublishImage": Action(ActionSchema({"ImageId": str}, required=frozenset({"ImageId"})), publish_image),
    "DescribeComputeHosts": Action(ActionSchema(), describe_compute_hosts, needs_region=False),
}
