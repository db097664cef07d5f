"""`stratus image share`, `unshare` and `shares`: which other accounts may launch instances from an image."""

from __future__ import annotations

import typer

from stratus.cli.common import Endpoint, EndpointOpt, JsonOpt, RegionOpt, out, print_json, sdk_errors, table
from stratus.cli.image.options import split_values

AccountOpt = typer.Option(..., "--account", help="Account id; repeat it or separate with commas.")


def _set_permission(ep: Endpoint, image_id: str, account: list[str], permission: str) -> list[str]:
    """ModifyImageSharePermission (SHARE or CANCEL) for the accounts named; returns them."""
    accounts = split_values(account)
    ep.request("ModifyImageSharePermission", {"ImageId": image_id, "AccountIds": accounts, "Permission": permission})
    return accounts


@sdk_errors
def share(image_id: str, account: list[str] = AccountOpt, endpoint: str = EndpointOpt,
          region: str = RegionOpt) -> None:
    """Share a custom image with other accounts (in its region): they may launch instances from it."""
    accounts = _set_permission(Endpoint(endpoint, region), image_id, account, "SHARE")
    out.print(f"shared {image_id} with {', '.join(accounts)}")


@sdk_errors
def unshare(image_id: str, account: list[str] = AccountOpt, endpoint: str = EndpointOpt,
            region: str = RegionOpt) -> None:
    """Stop sharing an image with accounts; their running instances are not affected."""
    accounts = _set_permission(Endpoint(endpoint, region), image_id, account, "CANCEL")
    out.print(f"unshared {image_id} from {', '.join(accounts)}")


@sdk_errors
def shares(image_id: str, endpoint: str = EndpointOpt, region: str = RegionOpt, json_out: bool = JsonOpt) -> None:
    """List the accounts an image of yours is shared with."""
    resp = Endpoint(endpoint, region).call("DescribeImageSharePermission", {"ImageId": image_id})
    rows = resp["SharePermissionSet"]
    if json_out:
        print_json(rows)
        return
    table(["AccountId", "Shared since"], [[r["AccountId"], r["CreatedTime"]] for r in rows])
