"""`stratus image create`: capture a custom image from an instance (CreateImage)."""

from __future__ import annotations

from typing import Any

import typer

from stratus.cli.common import EXIT_FAILED, Endpoint, EndpointOpt, JsonOpt, RegionOpt, die, out, print_json, sdk_errors
from stratus.cli.image.follow import follow_image


@sdk_errors
def create(
    instance: str = typer.Option(..., "--instance"),
    name: str = typer.Option(..., "--name"),
    data_disk: list[str] = typer.Option([], "--data-disk", help="A data disk id to include (repeatable)."),
    description: str = typer.Option("", "--description"),
    force_poweroff: bool = typer.Option(False, "--force-poweroff"),
    endpoint: str = EndpointOpt,
    region: str = RegionOpt,
    json_out: bool = JsonOpt,
) -> None:
    """Capture a custom image from an instance (its system disk, plus the data disks named)."""
    ep = Endpoint(endpoint, region)
    params: dict[str, Any] = {"InstanceId": instance, "ImageName": name,
                              "ForcePoweroff": "true" if force_poweroff else "false"}
    if data_disk:
        params["DataDiskIds"] = data_disk
    if description:
        params["ImageDescription"] = description
    image_id = ep.request("CreateImage", params).ImageId
    image = follow_image(ep, image_id, "CREATING")
    if json_out:
        print_json(image)
    if image["ImageState"] != "NORMAL":
        die(f"CreateImage {image_id} failed: {image.get('ImageStateReason')}", EXIT_FAILED)
    if not json_out:
        out.print(image_id)
