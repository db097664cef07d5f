"""Settings: embedded defaults, an optional TOML file, then environment overrides.

Every setting is declared once, here, with its default. Precedence: defaults < `--config`/`STRATUS_CONFIG`
file < `STRATUS_DATABASE_URL`, `STRATUS_IMPORT_URL_ALLOW` and `STRATUS_COMPUTE`.
"""

from __future__ import annotations

import ipaddress
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stratus.domain.manifest import DEFAULT_CHUNK_SIZE as MANIFEST_DEFAULT_CHUNK_SIZE

GiB = 1024**3
MiB = 1024**2

# Chosen by bench/chunk_size.py (docs/design.md): 1 MiB chunks ingest as fast as 4 MiB, store less, and
# make captures and copies of scattered writes about 3× smaller.
DEFAULT_CHUNK_SIZE = MANIFEST_DEFAULT_CHUNK_SIZE
DEFAULT_EXPORT_BUCKET = "stratus-exports"


@dataclass(frozen=True)
class Bucket:
    """An export destination the owner downloads from through the server: a directory, or objects in an
    S3 bucket (``s3``; ``path`` is then the local staging directory)."""

    name: str
    path: Path
    s3: StoreSpec | None = None


@dataclass(frozen=True)
class StoreSpec:
    """Where a region keeps its chunks: ``dir`` (``Region.store_path``) or ``s3`` (a bucket; credentials
    from boto3's usual sources, never from this file)."""

    type: str = "dir"  # "dir" | "s3"
    endpoint_url: str | None = None
    bucket: str | None = None
    prefix: str = "chunks/"


@dataclass(frozen=True)
class Region:
    name: str
    display_name: str
    zones: tuple[str, ...]
    store_path: Path
    host_path: Path
    chunk_size: int = DEFAULT_CHUNK_SIZE
    buckets: tuple[Bucket, ...] = ()
    compute: str = "disk"
    sync_target: bool = True  # SyncImages may copy images into this region (else InvalidRegion.Unavailable)
    store: StoreSpec = field(default_factory=StoreSpec)  # store_path is its scratch space when type = "s3"

    def bucket(self, name: str) -> Bucket | None:
        return next((b for b in self.buckets if b.name == name), None)


@dataclass(frozen=True)
class Limits:
    max_request_bytes: int = 1 * MiB
    max_virtual_size: int = 2048 * GiB
    max_download_bytes: int = 64 * GiB
    download_timeout_seconds: float = 6 * 3600
    download_connect_timeout_seconds: float = 10
    max_redirects: int = 5
    max_upload_bytes: int = 64 * GiB
    upload_ttl_seconds: int = 7 * 24 * 3600
    upload_idle_seconds: float = 120.0
    upload_request_seconds: float = 6 * 3600
    export_tasks_per_account: int = 8
    task_lease_seconds: float = 30.0
    gc_grace_seconds: float = 3600.0
    store_retry_seconds: float = 60.0  # an S3 store that fails this long (with backoff) fails the task
    sync_bytes_per_second: int = 0  # pace of SyncImages copies between stores; 0: as fast as the disks go
    sync_max_image_bytes: int = 16384 * GiB  # largest image (all disks, virtual) SyncImages copies
    vm_max_seconds: float = 7 * 24 * 3600
    vm_memory_cap_mib: int = 4096


@dataclass(frozen=True)
class Quotas:
    images_per_region: int = 500
    instances_per_region: int = 1000


@dataclass(frozen=True)
class InstanceType:
    name: str
    cpu: int
    memory_gib: int
    architecture: str = "x86_64"


DEFAULT_INSTANCE_TYPES: tuple[InstanceType, ...] = (
    InstanceType("S5.SMALL1", 1, 1),
    InstanceType("S5.SMALL2", 1, 2),
    InstanceType("S5.MEDIUM2", 2, 2),
    InstanceType("S5.MEDIUM4", 2, 4),
    InstanceType("S5.LARGE8", 4, 8),
    InstanceType("SR1.MEDIUM4", 2, 4, "arm"),
)


@dataclass(frozen=True)
class Settings:
    data_dir: Path
    database_url: str
    regions: tuple[Region, ...]
    limits: Limits = field(default_factory=Limits)
    quotas: Quotas = field(default_factory=Quotas)
    import_url_allow: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    workers: int = 2
    instance_types: tuple[InstanceType, ...] = DEFAULT_INSTANCE_TYPES

    def instance_type(self, name: str) -> InstanceType | None:
        return next((t for t in self.instance_types if t.name == name), None)

    def region(self, name: str) -> Region | None:
        return next((r for r in self.regions if r.name == name), None)

    @property
    def tmp_dir(self) -> Path:
        return self.data_dir / "tmp"

    @property
    def uploads_dir(self) -> Path:
        return self.data_dir / "uploads"


