"""Instance use cases: RunInstances, DescribeInstances(Status), Start/Stop/Reboot/Terminate, ResetInstance.

An instance belongs to one account; any other account gets InvalidInstanceId.NotFound. Requests are
validated completely and their rows written in one transaction (the instances PENDING, their disks,
the task that will do the work), so a refused request creates nothing. The work itself (bases,
overlays, VMs) is done by the `launch` and `instance` tasks in `instance_tasks.py`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import Select, exists, func, or_, select, update
from sqlalchemy.orm import Session, selectinload

from stratus.catalog.models import Image, Instance, InstanceDisk, InstanceTag, RunRequest
from stratus.config import InstanceType
from stratus.domain import errors, ids, tags
from stratus.domain.states import INSTANCE_BUSY, ImageState, InstanceState, check_instance
from stratus.service.context import Caller, Services
from stratus.service.hosts import down_hosts, host_dir, place
from stratus.service.image_describe import escape_like, find_instance_type
from stratus.service.limits import check_tasks
from stratus.service.visibility import get_visible
from stratus.tasks.runner import enqueue

GiB = 1024**3
MAX_INSTANCE_COUNT = 500
MAX_BATCH_IDS = 100
MAX_DATA_DISKS = 20
MAX_USER_DATA = 16 * 1024
MAX_LIMIT = 100
DEFAULT_SYSTEM_DISK_GIB = 50
DISK_TYPES = {"LOCAL_BASIC", "LOCAL_SSD", "CLOUD_BASIC", "CLOUD_SSD", "CLOUD_PREMIUM", "CLOUD_BSSD", "CLOUD_HSSD",
              "CLOUD_TSSD", "LOCAL_NVME", "LOCAL_PRO"}
HOSTNAME_RE = re.compile(r"^(?!-)(?!.*--)(?!.*\.\.)[A-Za-z0-9.-]{2,60}(?<![-.])$")
NAME_PATTERN_RE = re.compile(r"\{R:(\d+)(?:,F:(\d+))?\}")
FILTER_NAMES = {"zone", "instance-id", "instance-name", "instance-state", "instance-charge-type", "image-id",
                "tag-key", "tag-value", "project-id", "creation-start-time", "creation-end-time", "host-id",
                "dedicated-cluster-id", "vpc-id", "subnet-id", "uuid", "security-group-id", "private-ip-address",
                "public-ip-address", "ipv6-address"}


# --------------------------------------------------------------------------- lookups


def check_instance_id(instance_id: Any) -> str:
    if not ids.is_id("instance", instance_id):
        raise errors.InvalidInstanceIdMalformed(instance_id=instance_id)
    return instance_id


def get_owned(s: Session, caller: Caller, region: str, instance_id: str, *, lock: bool = False) -> Instance:
    check_instance_id(instance_id)
    q = (select(Instance).where(Instance.id == instance_id, Instance.owner_id == caller.account_id,
                                Instance.region == region)
         .options(selectinload(Instance.disks), selectinload(Instance.tags)))
    if lock:
        q = q.with_for_update()
    inst = s.scalars(q).first()
    if inst is None:
        raise errors.InvalidInstanceIdNotFound(instance_id=instance_id)
    return inst


def instance_dir(svc: Services, region: str, instance_id: str, host: str) -> Path:
    """An instance's disks and VM files, in its compute host's directory."""
    return host_dir(svc, region, host) / "instances" / instance_id


def workdir(svc: Services, inst: Instance) -> Path:
    return instance_dir(svc, inst.region, inst.id, inst.compute_host)


# --------------------------------------------------------------------------- RunInstances


@dataclass
class DataDiskSpec:
    size_gib: int
    disk_type: str = "CLOUD_PREMIUM"
    delete_with_instance: bool = True


@dataclass
class RunSpec:
    image_id: str
    zone: str
    instance_type: str = "S5.SMALL1"
    count: int = 1
    system_disk_gib: int | None = None
    system_disk_type: str = "CLOUD_PREMIUM"
    data_disks: list[DataDiskSpec] = field(default_factory=list)
    name: str = ""
    host_name: str = ""
    user_data: str | None = None
    client_token: str | None = None
    tags: list[tuple[str, str]] = field(default_factory=list)
    dry_run: bool = False
    raw_params: dict[str, Any] = field(default_factory=dict)  # for ClientToken comparison


def validate_tags(tag_specs: list[dict[str, Any]] | None) -> list[tuple[str, str]]:
    """The tags of new instances: RunInstances' TagSpecification may also carry the image's (ResourceType
    'image'), which tag the instance too; entries for other resource types are ignored."""
    return tags.from_specs(tag_specs, ("instance", "image"), noun="instance", refuse_others=False)


def expand_names(pattern: str, count: int) -> list[str]:
    """InstanceName patterns: `web-{R:3}` → web-3, web-4 …; `{R:3,F:2}` pads to 2 digits; no pattern and
    several instances → `name`, `name`… (CVM numbers them only when asked)."""
    if not pattern:
        return ["unnamed"] * count
    m = NAME_PATTERN_RE.search(pattern)
    if m is None:
        return [pattern] * count
    start, width = int(m.group(1)), int(m.group(2) or 0)
    return [pattern[: m.start()] + str(start + i).zfill(width) + pattern[m.end():] for i in range(count)]


def decode_user_data(user_data: str | None) -> bytes | None:
    if user_data is None:
        return None
    try:
        raw = base64.b64decode(user_data, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise errors.InvalidUserDataFormat(detail=str(exc)) from None
    if len(raw) > MAX_USER_DATA:
        raise errors.InvalidUserDataFormat(detail=f"{len(raw)} bytes decoded is over {MAX_USER_DATA}")
    return raw


def _params_digest(params: dict[str, Any]) -> str:
    canon = {k: v for k, v in params.items() if k not in ("ClientToken", "DryRun")}
    return hashlib.sha256(json.dumps(canon, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _check_zone(svc: Services, region: str, zone: str) -> None:
    if zone in svc.region(region).zones:
        return
    for other in svc.settings.regions:
        if zone in other.zones:
            raise errors.InvalidZoneMismatchRegion(zone=zone, region=region)
    raise errors.InvalidZoneValue(zone=zone)


def _check_image_usable(image: Image, itype: InstanceType, instance_type: str) -> None:
    if image.state != ImageState.NORMAL:
        raise errors.InvalidImageState(image_id=image.id, state=image.state)
    if image.architecture != itype.architecture:
        raise errors.InvalidImageForGivenInstanceType(image_id=image.id, arch=image.architecture,
                                                      instance_type=instance_type, type_arch=itype.architecture)


def _disk_gib(size: int) -> int:
    return max(1, -(-size // GiB))


def run_instances(svc: Services, caller: Caller, region: str, spec: RunSpec, request_id: str = ""
                  ) -> list[str] | None:
    """RunInstances: any account, from any image it can see (public, own, shared with it) that is
    NORMAL. Creates `count` instances PENDING and a `launch` task; they become RUNNING or LAUNCH_FAILED.
    A ClientToken makes the call idempotent: the same token and parameters return the same instances,
    the same token with other parameters is refused (InvalidParameterValue.Duplicate). Returns the
    instance ids, or None for a DryRun that passed."""
    if spec.client_token is not None and (len(spec.client_token) > 64 or not spec.client_token.isascii()):
        raise errors.InvalidClientTokenTooLong(length=len(spec.client_token))
    if not 1 <= spec.count <= MAX_INSTANCE_COUNT:
        raise errors.InvalidParameterValueRange(
            detail=f"InstanceCount must be between 1 and {MAX_INSTANCE_COUNT}, not {spec.count}.")
    itype = find_instance_type(svc, spec.instance_type)
    _check_zone(svc, region, spec.zone)
    if len(spec.name) > 128:
        raise errors.InvalidParameterValueTooLarge(detail=f"InstanceName is {len(spec.name)} characters; max 128.")
    if spec.host_name and not HOSTNAME_RE.match(spec.host_name):
        raise errors.IllegalHostName(value=spec.host_name, detail="use 2-60 letters, digits, '.' and '-'")
    user_data = decode_user_data(spec.user_data)
    if len(spec.data_disks) > MAX_DATA_DISKS:
        raise errors.InvalidParameterValueLimitExceeded(detail=f"At most {MAX_DATA_DISKS} data disks.")
    for d in [*spec.data_disks, DataDiskSpec(1, spec.system_disk_type)]:
        if d.disk_type not in DISK_TYPES:
            raise errors.InvalidParameterValue(detail=f"DiskType {d.disk_type!r} is not one of {sorted(DISK_TYPES)}.")
        if not 1 <= d.size_gib <= 32000:
            raise errors.InvalidParameterValueRange(detail=f"DiskSize {d.size_gib} GiB is outside 1-32000.")
    digest = _params_digest(spec.raw_params)
    names = expand_names(spec.name, spec.count)
    with svc.db.write() as s:
        if svc.db.is_postgresql:
            # One launch per account at a time (the quota count below), taken before the ClientToken lookup:
            # two racing requests with one token then run one after the other, and the second sees the
            # first's RunRequest instead of failing on its primary key. (SQLite's BEGIN IMMEDIATE already
            # serializes writers.)
            from stratus.catalog.models import Account

            s.execute(select(Account.id).where(Account.id == caller.account_id).with_for_update())
        if spec.client_token:
            prior = s.get(RunRequest, (caller.account_id, region, spec.client_token))
            if prior is not None:
                if prior.params_digest != digest:
                    raise errors.InvalidParameterValueDuplicate(
                        detail=f"ClientToken {spec.client_token!r} was already used with other parameters; "
                        "use a new token for a new request.")
                return json.loads(prior.instance_ids)
        image = get_visible(s, caller, region, spec.image_id)
        _check_image_usable(image, itype, spec.instance_type)
        system = image.disks[0]
        system_gib = spec.system_disk_gib if spec.system_disk_gib is not None else max(
            DEFAULT_SYSTEM_DISK_GIB, _disk_gib(system.virtual_size))
        if system_gib * GiB < system.virtual_size:
            raise errors.InvalidParameterValueRange(
                detail=f"SystemDisk.DiskSize {system_gib} GiB is smaller than the image "
                f"({_disk_gib(system.virtual_size)} GiB); give at least the image's size.")
        if not 1 <= system_gib <= 32000:
            raise errors.InvalidParameterValueRange(detail=f"SystemDisk.DiskSize {system_gib} GiB is outside 1-32000.")
        used = s.scalar(select(func.count()).select_from(Instance).where(
            Instance.owner_id == caller.account_id, Instance.region == region)) or 0
        quota = svc.settings.quotas.instances_per_region
        if used + spec.count > quota:
            raise errors.InstanceQuotaExceeded(wanted=spec.count, quota=quota, region=region)
        if spec.dry_run:
            return None
        # The image's data disks come along (a full-instance image); DataDisks beyond them are blank.
        image_data = image.disks[1:]
        disk_plan: list[tuple[str, int, str | None, str, bool]] = [
            ("SYSTEM_DISK", system_gib, system.manifest_digest, spec.system_disk_type, True)]
        for i in range(max(len(image_data), len(spec.data_disks))):
            req = spec.data_disks[i] if i < len(spec.data_disks) else None
            src = image_data[i] if i < len(image_data) else None
            gib = max(req.size_gib if req else 0, _disk_gib(src.virtual_size) if src else 0)
            disk_plan.append(("DATA_DISK", gib, src.manifest_digest if src else None,
                              req.disk_type if req else "CLOUD_PREMIUM", req.delete_with_instance if req else True))
        placement = place(svc, s, region, spec.count, spec.instance_type)
        instance_ids = []
        by_host: dict[str, list[str]] = {}
        for n, (host, driver) in enumerate(placement):
            iid = ids.new_instance_id()
            wdir = instance_dir(svc, region, iid, host)
            by_host.setdefault(host, []).append(iid)
            inst = Instance(
                id=iid, region=region, zone=spec.zone, owner_id=caller.account_id, name=names[n],
                instance_type=spec.instance_type, image_id=image.id, state=InstanceState.PENDING, driver=driver,
                compute_host=host,
                user_data=base64.b64encode(user_data).decode() if user_data is not None else None,
                host_name=spec.host_name or iid, latest_operation="RunInstances", latest_operation_state="OPERATING",
                latest_operation_request_id=request_id,
            )
            inst.disks = [
                InstanceDisk(id=(did := ids.new_disk_id()), index=i, usage=usage, disk_type=dtype, size_gib=gib,
                             path=str(wdir / f"{did}.qcow2"), base_manifest=base, delete_with_instance=dwi)
                for i, (usage, gib, base, dtype, dwi) in enumerate(disk_plan)
            ]
            inst.tags = [InstanceTag(key=k, value=v) for k, v in spec.tags]
            s.add(inst)
            instance_ids.append(iid)
        s.flush()
        if spec.client_token:
            s.add(RunRequest(owner_id=caller.account_id, region=region, client_token=spec.client_token,
                             params_digest=digest, instance_ids=json.dumps(instance_ids)))
        check_tasks(svc, s, caller.account_id)  # limits.tasks_per_account
        for host, batch in by_host.items():  # each host launches its own part of the batch
            enqueue(s, "launch", {"instance_ids": batch}, account_id=caller.account_id, region=region,
                    image_id=image.id, host=host)
    svc.on_task_queued()
    return instance_ids


# --------------------------------------------------------------------------- DescribeInstances


@dataclass(frozen=True)
class InstancePage:
    total: int
    instances: list[Instance]


def _instance_filter(name: str, values: list[str]) -> Any:
    from datetime import datetime

    if name == "zone":
        return Instance.zone.in_(values)
    if name == "instance-id":
        return Instance.id.in_(values)
    if name == "instance-name":
        return or_(*(Instance.name.ilike("%" + escape_like(v) + "%", escape="\\") for v in values))
    if name == "instance-state":
        return Instance.state.in_(values)
    if name == "image-id":
        return Instance.image_id.in_(values)
    if name == "instance-charge-type":
        return Instance.id.is_not(None) if "POSTPAID_BY_HOUR" in values else Instance.id.is_(None)
    if name == "project-id":
        return Instance.id.is_not(None) if "0" in values else Instance.id.is_(None)
    if name == "tag-key":
        return exists().where(InstanceTag.instance_id == Instance.id, InstanceTag.key.in_(values))
    if name == "tag-value":
        return exists().where(InstanceTag.instance_id == Instance.id, InstanceTag.value.in_(values))
    if name.startswith("tag:"):
        return exists().where(InstanceTag.instance_id == Instance.id, InstanceTag.key == name[4:],
                              InstanceTag.value.in_(values))
    if name in ("creation-start-time", "creation-end-time"):
        try:
            moments = [datetime.fromisoformat(v.replace("Z", "+00:00")).timestamp() for v in values]
        except ValueError:
            raise errors.InvalidTimeFormat(name=name) from None
        return (Instance.created_at >= min(moments)) if name == "creation-start-time" else (
            Instance.created_at <= max(moments))
    # Networking and placement we don't model: nothing matches a specific value.
    return Instance.id.is_(None)


def describe_instances(svc: Services, caller: Caller, region: str, *, instance_ids: list[str] | None = None,
                       filters: list[dict[str, Any]] | None = None, offset: int = 0, limit: int = 20
                       ) -> InstancePage:
    """The caller's own instances in the region (other accounts' are never listed)."""
    if instance_ids is not None and filters is not None:
        raise errors.InvalidParameter(detail="InstanceIds and Filters cannot be given together.")
    if offset < 0 or not 0 <= limit <= MAX_LIMIT:
        raise errors.InvalidParameterValueLimitExceeded(detail=f"Offset must be ≥ 0 and Limit 0-{MAX_LIMIT}.")
    where: list[Any] = [Instance.owner_id == caller.account_id, Instance.region == region]
    if instance_ids is not None:
        if len(instance_ids) > MAX_BATCH_IDS:
            raise errors.InvalidParameterValueLimitExceeded(detail=f"At most {MAX_BATCH_IDS} InstanceIds.")
        for iid in instance_ids:
            check_instance_id(iid)
        where.append(Instance.id.in_(instance_ids))
    for f in filters or []:
        name, values = f["Name"], f["Values"]
        if name not in FILTER_NAMES and not name.startswith("tag:"):
            raise errors.InvalidFilter(detail=f"Unknown filter {name!r}; see docs/api.md.")
        if len(values) > 5:
            raise errors.InvalidFilterValueLimitExceeded(limit=5, name=name, count=len(values))
        where.append(_instance_filter(name, values))
    if filters and len(filters) > 10:
        raise errors.InvalidParameterValueLimitExceeded(detail="At most 10 Filters per request.")
    with svc.db.read() as s:
        total = s.scalar(select(func.count()).select_from(Instance).where(*where)) or 0
        q: Select[Any] = (select(Instance).where(*where).order_by(Instance.created_at.desc(), Instance.id.desc())
                          .offset(offset).limit(limit)
                          .options(selectinload(Instance.disks), selectinload(Instance.tags)))
        return InstancePage(total, list(s.scalars(q).all()))


def os_names(svc: Services, image_ids: set[str]) -> dict[str, str]:
    """OsName of each image still in the catalog (an instance outlives its image)."""
    if not image_ids:
        return {}
    with svc.db.read() as s:
        return {iid: name for iid, name in s.execute(select(Image.id, Image.os_name).where(Image.id.in_(image_ids)))}


# --------------------------------------------------------------------------- state changes


OPERATIONS: dict[str, tuple[frozenset[InstanceState], InstanceState | None, str]] = {
    # action: (states it accepts, transitional state, what it needs, for the message)
    "StartInstances": (frozenset({InstanceState.STOPPED}), InstanceState.STARTING, "STOPPED"),
    "StopInstances": (frozenset({InstanceState.RUNNING}), InstanceState.STOPPING, "RUNNING"),
    "RebootInstances": (frozenset({InstanceState.RUNNING}), InstanceState.REBOOTING, "RUNNING"),
    "TerminateInstances": (frozenset({InstanceState.RUNNING, InstanceState.STOPPED, InstanceState.LAUNCH_FAILED}),
                           InstanceState.TERMINATING, "RUNNING, STOPPED or LAUNCH_FAILED"),
    "ResetInstance": (frozenset({InstanceState.RUNNING, InstanceState.STOPPED}), None, "RUNNING or STOPPED"),
    "CreateImage": (frozenset({InstanceState.RUNNING, InstanceState.STOPPED}), None, "RUNNING or STOPPED"),
}
OP_NAMES = {"StartInstances": "start", "StopInstances": "stop", "RebootInstances": "reboot",
            "TerminateInstances": "terminate", "ResetInstance": "reset"}


def check_operable(inst: Instance, action: str) -> None:
    accepted, _, needed = OPERATIONS[action]
    if inst.latest_operation_state == "OPERATING" and inst.state not in INSTANCE_BUSY:
        raise errors.InstanceOperationInProgress(instance_id=inst.id, operation=inst.latest_operation)
    if inst.state not in accepted:
        raise errors.InstanceStateError.of(inst.id, inst.state, action, needed)


def change_instances(svc: Services, caller: Caller, region: str, action: str, instance_ids: list[str], *,
                     force: bool = False, request_id: str = "") -> None:
    """Start/Stop/Reboot/TerminateInstances on the caller's instances: all or nothing, each in a state
    the action accepts (else UnsupportedOperation.InstanceState<State>); ≤ 100 ids. Each compute host
    gets a task for its own instances; terminating an instance whose host is down removes it at once
    (that host removes its disks when it comes back, service/hosts.py `remove_orphans`)."""
    if not instance_ids:
        raise errors.MissingParameter(name="InstanceIds")
    if len(instance_ids) > MAX_BATCH_IDS:
        raise errors.InvalidParameterValueLimitExceeded(detail=f"At most {MAX_BATCH_IDS} InstanceIds per request.")
    _, transitional, _ = OPERATIONS[action]
    unique = list(dict.fromkeys(instance_ids))
    with svc.db.write() as s:
        instances = [get_owned(s, caller, region, iid, lock=svc.db.is_postgresql) for iid in unique]
        for inst in instances:
            check_operable(inst, action)
        if action == "TerminateInstances":
            down = down_hosts(svc, s)
            for inst in [i for i in instances if i.compute_host in down]:
                s.delete(inst)
                instances.remove(inst)
        previous = {inst.id: inst.state for inst in instances}
        by_host: dict[str, list[str]] = {}
        for inst in instances:
            if transitional is not None:
                check_instance(inst.state, transitional)
                inst.state = transitional
            inst.latest_operation, inst.latest_operation_state = action, "OPERATING"
            inst.latest_operation_request_id, inst.latest_operation_error = request_id, None
            by_host.setdefault(inst.compute_host, []).append(inst.id)
        if by_host:
            check_tasks(svc, s, caller.account_id)  # limits.tasks_per_account
        for host, batch in by_host.items():
            enqueue(s, "instance", {"op": OP_NAMES[action], "instance_ids": batch, "force": force,
                                    "previous": {i: previous[i] for i in batch}},
                    account_id=caller.account_id, region=region, host=host)
    svc.on_task_queued()


def reset_instance(svc: Services, caller: Caller, region: str, instance_id: str, *, image_id: str | None = None,
                   system_disk_gib: int | None = None, user_data: str | None = None, host_name: str | None = None,
                   request_id: str = "") -> None:
    """ResetInstance: reinstall the system disk from the same or another usable image (public, own or
    shared with the caller); data disks are kept. RUNNING or STOPPED only; a running instance is stopped,
    reinstalled and started again."""
    decoded = decode_user_data(user_data)
    if host_name and not HOSTNAME_RE.match(host_name):
        raise errors.IllegalHostName(value=host_name, detail="use 2-60 letters, digits, '.' and '-'")
    with svc.db.write() as s:
        inst = get_owned(s, caller, region, instance_id, lock=svc.db.is_postgresql)
        check_operable(inst, "ResetInstance")
        image = get_visible(s, caller, region, image_id or inst.image_id)
        itype = find_instance_type(svc, inst.instance_type)
        _check_image_usable(image, itype, inst.instance_type)
        system = inst.disks[0]
        gib = system_disk_gib if system_disk_gib is not None else max(system.size_gib,
                                                                      _disk_gib(image.disks[0].virtual_size))
        if gib < system.size_gib:
            raise errors.InvalidParameterValueRange(
                detail=f"SystemDisk.DiskSize can grow but not shrink: it is {system.size_gib} GiB, not {gib}.")
        if gib * GiB < image.disks[0].virtual_size:
            raise errors.InvalidImageIdForResetInstance(
                detail=f"the image {image.id} needs a system disk of at least "
                f"{_disk_gib(image.disks[0].virtual_size)} GiB; give SystemDisk.DiskSize.")
        inst.latest_operation, inst.latest_operation_state = "ResetInstance", "OPERATING"
        inst.latest_operation_request_id, inst.latest_operation_error = request_id, None
        payload: dict[str, Any] = {"op": "reset", "instance_ids": [inst.id], "image_id": image.id,
                                   "manifest": image.disks[0].manifest_digest, "size_gib": gib}
        if decoded is not None:
            payload["user_data"] = base64.b64encode(decoded).decode()
        if host_name:
            payload["host_name"] = host_name
        check_tasks(svc, s, caller.account_id)  # limits.tasks_per_account
        enqueue(s, "instance", payload, account_id=caller.account_id, region=region, image_id=image.id,
                host=inst.compute_host, instance_id=inst.id)
    svc.on_task_queued()


def console_output(svc: Services, caller: Caller, region: str, instance_id: str, max_bytes: int = 1 << 20) -> bytes:
    """The serial console log of a qemu instance (empty for the disk driver). Owner only."""
    from stratus.compute.driver import get_driver

    with svc.db.read() as s:
        inst = get_owned(s, caller, region, instance_id)
    return get_driver(inst.driver).console_output(workdir(svc, inst), max_bytes)


def set_states(s: Session, instance_ids: list[str], state: InstanceState, *, op_state: str | None = None,
               error: str | None = None, reason: str | None = None) -> None:
    """Record the outcome of an operation on instances (each checked against the state machine)."""
    for old in s.scalars(select(Instance.state).where(Instance.id.in_(instance_ids))):
        check_instance(old, state)
    values: dict[str, Any] = {"state": state}
    if op_state is not None:
        values["latest_operation_state"] = op_state
        values["latest_operation_error"] = error
    if reason is not None or state in (InstanceState.RUNNING, InstanceState.STOPPED):
        values["state_reason"] = reason
    s.execute(update(Instance).where(Instance.id.in_(instance_ids)).values(**values))

