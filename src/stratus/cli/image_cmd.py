"""`stratus image ...`: client verbs that talk to a server through the official SDK.

Credentials come from TENCENTCLOUD_SECRET_ID / TENCENTCLOUD_SECRET_KEY, the server from
--endpoint or STRATUS_ENDPOINT. Image bytes go through the data API (`/uploads`, `/buckets`).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import httpx
import typer
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn

from stratus.cli.common import (
    EXIT_FAILED,
    EXIT_REFUSED,
    HINTS,
    Endpoint,
    EndpointOpt,
    JsonOpt,
    RegionOpt,
    console,
    die,
    out,
    print_json,
    sdk_errors,
    table,
)
from stratus.domain.units import human_bytes

app = typer.Typer(help="Import, list, show, export, delete, copy, share and publish images.", no_args_is_help=True)

BLOCK = 1024 * 1024
DEFAULT_BUCKET = "stratus-exports"


def _bytes_progress() -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                    TimeRemainingColumn(), console=console, transient=False)


def _data_error(resp: httpx.Response) -> str:
    try:
        err = resp.json()["Response"]["Error"]
        hint = HINTS.get(err["Code"])
        return f"{err['Code']}: {err['Message']}" + (f" ({hint})" if hint else "")
    except Exception:
        return f"HTTP {resp.status_code}: {resp.text[:200]}"


# --------------------------------------------------------------------------- uploads


def _state_file() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "stratus" / "uploads.json"


def _upload_key(ep: Endpoint, path: Path) -> str:
    st = path.stat()
    ident = f"{ep.url}|{ep.secret_id}|{path.resolve()}|{st.st_size}|{st.st_mtime_ns}"
    return hashlib.sha256(ident.encode()).hexdigest()


def _load_state() -> dict[str, str]:
    try:
        return json.loads(_state_file().read_text())
    except (OSError, ValueError):
        return {}


def _save_state(state: dict[str, str]) -> None:
    f = _state_file()
    f.parent.mkdir(parents=True, exist_ok=True)
    tmp = f.with_suffix(".tmp")
    tmp.write_text(json.dumps(state))
    tmp.replace(f)


def upload_file(ep: Endpoint, path: Path, declared_format: str | None = None) -> str:
    """Upload (or resume uploading) a file; returns its upload id."""
    size = path.stat().st_size
    key = _upload_key(ep, path)
    state = _load_state()
    client = httpx.Client(base_url=ep.url, timeout=httpx.Timeout(60.0, connect=10.0))
    upload_id = state.get(key)
    received = 0
    if upload_id:
        r = client.get(f"/uploads/{upload_id}", headers=ep.signed_headers("GET", f"/uploads/{upload_id}"))
        if r.status_code == 200:
            info = r.json()["Response"]
            received = info["Received"]
            if info["State"] == "COMPLETE":
                return upload_id
            console.print(f"resuming upload {upload_id} at {received} of {size} bytes")
        else:
            upload_id = None
    if not upload_id:
        body = json.dumps({"Size": size, "Name": path.name, **({"Format": declared_format} if declared_format else {})})
        headers = ep.signed_headers("POST", "/uploads", body=body.encode())
        r = client.post("/uploads", content=body.encode(), headers=headers)
        if r.status_code != 200:
            die(f"upload refused: {_data_error(r)}", EXIT_REFUSED)
        upload_id = r.json()["Response"]["UploadId"]
        state[key] = upload_id
        _save_state(state)
    with _bytes_progress() as progress, path.open("rb") as f:
        bar = progress.add_task(f"upload {path.name}", total=size, completed=received)
        attempts = 0
        while received < size:
            start = received

            def body_iter(start: int = start):
                f.seek(start)
                while True:
                    block = f.read(BLOCK)
                    if not block:
                        return
                    progress.advance(bar, len(block))
                    yield block

            query = f"offset={start}"
            headers = ep.signed_headers("PUT", f"/uploads/{upload_id}", query=query, body=None,
                                        content_type="application/octet-stream")
            headers["Content-Length"] = str(size - start)
            try:
                r = client.put(f"/uploads/{upload_id}?{query}", content=body_iter(), headers=headers)
            except httpx.TransportError as exc:
                attempts += 1
                if attempts > 5:
                    die(f"upload interrupted ({exc}); run the same command again to resume", EXIT_FAILED)
                time.sleep(min(2**attempts, 10))
                r = client.get(f"/uploads/{upload_id}", headers=ep.signed_headers("GET", f"/uploads/{upload_id}"))
                received = r.json()["Response"]["Received"] if r.status_code == 200 else start
                progress.update(bar, completed=received)
                continue
            if r.status_code == 409 and "Received" in r.json().get("Response", {}):
                # Our earlier request is still being read, or landed: resume where the server says.
                attempts += 1
                if attempts > 5:
                    die(f"upload refused: {_data_error(r)}", EXIT_REFUSED)
                time.sleep(min(2**attempts, 10))
                received = r.json()["Response"]["Received"]
                progress.update(bar, completed=received)
                continue
            if r.status_code != 200:
                die(f"upload refused: {_data_error(r)}", EXIT_REFUSED)
            received = r.json()["Response"]["Received"]
            progress.update(bar, completed=received)
    state.pop(key, None)
    _save_state(state)
    return upload_id


# --------------------------------------------------------------------------- following work


def describe_image(ep: Endpoint, image_id: str) -> dict[str, Any] | None:
    resp = ep.call("DescribeImages", {"ImageIds": [image_id]})
    return resp["ImageSet"][0] if resp["ImageSet"] else None


def follow_image(ep: Endpoint, image_id: str, busy: str) -> dict[str, Any]:
    """Poll an image with a progress bar until it leaves its busy state."""
    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.percentage:>5.1f}%"),
                  console=console) as progress:
        bar = progress.add_task(f"{busy.lower()} {image_id}", total=100)
        while True:
            image = describe_image(ep, image_id)
            if image is None:
                die(f"image {image_id} disappeared", EXIT_FAILED)
            progress.update(bar, completed=image.get("ImageProgress") or image.get("SyncPercent") or 0)
            if image["ImageState"] != busy:
                if image["ImageState"] == "NORMAL":
                    progress.update(bar, completed=100)
                return image
            time.sleep(0.3)


def _chunked_or_whole_file(chunked: str, whole_file: str) -> Any:
    return typer.Option(True, "--chunked/--whole-file",
                        help=f"Chunked (the default): {chunked}. --whole-file: {whole_file}; chosen for you for a "
                        "qcow2/vmdk/vhd when this machine has no qemu-img.")


@app.command("upload")
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


@app.command("import")
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
    chunked: bool = _chunked_or_whole_file(
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
    image_id = ep.request("ImportImage", params).ImageId
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


@app.command("list")
@sdk_errors
def list_(
    image_type: str = typer.Option(None, "--type", metavar="TYPE", help="PUBLIC_IMAGE, PRIVATE_IMAGE or SHARED_IMAGE."),
    endpoint: str = EndpointOpt,
    region: str = RegionOpt,
    json_out: bool = JsonOpt,
) -> None:
    """List the images you can see."""
    ep = Endpoint(endpoint, region)
    params: dict[str, Any] = {"Limit": 100}
    if image_type:
        params["Filters"] = [{"Name": "image-type", "Values": [image_type]}]
    images: list[dict[str, Any]] = []
    while True:
        resp = ep.call("DescribeImages", {**params, "Offset": len(images)})
        images += resp["ImageSet"]
        if len(images) >= resp["TotalCount"] or not resp["ImageSet"]:
            break
    if json_out:
        print_json(images)
        return
    table(["ImageId", "Name", "Type", "State", "Size (GiB)", "OS", "Created"],
          [[i["ImageId"], i["ImageName"], i["ImageType"], i["ImageState"], i["ImageSize"], i["OsName"],
            i["CreatedTime"]] for i in images])


@app.command("show")
@sdk_errors
def show(image_id: str, endpoint: str = EndpointOpt, region: str = RegionOpt, json_out: bool = JsonOpt) -> None:
    """Show one image as JSON, with its failure reason and lineage (--json is accepted for symmetry)."""
    ep = Endpoint(endpoint, region)
    image = describe_image(ep, image_id)
    if image is None:
        elsewhere = [r["Region"] for r in ep.call("DescribeRegions", {})["RegionSet"]
                     if r["Region"] != ep.region and describe_image(ep.in_region(r["Region"]), image_id)]
        hint = f"; it is in {', '.join(elsewhere)}: add --region {elsewhere[0]}" if elsewhere else ""
        die(f"InvalidImageId.NotFound: the image {image_id} does not exist in {ep.region}{hint}", EXIT_REFUSED)
    print_json(image)


@app.command("delete")
@sdk_errors
def delete(image_ids: list[str], endpoint: str = EndpointOpt, region: str = RegionOpt) -> None:
    """Delete custom images."""
    Endpoint(endpoint, region).request("DeleteImages", {"ImageIds": image_ids})
    out.print(f"deleted {' '.join(image_ids)}")


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


@app.command("publish")
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
            typer.echo(f"{p['Region']}\t{p['ImageId']}\t{what}")
    if any(p["ImageState"] != "NORMAL" for p in published):
        die("some copies failed; the regions marked FAILED have no public copy", EXIT_FAILED)


# --------------------------------------------------------------------------- copies between regions


def follow_copies(ep: Endpoint, image_id: str, copies: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Show a progress bar (SyncPercent) per copy until each leaves SYNCING; returns, per copy, its
    region, id, final state and what crossed between the stores (the sync task's result)."""
    results: list[dict[str, Any]] = []
    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.percentage:>5.1f}%"),
                  console=console) as progress:
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


