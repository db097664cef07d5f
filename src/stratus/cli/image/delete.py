"""`stratus image delete`."""

from __future__ import annotations

from stratus.cli.common import Endpoint, EndpointOpt, RegionOpt, out, sdk_errors


@sdk_errors
def delete(image_ids: list[str], endpoint: str = EndpointOpt, region: str = RegionOpt) -> None:
    """Delete custom images."""
    Endpoint(endpoint, region).request("DeleteImages", {"ImageIds": image_ids})
    out.print(f"deleted {' '.join(image_ids)}")
