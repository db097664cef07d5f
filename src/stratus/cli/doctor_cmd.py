"""`stratus doctor`: check an installation and say what to fix, one line per check.

Checks, in order: the config loads; the catalog answers and its schema is at the newest migration; the
data directory, its tmp/ and uploads/, and each region's store and host directory exist, are writable (a
probe file is created and removed: as root permission bits say nothing) and have free space; a random sample
of each store's chunks re-hashes to their names; qemu-img and prlimit are on PATH and qemu-img answers its
version. Each check is ok, warn or fail; the exit code is 0 only when every check is ok. Nothing is created
or changed (unlike `stratus serve`, which makes missing directories and upgrades the catalog).
"""

from __future__ import annotations

import os
import random
import re
import shutil
import subprocess
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import typer
from rich.markup import escape

from stratus.cli.common import ConfigOpt, DataDirOpt, JsonOpt, out, print_json
from stratus.domain.units import human_bytes

if TYPE_CHECKING:
    from stratus.config import Region, Settings

Status = Literal["ok", "warn", "fail"]

GiB = 1024**3
# Free space: below these a check fails (imports and exports will fail for lack of room) or warns.
FAIL_FREE_BYTES, FAIL_FREE_FRACTION = 1 * GiB, 0.02
WARN_FREE_BYTES, WARN_FREE_FRACTION = 10 * GiB, 0.10
SAMPLE_CHUNKS = 32
MIN_QEMU_IMG = (5, 2)  # the gate relies on `qemu-img map` JSON and `json:{...,"backing":null}` (docs/design.md)


@dataclass
class Check:
    check: str
    status: Status
    detail: str
    fix: str = ""


def check_config(data_dir: str | None, config: str | None) -> tuple[Check, Settings | None]:
    from stratus.config import load_settings

    source = config or os.environ.get("STRATUS_CONFIG") or "defaults (no config file)"
    try:
        cfg = load_settings(data_dir=data_dir, config_file=config)
    except Exception as exc:  # whatever the loader refuses, say it and stop: nothing else can be checked
        return Check("config", "fail", f"{source}: {exc}", "correct the config file (docs/config.md)"), None
    return Check("config", "ok", f"{source}: data dir {cfg.data_dir}, {len(cfg.regions)} regions"), cfg


def check_catalog(cfg: Settings) -> Check:
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory

    from stratus.catalog.db import open_database
    from stratus.catalog.migrate import alembic_config

    url = cfg.database_url
    shown = url.split("@")[-1]
    if url.startswith("sqlite"):
        path = Path(url.split("sqlite:///", 1)[-1])
        if not path.exists():
            return Check("catalog", "fail", f"no catalog at {path}",
                         "run `stratus serve` once (it creates and migrates the catalog), or fix database_url")
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    try:
        db = open_database(url)
    except Exception as exc:
        return Check("catalog", "fail", f"{shown}: {exc}", "fix database_url / STRATUS_DATABASE_URL")
    try:
        with db.read_engine.connect() as conn:
            current = MigrationContext.configure(conn).get_current_revision()
    except Exception as exc:
        return Check("catalog", "fail", f"{shown}: cannot connect: {str(exc).splitlines()[0]}",
                     "start the database server, or fix database_url / STRATUS_DATABASE_URL")
    finally:
        db.dispose()
    if current != head:
        return Check("catalog", "fail", f"{shown}: schema at {current or 'nothing'}, the newest is {head}",
                     "run `stratus serve` (it upgrades the catalog on start) with this version of Stratus")
    return Check("catalog", "ok", f"{shown}: schema at {head} (newest)")


def check_dir(name: str, path: Path, what: str) -> list[Check]:
    """Exists and is a writable directory."""
    if not path.is_dir():
        state = "is not a directory" if path.exists() else "does not exist"
        return [Check(name, "fail", f"{path} {state}",
                      f"create it (`stratus serve` does), or point {what} at the right place")]
    probe = path / f".stratus-doctor-{uuid.uuid4().hex[:8]}"
    try:
        probe.write_bytes(b"probe")
    except OSError as exc:
        return [Check(name, "fail", f"{path} is not writable: {exc.strerror}",
                      "give the user running Stratus write access (ownership, mode, read-only mount, chattr)")]
    finally:
        probe.unlink(missing_ok=True)
    return [Check(name, "ok", f"{path} writable")]


def check_free(name: str, path: Path) -> Check:
    usage = shutil.disk_usage(path)
    free, frac = usage.free, usage.free / usage.total if usage.total else 0.0
    detail = f"{human_bytes(free)} free of {human_bytes(usage.total)} ({frac:.0%}) at {path}"
    fix = "free space or move this directory to a larger filesystem (imports, exports and copies need room)"
    if free < FAIL_FREE_BYTES or frac < FAIL_FREE_FRACTION:
        return Check(name, "fail", detail, fix)
    if free < WARN_FREE_BYTES or frac < WARN_FREE_FRACTION:
        return Check(name, "warn", detail, fix)
    return Check(name, "ok", detail)


def sample_chunks(store_path: Path, n: int, rnd: random.Random) -> list[str]:
    """Up to n chunk digests from random fan-out directories (no full walk)."""
    from stratus.domain.manifest import is_digest

    root = store_path / "chunks"
    found: list[str] = []
    try:
        tops = sorted(os.listdir(root))
    except OSError:
        return found
    rnd.shuffle(tops)
    for top in tops:
        try:
            subs = sorted(os.listdir(root / top))
        except OSError:
            continue
        rnd.shuffle(subs)
        for sub in subs:
            try:
                names = sorted(os.listdir(root / top / sub))
            except OSError:
                continue
            found += [name for name in names if is_digest(name)][: n - len(found)]
            if len(found) >= n:
                return found
    return found


