"""Settings: embedded defaults, an optional TOML file, then environment overrides.

Every setting is declared once, here, with its default. Precedence: defaults < `--config`/`STRATUS_CONFIG`
file < `STRATUS_DATA_DIR`, `STRATUS_DATABASE_URL`, `STRATUS_IMPORT_URL_ALLOW` and `STRATUS_COMPUTE` < the
`--data-dir` option.

The file and the environment are validated with pydantic before anything starts: an unknown key, a wrong
type or an impossible value is one :class:`ConfigError` that names the file (or variable) and the key,
e.g. ``stratus.toml: limits.task_lease_seconds: must be > 0``. TOML is typed, so the file is checked
strictly (``"30"`` is not a number); the environment is text and is parsed.
"""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator

from stratus.domain.manifest import DEFAULT_CHUNK_SIZE as MANIFEST_DEFAULT_CHUNK_SIZE
from stratus.domain.manifest import check_chunk_size

GiB = 1024**3
MiB = 1024**2

# Chosen by bench/chunk_size.py (docs/design.md): 1 MiB chunks ingest as fast as 4 MiB, store less, and
# make captures and copies of scattered writes about 3× smaller.
DEFAULT_CHUNK_SIZE = MANIFEST_DEFAULT_CHUNK_SIZE
DEFAULT_EXPORT_BUCKET = "stratus-exports"

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class ConfigError(ValueError):
    """The configuration can't be used; the message is one line naming the file or variable and the key."""


# --------------------------------------------------------------------------- value rules

Positive = Annotated[int, Field(gt=0)]
PositiveSeconds = Annotated[float, Field(gt=0)]
# Region and bucket names become directory names: no separators, no dot-dot, nothing a shell would mangle.
Name = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")]


def _chunk_size(value: int) -> int:
    try:
        return check_chunk_size(value)
    except ValueError:
        raise ValueError("must be a power of two between 65536 (64 KiB) and 67108864 (64 MiB)") from None


def _cidr(value: str) -> str:
    try:
        ipaddress.ip_network(value.strip(), strict=False)
    except ValueError:
        raise ValueError(f"{value!r} is not a CIDR such as 10.0.0.0/8 or 127.0.0.1/32") from None
    return value


def _unique(what: str):
    def check(items: list[Any]) -> list[Any]:
        names = [getattr(i, "name", i) for i in items]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"duplicate {what} {', '.join(map(repr, dupes))}")
        return items

    return check


def _database_url(value: str) -> str:
    if not re.match(r"^(sqlite|postgresql|postgres)(\+\w+)?://", value):
        raise ValueError(f"{value!r} is not a sqlite:///PATH or postgresql://USER@HOST/DB URL")
    return value


NonEmpty = Annotated[str, Field(min_length=1)]
Cidr = Annotated[str, AfterValidator(_cidr)]
DatabaseUrl = Annotated[str, AfterValidator(_database_url)]
Compute = Literal["disk", "qemu"]


