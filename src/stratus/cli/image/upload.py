"""`stratus image upload`: the whole-file upload alone, for ImportImage through tccli or the SDK."""

from __future__ import annotations

from pathlib import Path

import typer

from stratus.cli.common import Endpoint, EndpointOpt, RegionOpt, out, sdk_errors
from stratus.cli.wholefile import upload_file


@sdk_errors
def upload(
    file: Path = typer.Argument(..., exists=True, dir_okay=False, readable=True),
    fmt: str = typer.Option(None, "--format", metavar="FORMAT",
                            help="Declared format (RAW, QCOW2, VMDK, VHD); checked on import."),
    endpoint: str = EndpointOpt,
    region: str = RegionOpt,
) -> None:
    """Upload a file (resumable); prints the ImageUrl to give ImportImage (e.g. through tccli)."""
    ep = Endpoint(endpoint, region)
    upload_id = upload_file(ep, file, fmt.upper() if fmt else None)
    out.print(f"upload://{upload_id}")
