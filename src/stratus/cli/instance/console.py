"""`stratus instance console`: an instance's serial console log (qemu driver)."""

from __future__ import annotations

import base64
import sys
import time

import typer

from stratus.cli.common import EXIT_FAILED, Endpoint, EndpointOpt, RegionOpt, die, sdk_errors
from stratus.cli.instance.follow import describe


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