class _Section(BaseModel):
    """A table of the TOML file: typed strictly, unknown keys refused, immutable once loaded."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)


class _Amounts(_Section):
    """Limits and quotas: whatever a field says, an amount is never negative (also for fields added later)."""

    @field_validator("*")
    @classmethod
    def _not_negative(cls, value: Any) -> Any:
        if isinstance(value, (int, float)) and value < 0:
            raise ValueError("must be >= 0")
        return value


# --------------------------------------------------------------------------- the settings


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


class Limits(_Amounts):
    max_request_bytes: Positive = 1 * MiB
    max_virtual_size: Positive = 2048 * GiB
    max_download_bytes: Positive = 64 * GiB
    download_timeout_seconds: PositiveSeconds = 6 * 3600
    download_connect_timeout_seconds: PositiveSeconds = 10
    max_redirects: int = 5
    max_upload_bytes: Positive = 64 * GiB
    upload_ttl_seconds: Positive = 7 * 24 * 3600
    upload_idle_seconds: PositiveSeconds = 120.0
    upload_request_seconds: PositiveSeconds = 6 * 3600
    export_tasks_per_account: int = 8
    uploads_per_account: int = 20  # uploads not yet consumed by an import
    upload_bytes_per_account: int = 256 * GiB  # their declared sizes, summed
    tasks_per_account: int = 100  # tasks queued or running
    exports_per_account: int = 200  # export files kept in buckets
    export_ttl_seconds: float = 7 * 24 * 3600  # an export file is deleted this long after it was written
    requests_per_second: float = 100.0  # CVM API calls per account per API process (token bucket); 0: no limit
    request_burst: int = 200  # calls an idle account may make at once
    task_lease_seconds: PositiveSeconds = 30.0
    gc_grace_seconds: float = 3600.0
    store_retry_seconds: float = 60.0  # an S3 store that fails this long (with backoff) fails the task
    sync_bytes_per_second: int = 0  # pace of SyncImages copies between stores; 0: as fast as the disks go
    sync_max_image_bytes: Positive = 16384 * GiB  # largest image (all disks, virtual) SyncImages copies
    vm_max_seconds: PositiveSeconds = 7 * 24 * 3600
    vm_memory_cap_mib: Positive = 4096


LOOPBACK = (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"))


@dataclass(frozen=True)
class Metrics:
    """`/metrics` on the API port: who may read it (client networks; empty: not served) and how often the
    store sizes are re-walked (docs/operations.md)."""

    allow: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = LOOPBACK
    store_walk_seconds: float = 300.0


class Quotas(_Amounts):
    images_per_region: int = 500
    instances_per_region: int = 1000


class InstanceType(_Section):
    name: Annotated[str, Field(min_length=1, max_length=64)]
    cpu: Positive
    memory_gib: Positive
    architecture: Literal["x86_64", "arm", "i386"] = "x86_64"


DEFAULT_INSTANCE_TYPES: tuple[InstanceType, ...] = (
    InstanceType(name="S5.SMALL1", cpu=1, memory_gib=1),
    InstanceType(name="S5.SMALL2", cpu=1, memory_gib=2),
    InstanceType(name="S5.MEDIUM2", cpu=2, memory_gib=2),
    InstanceType(name="S5.MEDIUM4", cpu=2, memory_gib=4),
    InstanceType(name="S5.LARGE8", cpu=4, memory_gib=8),
    InstanceType(name="SR1.MEDIUM4", cpu=2, memory_gib=4, architecture="arm"),
)


@dataclass(frozen=True)
class Settings:
    data_dir: Path
    database_url: str
    regions: tuple[Region, ...]
    limits: Limits = field(default_factory=Limits)
    quotas: Quotas = field(default_factory=Quotas)
    import_url_allow: tuple[Network, ...] = ()
    workers: int = 2
    instance_types: tuple[InstanceType, ...] = DEFAULT_INSTANCE_TYPES
    metrics: Metrics = field(default_factory=Metrics)

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


# --------------------------------------------------------------------------- the file and the environment


class BucketFile(_Section):
    name: Name
    path: str | None = None  # default DATA_DIR/regions/<region>/buckets/<name> (staging, when type = "s3")
    type: str = "dir"  # "dir" or "s3" (checked with the region named, in _bucket_s3)
    endpoint_url: str | None = None
    bucket: str | None = None  # default: the name
    prefix: str = "exports/"


class RegionFile(_Section):
    """A `[[regions]]` entry as written; :func:`load_settings` fills in the paths that depend on data_dir."""

    name: Name
    display_name: str | None = None  # default: the name
    zones: Annotated[list[NonEmpty], Field(min_length=1), AfterValidator(_unique("zone"))] = []  # ["<name>-1"]
    # the chunk store: a directory path (default DATA_DIR/regions/<name>/store) or a table
    # {type = "dir"|"s3", path, endpoint_url, bucket, prefix}, checked with the region named in _store
    store: Any = None
    host: str | None = None  # bases and instance disks; default DATA_DIR/regions/<name>/host
    chunk_size: Annotated[int, AfterValidator(_chunk_size)] = DEFAULT_CHUNK_SIZE
    buckets: Annotated[list[BucketFile], Field(min_length=1), AfterValidator(_unique("bucket"))] = [
        BucketFile(name=DEFAULT_EXPORT_BUCKET)]
    compute: Compute = "disk"
    sync_target: bool = True


DEFAULT_REGIONS: tuple[RegionFile, ...] = (
    RegionFile(name="ap-guangzhou", display_name="South China (Guangzhou)", zones=["ap-guangzhou-1", "ap-guangzhou-2"]),
    RegionFile(name="ap-shanghai", display_name="East China (Shanghai)", zones=["ap-shanghai-1"]),
)


class ImportFile(_Section):
    url_allow: list[Cidr] = []


class MetricsFile(_Section):
    allow: list[Cidr] | None = None  # default: loopback only; [] turns /metrics off
    store_walk_seconds: PositiveSeconds = 300.0


class ConfigFile(_Section):
    """The whole TOML file."""

    data_dir: str | None = None
    database_url: DatabaseUrl | None = None
    workers: Annotated[int, Field(ge=0)] = 2  # 0: this process runs no task workers (as --no-workers)
    import_: ImportFile = Field(default_factory=ImportFile, alias="import")
    limits: Limits = Field(default_factory=Limits)
    quotas: Quotas = Field(default_factory=Quotas)
    metrics: MetricsFile = Field(default_factory=MetricsFile)
    instance_types: Annotated[list[InstanceType], Field(min_length=1), AfterValidator(_unique("instance type"))] = \
        list(DEFAULT_INSTANCE_TYPES)
    regions: Annotated[list[RegionFile], Field(min_length=1), AfterValidator(_unique("region"))] = \
        list(DEFAULT_REGIONS)


def _blank_is_unset(value: Any) -> Any:
    return None if isinstance(value, str) and not value.strip() else value


class Environment(BaseModel):
    """The variables that override the file. An empty one counts as unset, except STRATUS_IMPORT_URL_ALLOW,
    where empty means "allow nothing" (overriding the file)."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    STRATUS_CONFIG: str | None = None
    STRATUS_DATA_DIR: str | None = None
    STRATUS_DATABASE_URL: DatabaseUrl | None = None
    STRATUS_IMPORT_URL_ALLOW: str | None = None
    STRATUS_COMPUTE: Compute | None = None

    @field_validator("STRATUS_CONFIG", "STRATUS_DATA_DIR", "STRATUS_DATABASE_URL", "STRATUS_COMPUTE", mode="before")
    @classmethod
    def _blank(cls, value: Any) -> Any:
        return _blank_is_unset(value)

    @field_validator("STRATUS_IMPORT_URL_ALLOW")
    @classmethod
    def _cidrs(cls, value: str | None) -> str | None:
        if value is not None:
            for item in value.split(","):
                if item.strip():
                    _cidr(item.strip())
        return value


