"""`stratus instance list` and `stratus instance show`."""

from __future__ import annotations

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
from stratus.cli.instance.follow import describe


@sdk_errors
def list_(endpoint: str = EndpointOpt, region: str = RegionOpt, json_out: bool = JsonOpt) -> None:
    """List your instances in the region."""
    found = Endpoint(endpoint, region).describe_all("DescribeInstances", "InstanceSet")
    if json_out:
        print_json(found)
        return
    table(["InstanceId", "Name", "State", "Type", "Zone", "ImageId", "Created"],
          [[i["InstanceId"], i["InstanceName"], i["InstanceState"], i["InstanceType"], i["Placement"]["Zone"],
            i["ImageId"], i["CreatedTime"]] for i in found])


@sdk_errors
def show(instance_id: str, endpoint: str = EndpointOpt, region: str = RegionOpt, json_out: bool = JsonOpt) -> None:
    """One instance as JSON (--json is accepted for symmetry with the list verbs)."""
    found = describe(Endpoint(endpoint, region), [instance_id])
    if not found:
        die(f"InvalidInstanceId.NotFound: the instance {instance_id} does not exist in {region}", EXIT_REFUSED)
    print_json(found[0])