# Lines of tab-separated fields go out through typer.echo: rich would expand the tabs.


def _split(values: list[str]) -> list[str]:
    return [v.strip() for item in values for v in item.split(",") if v.strip()]


@app.command("copy")
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
    params: dict[str, Any] = {"ImageIds": [image_id], "DestinationRegions": _split(to), "ImageSetRequired": True}
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


# --------------------------------------------------------------------------- sharing


AccountOpt = typer.Option(..., "--account", help="Account id; repeat it or separate with commas.")


@app.command("share")
@sdk_errors
def share(image_id: str, account: list[str] = AccountOpt, endpoint: str = EndpointOpt,
          region: str = RegionOpt) -> None:
    """Share a custom image with other accounts (in its region): they may launch instances from it."""
    accounts = _split(account)
    Endpoint(endpoint, region).request("ModifyImageSharePermission",
                                       {"ImageId": image_id, "AccountIds": accounts, "Permission": "SHARE"})
    out.print(f"shared {image_id} with {', '.join(accounts)}")


@app.command("unshare")
@sdk_errors
def unshare(image_id: str, account: list[str] = AccountOpt, endpoint: str = EndpointOpt,
            region: str = RegionOpt) -> None:
    """Stop sharing an image with accounts; their running instances are not affected."""
    accounts = _split(account)
    Endpoint(endpoint, region).request("ModifyImageSharePermission",
                                       {"ImageId": image_id, "AccountIds": accounts, "Permission": "CANCEL"})
    out.print(f"unshared {image_id} from {', '.join(accounts)}")


