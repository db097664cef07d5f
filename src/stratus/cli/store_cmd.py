"""`stratus fsck` and `stratus gc`: store maintenance on the server machine."""

from __future__ import annotations

from typing import Any

import typer

from stratus.cli.common import EXIT_DAMAGED, ConfigOpt, DataDirOpt, JsonOpt, admin_services, out, print_json

RegionsOpt = typer.Option(None, "--region", help="Only this region (repeatable); default all.")


def _regions(svc, only: list[str] | None) -> list[str]:
    names = [r.name for r in svc.settings.regions]
    return [n for n in names if not only or n in only]


def fsck(
    region: list[str] = RegionsOpt,
    data_dir: str = DataDirOpt,
    config: str = ConfigOpt,
    json_out: bool = JsonOpt,
) -> None:
    """Re-hash every chunk of the stores; name the images a damaged or missing chunk belongs to."""
    from stratus.service.maintenance import fsck_region

    svc = admin_services(data_dir, config)
    damaged = False
    results = []
    for name in _regions(svc, region):
        summary = fsck_region(svc, name)
        rep = summary.report
        damaged |= bool(rep.damaged or rep.missing)
        results.append({
            "Region": name, "Checked": rep.checked, "Bytes": rep.bytes,
            "Damaged": {d: summary.owners.get(d, []) for d in rep.damaged},
            "Missing": {d: summary.owners.get(d, []) for d in rep.missing},
        })
        if not json_out:
            out.print(f"{name}: {rep.checked} chunks, {rep.bytes} bytes checked")
            for d in rep.damaged:
                out.print(f"  DAMAGED {d}: used by {', '.join(summary.owners.get(d, [])) or 'no image'}")
            for d in rep.missing:
                out.print(f"  MISSING {d}: used by {', '.join(summary.owners.get(d, [])) or 'no image'}")
    if json_out:
        print_json(results)
    if damaged:
        if not json_out:
            out.print("damage found: re-import or re-copy the images named above, then run `stratus gc`")
        raise typer.Exit(EXIT_DAMAGED)


def gc(
    region: list[str] = RegionsOpt,
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the plan, delete nothing."),
    grace: float = typer.Option(None, "--grace", help="Keep chunks younger than this many seconds "
                                "(default: limits.gc_grace_seconds)."),
    data_dir: str = DataDirOpt,
    config: str = ConfigOpt,
    json_out: bool = JsonOpt,
) -> None:
    """Mark and sweep: delete chunks no image references, older than the grace period."""
    from stratus.service.maintenance import gc_region

    svc = admin_services(data_dir, config)
    grace_s = svc.settings.limits.gc_grace_seconds if grace is None else grace
    results = []
    for name in _regions(svc, region):
        done = gc_region(svc, name, grace_s, dry_run=dry_run)
        entry: dict[str, Any] = {"Region": name, "Plan": done.lines}
        if not dry_run:
            entry["Deleted"] = done.deleted
            entry["ReclaimedBytes"] = done.deleted_bytes
        results.append(entry)
        if not json_out:
            out.print(f"{name}:")
            for line in done.lines:
                out.print(f"  {line}")
            if not dry_run:
                out.print(f"  deleted {done.deleted} chunks, {done.deleted_bytes} bytes")
    if json_out:
        print_json(results)