def check_chunks(region: Region, cfg: Settings) -> Check:
    """Read back a random sample of the region's chunks (a directory store) or its first ones (S3)."""
    from itertools import islice

    from stratus.service.context import open_store
    from stratus.storage.chunkstore import ChunkMissing, StoreUnavailable

    name = f"region {region.name} chunks"
    store = open_store(region, cfg)
    try:
        if region.store.type == "s3":
            store.check()
            digests = [info.digest for info in islice(store.iter_chunks(), SAMPLE_CHUNKS)]
        else:
            digests = sample_chunks(region.store_path, SAMPLE_CHUNKS, random.Random())
    except StoreUnavailable as exc:
        return Check(name, "fail", str(exc), "start the object store or fix the region's `store` table")
    if not digests:
        return Check(name, "ok", "the store holds no chunks yet")
    bad = []
    for digest in digests:
        try:
            if not store.verify(digest):
                bad.append(digest)
        except (ChunkMissing, StoreUnavailable, OSError):
            bad.append(digest)
    if bad:
        return Check(name, "fail", f"{len(bad)} of {len(digests)} sampled chunks don't match their names "
                     f"(first: {bad[0]})", f"run `stratus fsck --region {region.name}` to find the images they break")
    return Check(name, "ok", f"{len(digests)} sampled chunks verify")


def check_tools() -> list[Check]:
    checks = []
    qemu = shutil.which("qemu-img")
    if qemu is None:
        checks.append(Check("qemu-img", "fail", "qemu-img is not on PATH",
                            "install it (Debian: apt-get install qemu-utils) or fix PATH"))
    else:
        try:
            res = subprocess.run([qemu, "--version"], capture_output=True, text=True, timeout=30)
            line = (res.stdout.splitlines() or [""])[0]
            m = re.search(r"version (\d+)\.(\d+)", line)
            if res.returncode != 0 or m is None:
                checks.append(Check("qemu-img", "fail", f"{qemu} --version answered {line or res.stderr[:200]!r}",
                                    "reinstall qemu-utils"))
            elif (int(m.group(1)), int(m.group(2))) < MIN_QEMU_IMG:
                checks.append(Check("qemu-img", "fail", f"{line} at {qemu}",
                                    f"install qemu-img {'.'.join(map(str, MIN_QEMU_IMG))} or newer"))
            else:
                checks.append(Check("qemu-img", "ok", f"{line} at {qemu}"))
        except (OSError, subprocess.TimeoutExpired) as exc:
            checks.append(Check("qemu-img", "fail", f"{qemu} --version failed: {exc}", "reinstall qemu-utils"))
    if shutil.which("prlimit") is None:
        checks.append(Check("prlimit", "fail", "prlimit is not on PATH (the disk gate runs qemu-img under it)",
                            "install util-linux or fix PATH"))
    else:
        checks.append(Check("prlimit", "ok", shutil.which("prlimit") or ""))
    return checks


def run_checks(data_dir: str | None, config: str | None) -> list[Check]:
    first, cfg = check_config(data_dir, config)
    checks = [first]
    if cfg is None:
        return checks + check_tools()
    checks.append(check_catalog(cfg))
    dirs = [("data dir", cfg.data_dir, "--data-dir / data_dir"), ("tmp", cfg.tmp_dir, "--data-dir / data_dir"),
            ("uploads", cfg.uploads_dir, "--data-dir / data_dir")]
    for region in cfg.regions:
        dirs += [(f"region {region.name} store", region.store_path, f"regions.{region.name}.store"),
                 (f"region {region.name} host", region.host_path, f"regions.{region.name}.host")]
    filesystems: dict[int, list[str]] = {}  # free space once per filesystem, naming what lives on it
    usable: set[Path] = set()
    for name, path, what in dirs:
        found = check_dir(name, path, what)
        checks += found
        if found[0].status == "ok":
            usable.add(path)
            filesystems.setdefault(path.stat().st_dev, []).append(str(path))
    for region in cfg.regions:  # an S3 store's local directory is scratch space only: its chunks are in the bucket
        if region.store.type == "s3" or region.store_path in usable:
            checks.append(check_chunks(region, cfg))
    for paths in filesystems.values():
        checks.append(check_free("free space", Path(paths[0])))
        if len(paths) > 1:
            checks[-1].detail += f" (and {len(paths) - 1} more directories on that filesystem)"
    return checks + check_tools()


def doctor(
    data_dir: str = DataDirOpt,
    config: str = ConfigOpt,
    json_out: bool = JsonOpt,
) -> None:
    """Check the config, catalog, stores, qemu-img and free space; say what to fix (exit 1 unless all ok)."""
    checks = run_checks(data_dir, config)
    if json_out:
        print_json([asdict(c) for c in checks])
    else:
        styles = {"ok": "green", "warn": "yellow", "fail": "red"}
        for c in checks:
            line = f"[{styles[c.status]}]{c.status:<4}[/] {escape(c.check)}: {escape(c.detail)}"
            if c.fix:
                line += f" -> {escape(c.fix)}"
            out.print(line, highlight=False, markup=True)
    if any(c.status != "ok" for c in checks):
        raise typer.Exit(1)
