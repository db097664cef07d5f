"""`stratus image list` and `stratus image show`."""

from __future__ import annotations

from typing import Any

import typer

from stratus.cli.common import (
    EXIT_REFUSED,
    Endpoint,
    EndpointOpt,
    JsonOpt,
    RegionOpt,
    die,
    print_json,
    sdk_errors,
    table,
)
from stratus.cli.image.follow import describe_image


@sdk_errors
def list_(
    image_type: str = typer.Option(None, "--type", metavar="TYPE", help="PUBLIC_IMAGE, PRIVATE_IMAGE or SHARED_IMAGE."),
    endpoint: str = EndpointOpt,
    region: str = RegionOpt,
    json_out: bool = JsonOpt,
) -> None:
    """List the images you can see."""
    params: dict[str, Any] = {}
    if image_type:
        params["Filters"] = [{"Name": "image-type", "Values": [image_type]}]
    images = Endpoint(endpoint, region).describe_all("DescribeImages", "ImageSet", params)
    if json_out:
        print_json(images)
        return
    table(["ImageId", "Name", "Type", "State", "Size (GiB)", "OS", "Created"],
          [[i["ImageId"], i["ImageName"], i["ImageType"], i["ImageState"], i["ImageSize"], i["OsName"],
            i["CreatedTime"]] for i in images])


@sdk_errors
def show(image_id: str, endpoint: str = EndpointOpt, region: str = RegionOpt, json_out: bool = JsonOpt) -> None:
    """Show one image as JSON, with its failure reason and lineage (--json is accepted for symmetry)."""
    ep = Endpoint(endpoint, region)
    image = describe_image(ep, image_id)
    if image is None:
        elsewhere = [r["Region"] for r in ep.call("DescribeRegions", {})["RegionSet"]
                     if r["Region"] != ep.region and describe_image(ep.in_region(r["Region"]), image_id)]
        hint = f"; it is in {', '.join(elsewhere)}: add --region {elsewhere[0]}" if elsewhere else ""
        die(f"InvalidImageId.NotFound: the image {image_id} does not exist in {ep.region}{hint}", EXIT_REFUSED)
    print_json(image)
