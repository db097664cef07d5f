"""`stratus instance start`, `stop`, `reboot`, `terminate` and `reset`: an operation on instances, followed
until they settle."""

from __future__ import annotations

from typing import Any

import typer

from stratus.cli.common import EXIT_FAILED, Endpoint, EndpointOpt, RegionOpt, die, out, sdk_errors
from stratus.cli.instance.follow import follow_instances


def _change(action: str, verb: str, settled: set[str]):
    @sdk_errors
    def command(
        instance_ids: list[str],
        force: bool = typer.Option(False, "--force", help="Hard stop / reboot."),
        no_wait: bool = typer.Option(False, "--no-wait"),
        endpoint: str = EndpointOpt,
        region: str = RegionOpt,
    ) -> None:
        ep = Endpoint(endpoint, region)
        params: dict[str, Any] = {"InstanceIds": instance_ids}
        if action in ("StopInstances", "RebootInstances"):
            params["StopType"] = "HARD" if force else "SOFT"
        ep.request(action, params)
        if not no_wait:
            found = follow_instances(ep, instance_ids, f"{verb} {len(instance_ids)}", settled)
            failed = [i for i in found if i["LatestOperationState"] == "FAILED"]
            if failed:
                die(f"{verb} failed for {failed[0]['InstanceId']}: {failed[0]['LatestOperationErrorMsg']}", EXIT_FAILED)
        out.print(f"{verb}: {' '.join(instance_ids)}")

    command.__doc__ = f"{verb.capitalize()} instances."
    return command


start = _change("StartInstances", "start", {"RUNNING"})
stop = _change("StopInstances", "stop", {"STOPPED"})
reboot = _change("RebootInstances", "reboot", {"RUNNING"})
terminate = _change("TerminateInstances", "terminate", set())


@sdk_errors
def reset(
    instance_id: str,
    image: str = typer.Option(None, "--image", help="Default: the instance's current image."),
    system_disk: int = typer.Option(None, "--system-disk-size"),
    endpoint: str = EndpointOpt,
    region: str = RegionOpt,
) -> None:
    """Reinstall the system disk from an image; data disks are kept."""
    ep = Endpoint(endpoint, region)
    params: dict[str, Any] = {"InstanceId": instance_id}
    if image:
        params["ImageId"] = image
    if system_disk:
        params["SystemDisk"] = {"DiskSize": system_disk}
    ep.request("ResetInstance", params)
    found = follow_instances(ep, [instance_id], "reset")
    if found and found[0]["LatestOperationState"] == "FAILED":
        die(f"reset failed: {found[0]['LatestOperationErrorMsg']}", EXIT_FAILED)
    out.print(f"reset {instance_id}")
