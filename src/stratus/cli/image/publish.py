"""`stratus image publish` (operators): one of their images becomes a public image, in one region or all."""

from __future__ import annotations

from typing import Any

import typer

from stratus.cli.common import EXIT_FAILED, Endpoint, EndpointOpt, JsonOpt, RegionOpt, die, print_json, sdk_errors
from stratus.cli.image.follow import follow_copies


def publish_image(ep: Endpoint, image_id: str, *, all_regions: bool) -> list[dict[str, Any]]:
    """PublishImage, then (all_regions) SyncImages into every other region and publish each copy once it is
    NORMAL. Returns, per region, the image id and its state."""
    ep.call("PublishImage", {"ImageId": image_id})
    published = [{"Region": ep.region, "ImageId": image_id, "ImageState": "NORMAL"}]
    if all_regions:
        others = [r["Region"] for r in ep.call("DescribeRegions", {})["RegionSet"] if r["Region"] != ep.region]
        if others:
            copies = ep.call("SyncImages", {"ImageIds": [image_id], "DestinationRegions": others,
                                            "ImageSetRequired": True})["ImageSet"]
            for done in follow_copies(ep, image_id, copies):
                if done["ImageState"] == "NORMAL":
                    ep.in_region(done["Region"]).call("PublishImage", {"ImageId": done["ImageId"]})
                published.append(done)
    return published


@sdk_errors
def publish(
    image_id: str,
    all_regions: bool = typer.Option(False, "--all-regions",
                                     help="Also copy it into every other region and publish each copy."),
    endpoint: str = EndpointOpt,
    region: str = RegionOpt,
    json_out: bool = JsonOpt,
) -> None:
    """Operators: publish one of your images as a public image of its region (--all-regions: copy it into
    every region and publish each copy)."""
    published = publish_image(Endpoint(endpoint, region), image_id, all_regions=all_regions)
    if json_out:
        print_json(published)
    else:
        for p in published:
            what = "public" if p["ImageState"] == "NORMAL" else f"FAILED: {p.get('ImageStateReason')}"
            typer.echo(f"{p['Region']}\t{p['ImageId']}\t{what}")  # typer.echo: rich would expand the tabs
    if any(p["ImageState"] != "NORMAL" for p in published):
        die("some copies failed; the regions marked FAILED have no public copy", EXIT_FAILED)