_MESSAGES = {
    "extra_forbidden": "unknown key",
    "missing": "is required",
    "int_type": "must be an integer",
    "float_type": "must be a number",
    "bool_type": "must be true or false",
    "string_type": "must be a string",
    "list_type": "must be an array",
    "model_type": "must be a table",
    "too_short": "must not be empty",
    "string_too_short": "must not be empty",
}


def _number(value: Any) -> Any:
    return int(value) if isinstance(value, float) and value.is_integer() else value


def _describe(exc: ValidationError, source: str) -> str:
    parts = []
    for err in exc.errors(include_url=False):
        key = ".".join(str(p) for p in err["loc"]) or "(top level)"
        ctx = err.get("ctx") or {}
        kind = err["type"]
        if kind == "greater_than":
            msg = f"must be > {_number(ctx.get('gt'))}"
        elif kind == "greater_than_equal":
            msg = f"must be >= {_number(ctx.get('ge'))}"
        elif kind == "value_error":
            msg = str(ctx.get("error", err["msg"]))
        elif kind == "literal_error":
            msg = f"must be {ctx.get('expected')}"
        elif kind == "string_pattern_mismatch":
            msg = "must be letters, digits, '.', '_' or '-' (at most 63, starting with a letter or digit)"
        else:
            msg = _MESSAGES.get(kind, err["msg"][:1].lower() + err["msg"][1:])
        parts.append(f"{key}: {msg}")
    return f"{source}: " + "; ".join(parts)


def parse_networks(spec: str | list[str]) -> tuple[Network, ...]:
    items = spec.split(",") if isinstance(spec, str) else spec
    return tuple(ipaddress.ip_network(s.strip(), strict=False) for s in items if s.strip())


