"""`stratus image copy`: an image into other regions (SyncImages), watched until each copy is done."""

from __future__ import annotations

from typing import Any

import typer

from stratus.cli.common import EXIT_FAILED, Endpoint, EndpointOpt, JsonOpt, RegionOpt, die, print_json, sdk_errors
from stratus.cli.image.follow import follow_copies
from stratus.cli.image.options import split_values
from stratus.domain.units import human_bytes

# Lines of tab-separated fields go out through typer.echo: rich would expand the tabs.


@sdk_errors
def copy(
    image_id: str,
    to: list[str] = typer.Option(..., "--to", help="Destination region; repeat it or separate with commas."),
    name: str = typer.Option(None, "--name", help="Name of the copies (default: the image's name)."),
    no_wait: bool = typer.Option(False, "--no-wait", help="Return once the copies have started."),
    endpoint: str = EndpointOpt,
    region: str = RegionOpt,
    json_out: bool = JsonOpt,
) -> None:
    """Copy an image into other regions (SyncImages), with progress. Only the chunks a region's store
    lacks are sent; prints each copy's region, id and state (and, for an operator account, the bytes that
    crossed: other accounts don't learn what the store already held)."""
    ep = Endpoint(endpoint, region)
    params: dict[str, Any] = {"ImageIds": [image_id], "DestinationRegions": split_values(to),
                              "ImageSetRequired": True}
    if name:
        params["ImageName"] = name
    copies = ep.call("SyncImages", params)["ImageSet"]
    if no_wait:
        if json_out:
            print_json(copies)
        else:
            for c in copies:
                typer.echo(f"{c['Region']}\t{c['ImageId']}")
        return
    results = follow_copies(ep, image_id, copies)
    if json_out:
        print_json(results)
    else:
        for r in results:
            crossed = "" if r["BytesCopied"] is None else \
                f"\t{human_bytes(r['BytesCopied'])} of {human_bytes(r['BytesTotal'] or 0)} crossed"
            typer.echo(f"{r['Region']}\t{r['ImageId']}\t{r['ImageState']}{crossed}")
    failed = [r for r in results if r["ImageState"] != "NORMAL"]
    if failed:
        die("; ".join(f"copy to {r['Region']} failed: {r['ImageStateReason']}" for r in failed), EXIT_FAILED)
