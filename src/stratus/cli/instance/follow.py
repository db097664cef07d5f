"""Watching instances with a progress bar until an operation on them has settled."""

from __future__ import annotations

import time
from typing import Any

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

from stratus.cli.common import Endpoint, console

SETTLED = {"RUNNING", "STOPPED", "LAUNCH_FAILED"}


def describe(ep: Endpoint, instance_ids: list[str]) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    for i in range(0, len(instance_ids), 100):
        found += ep.call("DescribeInstances", {"InstanceIds": instance_ids[i:i + 100], "Limit": 100})["InstanceSet"]
    return found


def follow_instances(ep: Endpoint, instance_ids: list[str], what: str, done: set[str] | None = None) -> list[dict]:
    """Poll until every instance has settled (and its latest operation is no longer OPERATING)."""
    done = done or SETTLED
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), console=console) as progress:
        bar = progress.add_task(what, total=len(instance_ids))
        while True:
            found = describe(ep, instance_ids)
            settled = [i for i in found if i["InstanceState"] in done and i["LatestOperationState"] != "OPERATING"]
            gone = len(instance_ids) - len(found)
            progress.update(bar, completed=len(settled) + gone)
            if len(settled) + gone == len(instance_ids):
                return found
            time.sleep(0.3)