def _read_file(path: str) -> ConfigFile:
    try:
        text = Path(path).read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read the config file ({exc.__class__.__name__}: {exc})") from None
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from None
    try:
        return ConfigFile.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, path)) from None


def _store(raw: object, region: str) -> tuple[StoreSpec, str | None]:
    """``store = "PATH"`` (today's form) or ``store = {type = "dir"|"s3", path, endpoint_url, bucket, prefix}``."""
    if raw is None or isinstance(raw, str):
        return StoreSpec(), raw
    if not isinstance(raw, dict):
        raise ConfigError(f"region {region}: `store` is a path or a table {{type = \"dir\" | \"s3\", ...}}")
    extra = set(raw) - {"type", "path", "endpoint_url", "bucket", "prefix"}
    kind = raw.get("type", "dir")
    if extra or kind not in ("dir", "s3") or (kind == "s3" and not raw.get("bucket")):
        raise ConfigError(
            f"region {region}: store needs type = \"dir\" (optional path) or type = \"s3\" with bucket "
            f"(optional endpoint_url, prefix); got {sorted(raw)}"
        )
    spec = StoreSpec(kind, raw.get("endpoint_url"), raw.get("bucket"), raw.get("prefix", "chunks/"))
    return spec, raw.get("path")


def _bucket_s3(raw: BucketFile, region: str) -> StoreSpec | None:
    """``{name, path}`` (a directory) or ``{name, type = "s3", endpoint_url, bucket, prefix}``."""
    kind = raw.type
    if kind == "dir":
        return None
    if kind != "s3":
        raise ConfigError(f"region {region}: bucket {raw.name!r} has type {kind!r}; use \"dir\" or \"s3\"")
    return StoreSpec("s3", raw.endpoint_url, raw.bucket or raw.name, raw.prefix)


def _region(raw: RegionFile, data_dir: Path, compute_override: str | None) -> Region:
    base = data_dir / "regions" / raw.name
    store, store_path = _store(raw.store, raw.name)
    return Region(
        name=raw.name,
        display_name=raw.display_name or raw.name,
        zones=tuple(raw.zones or [f"{raw.name}-1"]),
        store_path=Path(store_path or base / "store"),
        host_path=Path(raw.host or base / "host"),
        chunk_size=raw.chunk_size,
        buckets=tuple(Bucket(b.name, Path(b.path or base / "buckets" / b.name), _bucket_s3(b, raw.name))
                      for b in raw.buckets),
        compute=compute_override or raw.compute,
        sync_target=raw.sync_target,
        store=store,
    )


def load_settings(
    data_dir: str | Path | None = None,
    config_file: str | Path | None = None,
    env: dict[str, str] | None = None,
) -> Settings:
    """Read and validate the configuration; raise :class:`ConfigError` (one line) if it can't be used."""
    try:
        environ = Environment.model_validate(dict(os.environ) if env is None else env)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, "environment")) from None
    path = config_file or environ.STRATUS_CONFIG
    conf = _read_file(os.fspath(path)) if path else ConfigFile()
    ddir = Path(data_dir or environ.STRATUS_DATA_DIR or conf.data_dir or "./var").absolute()
    db_url = environ.STRATUS_DATABASE_URL or conf.database_url or f"sqlite:///{ddir / 'stratus.db'}"
    allow: str | list[str] = conf.import_.url_allow
    if environ.STRATUS_IMPORT_URL_ALLOW is not None:
        allow = environ.STRATUS_IMPORT_URL_ALLOW
    try:
        regions = tuple(_region(r, ddir, environ.STRATUS_COMPUTE) for r in conf.regions)
    except ConfigError as exc:  # a `store` or bucket table, checked with its region named
        raise ConfigError(f"{path}: {exc}") from None
    return Settings(
        data_dir=ddir,
        database_url=db_url,
        regions=regions,
        limits=conf.limits,
        quotas=conf.quotas,
        import_url_allow=parse_networks(allow),
        workers=conf.workers,
        instance_types=tuple(conf.instance_types),
        metrics=Metrics(allow=LOOPBACK if conf.metrics.allow is None else parse_networks(conf.metrics.allow),
                        store_walk_seconds=conf.metrics.store_walk_seconds),
    )
