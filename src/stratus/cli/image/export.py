"""`stratus image export`: an image's system disk to a local file, chunked (the default) or through
ExportImages into a bucket and a sparse download."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import typer

from stratus.cli.common import EXIT_FAILED, Endpoint, EndpointOpt, RegionOpt, console, die, out, sdk_errors
from stratus.cli.image.follow import percent_progress
from stratus.cli.image.options import chunked_or_whole_file
from stratus.cli.wholefile import download_sparse
from stratus.domain.units import human_bytes

DEFAULT_BUCKET = "stratus-exports"


@sdk_errors
def export(
    image_id: str,
    fmt: str = typer.Option("raw", "--format", metavar="FORMAT", help="raw, qcow2, vmdk or vhd."),
    output: Path = typer.Option(..., "-o", "--output"),
    bucket: str = typer.Option(DEFAULT_BUCKET, "--bucket", help="The bucket a --whole-file export goes through."),
    chunked: bool = chunked_or_whole_file(
        "fetch only the image's non-zero chunks straight from the store, verified and resumable; qcow2/vmdk/vhd "
        "are converted here by qemu-img", "the server converts (ExportImages into --bucket) and the file is "
        "downloaded"),
    base: Path = typer.Option(None, "--base", exists=True, dir_okay=False, readable=True,
                              help="A previous raw export of this image or an ancestor: only chunks that differ "
                              "from it are fetched (chunked only)."),
    endpoint: str = EndpointOpt,
    region: str = RegionOpt,
) -> None:
    """Export an image's system disk to a file: by default fetch only its chunks (resumable, --base for just the
    difference); with --whole-file export through the server into a bucket and download."""
    ep = Endpoint(endpoint, region)
    fmt = fmt.lower()
    if fmt not in ("raw", "qcow2", "vmdk", "vhd"):
        die("--format must be raw, qcow2, vmdk or vhd")
    if base is not None and not chunked:
        die("--base works only on the chunked path: drop --whole-file")
    if chunked:
        from stratus.cli.chunked import QEMU_IMG_INSTALL, can_convert_here, export_chunked

        if base is not None and fmt != "raw" and shutil.which("qemu-img") is None:
            die(f"--base with a {fmt} output needs qemu-img here ({QEMU_IMG_INSTALL}), or export --format raw")
        chunked = can_convert_here(fmt, "{fmt} output was asked for", "export through the server (--whole-file)")
    if chunked:
        got = export_chunked(ep, image_id, output, fmt, base)
        console.print(f"fetched {human_bytes(got.sent_bytes)} in {got.sent_chunks} of {got.chunks} data chunks; "
                      f"chunk bytes fetched: {got.sent_bytes}; "
                      + ", ".join(f"{k} {v:.2f} s" for k, v in got.seconds.items()), highlight=False)
        out.print(str(output))
        return
    resp = ep.request("ExportImages", {"BucketName": bucket, "ImageIds": [image_id], "ExportFormat": fmt.upper(),
                                       "OnlyExportRootDisk": True})
    task_id, key = resp.TaskId, resp.CosPaths[0].lstrip("/")
    with percent_progress() as progress:
        bar = progress.add_task(f"export {image_id}", total=100)
        while True:
            task = ep.call("DescribeTasks", {"TaskIds": [task_id]})["TaskSet"][0]
            progress.update(bar, completed=task["Progress"])
            if task["TaskState"] in ("SUCCESS", "FAILED"):
                break
            time.sleep(0.3)
    if task["TaskState"] != "SUCCESS":
        die(f"export failed: {task['ErrorMessage']}", EXIT_FAILED)
    path = f"/buckets/{bucket}/{key}"
    tmp = output.with_name(output.name + ".part")
    download_sparse(ep, path, tmp, output.name)
    tmp.replace(output)
    out.print(str(output))
