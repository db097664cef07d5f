"""`stratus instance ...`: instance verbs through the official SDK."""

from __future__ import annotations

import base64
import sys
import time
from pathlib import Path
from typing import Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

from stratus.cli.common import (
    EXIT_FAILED,
    EXIT_REFUSED,
    Endpoint,
    EndpointOpt,
    JsonOpt,
    RegionOpt,
    console,
    die,
    out,
    print_json,
    sdk_errors,
    table,
)

app = typer.Typer(help="Run, list, stop, start, reboot, reset and terminate instances.", no_args_is_help=True)

SETTLED = {"RUNNING", "STOPPED", "LAUNCH_FAILED"}


def describe(ep: Endpoint, instance_ids: list[str]) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    for i in range(0, len(instance_ids), 100):
        found += ep.call("DescribeInstances", {"InstanceIds": instance_ids[i:i + 100], "Limit": 100})["InstanceSet"]
    return found


def follow_instances(ep: Endpoint, instance_ids: list[str], what: str, done: set[str] | None = None) -> list[dict]:
    """Poll until every instance has settled (and its latest operation is no longer OPERATING)."""
    done = done or SETTLED
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), console=console) as progress:
        bar = progress.add_task(what, total=len(instance_ids))
        while True:
            found = describe(ep, instance_ids)
            settled = [i for i in found if i["InstanceState"] in done and i["LatestOperationState"] != "OPERATING"]
            gone = len(instance_ids) - len(found)
            progress.update(bar, completed=len(settled) + gone)
            if len(settled) + gone == len(instance_ids):
                return found
            time.sleep(0.3)


@app.command("run")
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


@app.command("list")
@sdk_errors
def list_(endpoint: str = EndpointOpt, region: str = RegionOpt, json_out: bool = JsonOpt) -> None:
    """List your instances in the region."""
    ep = Endpoint(endpoint, region)
    found: list[dict[str, Any]] = []
    while True:
        resp = ep.call("DescribeInstances", {"Limit": 100, "Offset": len(found)})
        found += resp["InstanceSet"]
        if len(found) >= resp["TotalCount"] or not resp["InstanceSet"]:
            break
    if json_out:
        print_json(found)
        return
    table(["InstanceId", "Name", "State", "Type", "Zone", "ImageId", "Created"],
          [[i["InstanceId"], i["InstanceName"], i["InstanceState"], i["InstanceType"], i["Placement"]["Zone"],
            i["ImageId"], i["CreatedTime"]] for i in found])


@app.command("show")
@sdk_errors
def show(instance_id: str, endpoint: str = EndpointOpt, region: str = RegionOpt, json_out: bool = JsonOpt) -> None:
    """One instance as JSON (--json is accepted for symmetry with the list verbs)."""
    found = describe(Endpoint(endpoint, region), [instance_id])
    if not found:
        die(f"InvalidInstanceId.NotFound: the instance {instance_id} does not exist in {region}", EXIT_REFUSED)
    print_json(found[0])


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


app.command("start")(_change("StartInstances", "start", {"RUNNING"}))
app.command("stop")(_change("StopInstances", "stop", {"STOPPED"}))
app.command("reboot")(_change("RebootInstances", "reboot", {"RUNNING"}))
app.command("terminate")(_change("TerminateInstances", "terminate", set()))


@app.command("reset")
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


@app.command("console")
@sdk_errors
def console_(
    instance_id: str,
    wait_for: str = typer.Option(None, "--wait-for", metavar="TEXT",
                                 help="Wait until TEXT is on the console, then print it."),
    timeout: float = typer.Option(120.0, "--timeout", metavar="SECONDS", help="How long --wait-for waits."),
    endpoint: str = EndpointOpt,
    region: str = RegionOpt,
) -> None:
    """Print the serial console log of an instance (qemu driver)."""
    ep = Endpoint(endpoint, region)
    found = describe(ep, [instance_id])
    if found and found[0].get("ComputeDriver") == "disk":
        die(f"{instance_id} runs on the disk driver, which has no console (it keeps disks, not VMs); the qemu "
            "driver runs real VMs: `compute = \"qemu\"` in the config or STRATUS_COMPUTE=qemu on the server",
            EXIT_FAILED)
    deadline = time.monotonic() + timeout
    while True:
        resp = ep.call("GetInstanceConsoleOutput", {"InstanceId": instance_id})
        text = base64.b64decode(resp["Output"]).decode("utf-8", "replace")
        if not wait_for or wait_for in text:
            break
        if time.monotonic() > deadline:
            sys.stdout.write(text)
            die(f"{wait_for!r} did not appear on the console of {instance_id} within {timeout:g} s", EXIT_FAILED)
        time.sleep(0.5)
    sys.stdout.write(text)