@app.command("shares")
@sdk_errors
def shares(image_id: str, endpoint: str = EndpointOpt, region: str = RegionOpt, json_out: bool = JsonOpt) -> None:
    """List the accounts an image of yours is shared with."""
    resp = Endpoint(endpoint, region).call("DescribeImageSharePermission", {"ImageId": image_id})
    rows = resp["SharePermissionSet"]
    if json_out:
        print_json(rows)
        return
    table(["AccountId", "Shared since"], [[r["AccountId"], r["CreatedTime"]] for r in rows])


@app.command("export")
@sdk_errors
def export(
    image_id: str,
    fmt: str = typer.Option("raw", "--format", metavar="FORMAT", help="raw, qcow2, vmdk or vhd."),
    output: Path = typer.Option(..., "-o", "--output"),
    bucket: str = typer.Option(DEFAULT_BUCKET, "--bucket", help="The bucket a --whole-file export goes through."),
    chunked: bool = _chunked_or_whole_file(
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
    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.percentage:>5.1f}%"),
                  console=console) as progress:
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


def download_sparse(ep: Endpoint, path: str, dest: Path, label: str) -> None:
    """Fetch only the data runs of an exported file (Range requests) into a sparse file: a raw disk of
    4 GiB holding 1 GiB of data costs 1 GiB on the wire and on disk, not 4."""
    with httpx.Client(base_url=ep.url, timeout=httpx.Timeout(60.0, connect=10.0)) as client:
        r = client.get(f"{path}?extents", headers=ep.signed_headers("GET", path, query="extents"))
        if r.status_code != 200:
            die(f"download refused: {_data_error(r)}", EXIT_REFUSED)
        info = r.json()["Response"]
        extents = info["Extents"]
        with _bytes_progress() as progress, dest.open("wb") as f:
            f.truncate(info["Size"])
            bar = progress.add_task(f"download {label}", total=sum(n for _, n in extents))
            for start, length in extents:
                headers = ep.signed_headers("GET", path)
                headers["Range"] = f"bytes={start}-{start + length - 1}"
                with client.stream("GET", path, headers=headers) as resp:
                    if resp.status_code != 206:
                        resp.read()
                        die(f"download refused: {_data_error(resp)}", EXIT_REFUSED)
                    offset = start
                    for block in resp.iter_bytes(BLOCK):
                        os.pwrite(f.fileno(), block, offset)
                        offset += len(block)
                        progress.advance(bar, len(block))
                    if offset != start + length:
                        die(f"download of {label} ended early at byte {offset}; run the command again", EXIT_FAILED)