DEFAULT_REGIONS: tuple[dict[str, Any], ...] = (
    {
        "name": "ap-guangzhou",
        "display_name": "South China (Guangzhou)",
        "zones": ["ap-guangzhou-1", "ap-guangzhou-2"],
    },
    {"name": "ap-shanghai", "display_name": "East China (Shanghai)", "zones": ["ap-shanghai-1"]},
)


def parse_networks(spec: str | list[str]) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    items = spec.split(",") if isinstance(spec, str) else spec
    return tuple(ipaddress.ip_network(s.strip(), strict=False) for s in items if s.strip())


def _store(raw: object, region: str) -> tuple[StoreSpec, str | None]:
    """``store = "PATH"`` (today's form) or ``store = {type = "dir"|"s3", path, endpoint_url, bucket, prefix}``."""
    if raw is None or isinstance(raw, str):
        return StoreSpec(), raw
    if not isinstance(raw, dict):
        raise ValueError(f"region {region}: `store` is a path or a table {{type = \"dir\" | \"s3\", ...}}")
    extra = set(raw) - {"type", "path", "endpoint_url", "bucket", "prefix"}
    kind = raw.get("type", "dir")
    if extra or kind not in ("dir", "s3") or (kind == "s3" and not raw.get("bucket")):
        raise ValueError(
            f"region {region}: store needs type = \"dir\" (optional path) or type = \"s3\" with bucket "
            f"(optional endpoint_url, prefix); got {sorted(raw)}"
        )
    spec = StoreSpec(kind, raw.get("endpoint_url"), raw.get("bucket"), raw.get("prefix", "chunks/"))
    return spec, raw.get("path")


def _bucket_s3(raw: dict[str, Any], region: str) -> StoreSpec | None:
    """``{name, path}`` (a directory) or ``{name, type = "s3", endpoint_url, bucket, prefix}``."""
    kind = raw.get("type", "dir")
    if kind == "dir":
        return None
    if kind != "s3":
        raise ValueError(f"region {region}: bucket {raw.get('name')!r} has type {kind!r}; use \"dir\" or \"s3\"")
    return StoreSpec("s3", raw.get("endpoint_url"), raw.get("bucket") or raw["name"], raw.get("prefix", "exports/"))


def _region(raw: dict[str, Any], data_dir: Path, compute_override: str | None) -> Region:
    name = raw["name"]
    base = data_dir / "regions" / name
    store, store_path = _store(raw.get("store"), name)
    buckets_raw = raw.get("buckets") or [{"name": DEFAULT_EXPORT_BUCKET}]
    buckets = tuple(
        Bucket(b["name"], Path(b.get("path") or base / "buckets" / b["name"]), _bucket_s3(b, name))
        for b in buckets_raw
    )
    return Region(
        name=name,
        display_name=raw.get("display_name", name),
        zones=tuple(raw.get("zones") or [f"{name}-1"]),
        store_path=Path(store_path or base / "store"),
        host_path=Path(raw.get("host") or base / "host"),
        chunk_size=int(raw.get("chunk_size", DEFAULT_CHUNK_SIZE)),
        buckets=buckets,
        compute=compute_override or raw.get("compute", "disk"),
        sync_target=bool(raw.get("sync_target", True)),
        store=store,
    )


def load_settings(
    data_dir: str | Path | None = None,
    config_file: str | Path | None = None,
    env: dict[str, str] | None = None,
) -> Settings:
    env = dict(os.environ) if env is None else env
    raw: dict[str, Any] = {}
    config_file = config_file or env.get("STRATUS_CONFIG")
    if config_file:
        raw = tomllib.loads(Path(config_file).read_text())
    ddir = Path(data_dir or raw.get("data_dir") or env.get("STRATUS_DATA_DIR") or "./var").absolute()
    db_url = env.get("STRATUS_DATABASE_URL") or raw.get("database_url") or f"sqlite:///{ddir / 'stratus.db'}"
    compute = env.get("STRATUS_COMPUTE") or None
    regions = tuple(_region(r, ddir, compute) for r in (raw.get("regions") or DEFAULT_REGIONS))
    allow_spec = env.get("STRATUS_IMPORT_URL_ALLOW")
    if allow_spec is None:
        allow_spec = raw.get("import", {}).get("url_allow", [])
    limits = Limits(**raw.get("limits", {}))
    quotas = Quotas(**raw.get("quotas", {}))
    return Settings(
        data_dir=ddir,
        database_url=db_url,
        regions=regions,
        limits=limits,
        quotas=quotas,
        import_url_allow=parse_networks(allow_spec),
        workers=int(raw.get("workers", 2)),
        instance_types=tuple(InstanceType(**t) for t in raw["instance_types"])
        if raw.get("instance_types")
        else DEFAULT_INSTANCE_TYPES,
    )
