"""Watching the work a verb started (an import, a capture, copies between regions) with progress bars, until
it leaves its busy state."""

from __future__ import annotations

import time
from typing import Any

from rich.progress import BarColumn, Progress, TextColumn

from stratus.cli.common import EXIT_FAILED, Endpoint, console, die


def percent_progress() -> Progress:
    """Bars on stderr that count to 100 (ImageProgress, SyncPercent, a task's Progress)."""
    return Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.percentage:>5.1f}%"),
                    console=console)


def describe_image(ep: Endpoint, image_id: str) -> dict[str, Any] | None:
    resp = ep.call("DescribeImages", {"ImageIds": [image_id]})
    return resp["ImageSet"][0] if resp["ImageSet"] else None


def follow_image(ep: Endpoint, image_id: str, busy: str) -> dict[str, Any]:
    """Poll an image with a progress bar until it leaves its busy state."""
    with percent_progress() as progress:
        bar = progress.add_task(f"{busy.lower()} {image_id}", total=100)
        delay = 0.05  # a small import ends in a fraction of a second: look soon, then back off to 0.3 s
        while True:
            image = describe_image(ep, image_id)
            if image is None:
                die(f"image {image_id} disappeared", EXIT_FAILED)
            progress.update(bar, completed=image.get("ImageProgress") or image.get("SyncPercent") or 0)
            if image["ImageState"] != busy:
                if image["ImageState"] == "NORMAL":
                    progress.update(bar, completed=100)
                return image
            time.sleep(delay)
            delay = min(0.3, delay * 1.5)


def follow_copies(ep: Endpoint, image_id: str, copies: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Show a progress bar (SyncPercent) per copy until each leaves SYNCING; returns, per copy, its
    region, id, final state and what crossed between the stores (the sync task's result)."""
    results: list[dict[str, Any]] = []
    with percent_progress() as progress:
        bars = {c["ImageId"]: progress.add_task(f"copy {image_id} → {c['Region']} ({c['ImageId']})", total=100)
                for c in copies}
        waiting = {c["ImageId"]: c for c in copies}
        while waiting:
            for copy_id, c in list(waiting.items()):
                image = describe_image(ep.in_region(c["Region"]), copy_id)
                if image is None:
                    die(f"image {copy_id} disappeared from {c['Region']}", EXIT_FAILED)
                progress.update(bars[copy_id], completed=image.get("SyncPercent") or 0)
                if image["ImageState"] == "SYNCING":
                    continue
                del waiting[copy_id]
                result: dict[str, Any] = {}
                if c.get("TaskId") is not None:
                    tasks = ep.call("DescribeTasks", {"TaskIds": [c["TaskId"]]})["TaskSet"]
                    result = (tasks[0].get("Result") or {}) if tasks else {}
                results.append({"Region": c["Region"], "ImageId": copy_id, "ImageState": image["ImageState"],
                                "ImageStateReason": image.get("ImageStateReason"),
                                "BytesCopied": result.get("BytesCopied"), "BytesTotal": result.get("BytesTotal")})
            if waiting:
                time.sleep(0.3)
    return results
