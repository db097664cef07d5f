"""`stratus image import`: a local disk file becomes a custom image, chunked (the default) or as a whole file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from stratus.cli.common import (
    EXIT_FAILED,
    Endpoint,
    EndpointOpt,
    JsonOpt,
    RegionOpt,
    console,
    die,
    out,
    print_json,
    sdk_errors,
)
from stratus.cli.image.follow import follow_image
from stratus.cli.image.options import chunked_or_whole_file
from stratus.cli.wholefile import upload_file
from stratus.domain.units import human_bytes


@sdk_errors
def import_(
    file: Path = typer.Argument(..., exists=True, dir_okay=False, readable=True),
    name: str = typer.Option(..., "--name"),
    os_type: str = typer.Option("Other Linux", "--os-type"),
    os_version: str = typer.Option("-", "--os-version"),
    architecture: str = typer.Option("x86_64", "--architecture"),
    description: str = typer.Option("", "--description"),
    family: str = typer.Option(None, "--family"),
    fmt: str = typer.Option(None, "--format", metavar="FORMAT",
                            help="Declared format (RAW, QCOW2, VMDK, VHD); refused if it is not."),
    no_wait: bool = typer.Option(False, "--no-wait", help="Return once the import has started."),
    chunked: bool = chunked_or_whole_file(
        "read the disk here (qcow2/vmdk/vhd through this machine's qemu-img), send only the chunks the server "
        "lacks, resumably", "upload the file as it is and let the server check and convert it (as tccli/SDK "
        "users and the console do)"),
    endpoint: str = EndpointOpt,
    region: str = RegionOpt,
    json_out: bool = JsonOpt,
) -> None:
    """Import FILE as a custom image: by default send only the chunks of its disk the server lacks (resumable);
    with --whole-file upload the whole file (resumable) and let the server convert it."""
    ep = Endpoint(endpoint, region)
    if chunked:
        from stratus.cli.chunked import can_convert_here, client_format, import_chunked

        chunked = can_convert_here(client_format(file, fmt), file.name + " is a {fmt} image", "upload the whole "
                                   "file for the server to convert")
    if chunked:
        upload_id, sent = import_chunked(ep, file, fmt)
        console.print(f"sent {human_bytes(sent.sent_bytes)} in {sent.sent_chunks} of {sent.chunks} data chunks "
                      f"({human_bytes(sent.data_bytes)} of data); chunk bytes sent: {sent.sent_bytes}; "
                      + ", ".join(f"{k} {v:.2f} s" for k, v in sent.seconds.items()), highlight=False)
    else:
        upload_id = upload_file(ep, file, fmt.upper() if fmt else None)
    params: dict[str, Any] = {"ImageUrl": f"upload://{upload_id}", "ImageName": name, "OsType": os_type,
                              "OsVersion": os_version, "Architecture": architecture}
    if description:
        params["ImageDescription"] = description
    if family:
        params["ImageFamily"] = family
    image_id = ep.call("ImportImage", params)["ImageId"]
    console.print(f"importing {image_id}")
    if no_wait:
        out.print(image_id)
        return
    image = follow_image(ep, image_id, "IMPORTING")
    if json_out:
        print_json(image)
    if image["ImageState"] != "NORMAL":
        die(f"import of {image_id} failed: {image.get('ImageStateReason') or image['ImageState']}", EXIT_FAILED)
    if image.get("ImageStateReason"):  # NORMAL with a warning (e.g. a raw disk without a boot sector)
        console.print(image["ImageStateReason"], highlight=False, markup=False)
    if not json_out:
        out.print(image_id)
