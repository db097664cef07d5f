"""`stratus instance run`: launch instances from an image and wait until they run."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import typer

from stratus.cli.common import EXIT_FAILED, Endpoint, EndpointOpt, JsonOpt, RegionOpt, die, out, print_json, sdk_errors
from stratus.cli.instance.follow import follow_instances


@sdk_errors
def run(
    image: str = typer.Option(..., "--image"),
    count: int = typer.Option(1, "--count"),
    instance_type: str = typer.Option("S5.SMALL1", "--type", metavar="TYPE", help="Instance type."),
    zone: str = typer.Option(None, "--zone", help="Default: the region's first zone."),
    name: str = typer.Option("", "--name", help="Patterns {R:x} and {R:x,F:y} number the instances."),
    system_disk: int = typer.Option(None, "--system-disk-size", help="GiB (at least the image's size)."),
    data_disk: list[int] = typer.Option([], "--data-disk", help="A blank data disk of this many GiB (repeatable)."),
    user_data: Path = typer.Option(None, "--user-data", exists=True, dir_okay=False, help="File given to the guest."),
    client_token: str = typer.Option(None, "--client-token"),
    no_wait: bool = typer.Option(False, "--no-wait"),
    endpoint: str = EndpointOpt,
    region: str = RegionOpt,
    json_out: bool = JsonOpt,
) -> None:
    """Launch COUNT instances from an image and wait until they run."""
    ep = Endpoint(endpoint, region)
    if zone is None:
        zone = ep.request("DescribeZones").ZoneSet[0].Zone
    params: dict[str, Any] = {"ImageId": image, "InstanceCount": count, "InstanceType": instance_type,
                              "Placement": {"Zone": zone}}
    if name:
        params["InstanceName"] = name
    if system_disk:
        params["SystemDisk"] = {"DiskSize": system_disk}
    if data_disk:
        params["DataDisks"] = [{"DiskSize": g} for g in data_disk]
    if user_data:
        params["UserData"] = base64.b64encode(user_data.read_bytes()).decode()
    if client_token:
        params["ClientToken"] = client_token
    ids = ep.request("RunInstances", params).InstanceIdSet
    if no_wait:
        out.print("\n".join(ids))
        return
    found = follow_instances(ep, ids, f"launching {len(ids)}")
    failed = [i for i in found if i["InstanceState"] == "LAUNCH_FAILED"]
    if json_out:
        print_json(found)
    else:
        out.print("\n".join(ids))
    if failed:
        die(f"{len(failed)} instances failed to launch: {failed[0]['LatestOperationErrorMsg']}", EXIT_FAILED)
