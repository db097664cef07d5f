"""Catalog tables. Times are UTC epoch seconds (floats): portable across SQLite and PostgreSQL."""

from __future__ import annotations

import time

from sqlalchemy import (
    BigInteger,
    Boolean,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


class Base(DeclarativeBase):
    pass


def now() -> float:
    return time.time()


class Account(Base):
    __tablename__ = "accounts"

    id: Mapped[str] = mapped_column(String(20), primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    is_operator: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[float] = mapped_column(Float, default=now)

    keys: Mapped[list[ApiKey]] = relationship(back_populates="account")


class ApiKey(Base):
    __tablename__ = "api_keys"

    secret_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    secret_key: Mapped[str] = mapped_column(String(64))
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"), index=True)
    created_at: Mapped[float] = mapped_column(Float, default=now)
    revoked_at: Mapped[float | None] = mapped_column(Float, nullable=True)

    account: Mapped[Account] = relationship(back_populates="keys")


# The columns DescribeImages filters compare, carried in the covering indexes of `images`.
_FILTERED = ("state", "architecture", "os_type", "source", "family", "platform", "name")
# PostgreSQL only, created by migration 0010 where pg_trgm can be: GIN trigram indexes for the substring
# filters. Not declared on the models (SQLite has no such index); the migration test knows them.
TRIGRAM_INDEXES = frozenset({"ix_images_name_trgm", "ix_images_platform_trgm"})


class Image(Base):
    __tablename__ = "images"
    __table_args__ = (
        UniqueConstraint("owner_id", "region", "name", name="uq_image_owner_region_name"),
        # Covering indexes (migration 0010): each DescribeImages kind is a range of one of them, and its
        # entries carry every filtered column, so counting and paging never read table rows.
        Index("ix_images_owner_cover", "region", "owner_id", "is_public", "created_at", "id", *_FILTERED),
        Index("ix_images_public_cover", "region", "is_public", "created_at", "id", *_FILTERED),
        Index("ix_images_id_cover", "id", "region", "owner_id", "is_public", "created_at", *_FILTERED),
        Index("ix_images_family", "region", "family"),
    )

    id: Mapped[str] = mapped_column(String(16), primary_key=True)
    region: Mapped[str] = mapped_column(String(64))
    owner_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"))
    name: Mapped[str] = mapped_column(String(60))
    description: Mapped[str] = mapped_column(String(256), default="")
    state: Mapped[str] = mapped_column(String(16))
    state_reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    source: Mapped[str] = mapped_column(String(20))
    is_public: Mapped[bool] = mapped_column(Boolean, default=False)
    os_type: Mapped[str] = mapped_column(String(64), default="")
    os_version: Mapped[str] = mapped_column(String(32), default="")
    os_name: Mapped[str] = mapped_column(String(128), default="")
    platform: Mapped[str] = mapped_column(String(64), default="")
    architecture: Mapped[str] = mapped_column(String(16), default="x86_64")
    boot_mode: Mapped[str] = mapped_column(String(16), default="Legacy BIOS")
    license_type: Mapped[str] = mapped_column(String(16), default="TencentCloud")
    family: Mapped[str] = mapped_column(String(64), default="")
    deprecated: Mapped[bool] = mapped_column(Boolean, default=False)
    support_cloudinit: Mapped[bool] = mapped_column(Boolean, default=True)
    sync_percent: Mapped[int | None] = mapped_column(Integer, nullable=True)
    source_image_id: Mapped[str | None] = mapped_column(String(16), nullable=True)
    source_region: Mapped[str | None] = mapped_column(String(64), nullable=True)
    source_instance_id: Mapped[str | None] = mapped_column(String(16), nullable=True)
    source_url: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[float] = mapped_column(Float, default=now)
    updated_at: Mapped[float] = mapped_column(Float, default=now, onupdate=now)

    disks: Mapped[list[ImageDisk]] = relationship(
        back_populates="image", order_by="ImageDisk.index", cascade="all, delete-orphan"
    )
    tags: Mapped[list[ImageTag]] = relationship(cascade="all, delete-orphan", order_by="ImageTag.key")
    shares: Mapped[list[ImageShare]] = relationship(cascade="all, delete-orphan")


class ImageDisk(Base):
    """One disk of an image: index 0 is the system disk, the rest are data disks."""

    __tablename__ = "image_disks"

    image_id: Mapped[str] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"), primary_key=True)
    index: Mapped[int] = mapped_column(Integer, primary_key=True)
    snapshot_id: Mapped[str] = mapped_column(String(16), unique=True)
    usage: Mapped[str] = mapped_column(String(16))  # SYSTEM_DISK | DATA_DISK
    virtual_size: Mapped[int] = mapped_column(BigInteger, default=0)
    stored_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    source_format: Mapped[str | None] = mapped_column(String(16), nullable=True)
    source_url: Mapped[str | None] = mapped_column(Text, nullable=True)
    manifest_digest: Mapped[str | None] = mapped_column(String(64), nullable=True)

    image: Mapped[Image] = relationship(back_populates="disks")


class Manifest(Base):
    """An immutable disk manifest (canonical JSON), kept per region store."""

    __tablename__ = "manifests"

    region: Mapped[str] = mapped_column(String(64), primary_key=True)
    digest: Mapped[str] = mapped_column(String(64), primary_key=True)
    body: Mapped[bytes] = mapped_column(LargeBinary)
    virtual_size: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[float] = mapped_column(Float, default=now)


# The image's kind for a caller, copied onto its tags and shares by triggers (migration 0013), so that a tag
# filter or the shared kind is one index range of the caller's images in page order. Nothing else writes them.
_KIND = ("image_region", "image_public", "image_owner_id", "image_created_at")


class ImageTag(Base):
    __tablename__ = "image_tags"
    __table_args__ = (Index("ix_image_tags_key_kind", "key", *_KIND, "image_id"),
                      Index("ix_image_tags_key_value_kind", "key", "value", *_KIND, "image_id"),
                      Index("ix_image_tags_value_kind", "value", *_KIND, "image_id"))

    image_id: Mapped[str] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"), primary_key=True)
    key: Mapped[str] = mapped_column(String(128), primary_key=True)
    value: Mapped[str] = mapped_column(String(256), default="")
    image_region: Mapped[str | None] = mapped_column(String(64), nullable=True)
    image_owner_id: Mapped[str | None] = mapped_column(String(20), nullable=True)
    image_public: Mapped[bool | None] = mapped_column(Boolean, nullable=True)
    image_created_at: Mapped[float | None] = mapped_column(Float, nullable=True)


class ImageShare(Base):
    __tablename__ = "image_shares"
    # The ids shared with an account, from the index alone (migration 0010).
    __table_args__ = (Index("ix_image_shares_account_kind", "account_id", "image_region", "image_public",
                            "image_created_at", "image_id", "image_owner_id"),)

    image_id: Mapped[str] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"), primary_key=True)
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"), primary_key=True, index=True)
    created_at: Mapped[float] = mapped_column(Float, default=now)
    image_region: Mapped[str | None] = mapped_column(String(64), nullable=True)
    image_owner_id: Mapped[str | None] = mapped_column(String(20), nullable=True)
    image_public: Mapped[bool | None] = mapped_column(Boolean, nullable=True)
    image_created_at: Mapped[float | None] = mapped_column(Float, nullable=True)


class ImageCount(Base):
    """How many images each (region, owner, public) has, kept by triggers on `images` (migration 0013):
    the unfiltered DescribeImages total without counting. Nothing else writes it."""

    __tablename__ = "image_counts"

    region: Mapped[str] = mapped_column(String(64), primary_key=True)
    is_public: Mapped[bool] = mapped_column(Boolean, primary_key=True)
    owner_id: Mapped[str] = mapped_column(String(20), primary_key=True)
    n: Mapped[int] = mapped_column(Integer)


class Task(Base):
    """Durable long work. A worker owns a RUNNING task while its lease holds; an expired lease
    means the worker died and another may take the task over."""

    __tablename__ = "tasks"
    __table_args__ = (
        Index("ix_tasks_state_lease", "state", "lease_expires_at"),
        # The mutexes (migration 0012): "is a capture of this instance in flight", "is a copy reading this
        # image". Partial: only the tasks that have the subject are in them; `col = ?` implies the condition,
        # so both databases use them for those lookups.
        Index("ix_tasks_instance_kind_state", "instance_id", "kind", "state",
              sqlite_where=text("instance_id IS NOT NULL"), postgresql_where=text("instance_id IS NOT NULL")),
        Index("ix_tasks_source_image_kind_state", "source_image_id", "kind", "state",
              sqlite_where=text("source_image_id IS NOT NULL"),
              postgresql_where=text("source_image_id IS NOT NULL")),
    )

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    kind: Mapped[str] = mapped_column(String(32))
    state: Mapped[str] = mapped_column(String(16), default="QUEUED")  # QUEUED RUNNING DONE FAILED
    account_id: Mapped[str | None] = mapped_column(String(20), nullable=True, index=True)
    region: Mapped[str | None] = mapped_column(String(64), nullable=True)
    image_id: Mapped[str | None] = mapped_column(String(16), nullable=True, index=True)
    # The one instance the task works on (capture, reset); None for a batch (launch, start, stop, reboot,
    # terminate: one task per host, whose instance ids are in the payload). No FK: tasks outlive instances.
    instance_id: Mapped[str | None] = mapped_column(String(16), nullable=True)
    # The image a copy (sync) reads from: DeleteImages refuses it while one is in flight.
    source_image_id: Mapped[str | None] = mapped_column(String(16), nullable=True)
    payload: Mapped[str] = mapped_column(Text, default="{}")
    result: Mapped[str | None] = mapped_column(Text, nullable=True)
    stage: Mapped[str] = mapped_column(String(32), default="queued")
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    # Claims so far: also the fencing token; every write of an execution checks (lease_owner, attempts).
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    # Claims given back on a graceful shutdown: not crashes, so not counted toward the attempt limit.
    released: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    lease_owner: Mapped[str | None] = mapped_column(String(64), nullable=True)
    lease_expires_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    # The compute host that must run it (an instance's tasks); None: any worker may.
    host: Mapped[str | None] = mapped_column(String(64), nullable=True)
    started_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    created_at: Mapped[float] = mapped_column(Float, default=now)
    updated_at: Mapped[float] = mapped_column(Float, default=now, onupdate=now)
    finished_at: Mapped[float | None] = mapped_column(Float, nullable=True)


class Upload(Base):
    """A resumable upload of an image file to this server."""

    __tablename__ = "uploads"

    id: Mapped[str] = mapped_column(String(16), primary_key=True)
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"), index=True)
    name: Mapped[str] = mapped_column(String(256), default="")
    size: Mapped[int] = mapped_column(BigInteger)
    received: Mapped[int] = mapped_column(BigInteger, default=0)
    declared_format: Mapped[str | None] = mapped_column(String(16), nullable=True)
    state: Mapped[str] = mapped_column(String(16), default="UPLOADING")  # UPLOADING COMPLETE CONSUMED
    created_at: Mapped[float] = mapped_column(Float, default=now)
    expires_at: Mapped[float] = mapped_column(Float)
    # The PUT that may append (compare-and-set on `received`), and until when: a crashed writer's claim lapses.
    writer: Mapped[str | None] = mapped_column(String(64), nullable=True)
    writer_until: Mapped[float | None] = mapped_column(Float, nullable=True)
    image_id: Mapped[str | None] = mapped_column(String(16), nullable=True)  # the import that consumed it
    # A chunked upload (service/chunked.py): the region whose store holds its chunks, and its manifest (SMF2).
    region: Mapped[str | None] = mapped_column(String(64), nullable=True)
    manifest: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)


class ChunkOwner(Base):
    """A chunk an account has sent in a chunked upload, or that was in one of its own images when it
    imported one: what the server may tell this account it already has (never another account's chunks)."""

    __tablename__ = "chunk_owners"

    account_id: Mapped[str] = mapped_column(String(20), primary_key=True)
    region: Mapped[str] = mapped_column(String(64), primary_key=True)
    digest: Mapped[str] = mapped_column(String(64), primary_key=True)
    created_at: Mapped[float] = mapped_column(Float, default=now)


class ExportObject(Base):
    """A file written by ExportImages into a bucket; only its account may download it."""

    __tablename__ = "export_objects"

    region: Mapped[str] = mapped_column(String(64), primary_key=True)
    bucket: Mapped[str] = mapped_column(String(64), primary_key=True)
    key: Mapped[str] = mapped_column(String(512), primary_key=True)
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"), index=True)
    task_id: Mapped[int] = mapped_column(BigInteger)
    image_id: Mapped[str] = mapped_column(String(16))
    state: Mapped[str] = mapped_column(String(16), default="PENDING")  # PENDING DONE FAILED
    size: Mapped[int] = mapped_column(BigInteger, default=0)
    created_at: Mapped[float] = mapped_column(Float, default=now)


class Instance(Base):
    """A virtual machine (or, with the `disk` driver, only its disks) launched from an image."""

    __tablename__ = "instances"
    __table_args__ = (Index("ix_instances_region_owner_created", "region", "owner_id", "created_at"),)

    id: Mapped[str] = mapped_column(String(16), primary_key=True)
    region: Mapped[str] = mapped_column(String(64))
    zone: Mapped[str] = mapped_column(String(64))
    owner_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"), index=True)
    name: Mapped[str] = mapped_column(String(128), default="")
    instance_type: Mapped[str] = mapped_column(String(32))
    image_id: Mapped[str] = mapped_column(String(16))  # no FK: deleting an image never breaks an instance
    state: Mapped[str] = mapped_column(String(32))
    state_reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    driver: Mapped[str] = mapped_column(String(16), default="disk")
    user_data: Mapped[str | None] = mapped_column(Text, nullable=True)
    host_name: Mapped[str] = mapped_column(String(64), default="")  # the guest's hostname (contract HostName)
    # The compute host it was placed on (service/hosts.py); every task of the instance runs there.
    compute_host: Mapped[str] = mapped_column(String(64), default="local", server_default="local", index=True)
    latest_operation: Mapped[str | None] = mapped_column(String(64), nullable=True)
    latest_operation_state: Mapped[str | None] = mapped_column(String(16), nullable=True)
    latest_operation_request_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    latest_operation_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[float] = mapped_column(Float, default=now)
    updated_at: Mapped[float] = mapped_column(Float, default=now, onupdate=now)

    disks: Mapped[list[InstanceDisk]] = relationship(
        back_populates="instance", order_by="InstanceDisk.index", cascade="all, delete-orphan"
    )
    tags: Mapped[list[InstanceTag]] = relationship(cascade="all, delete-orphan", order_by="InstanceTag.key")


class InstanceDisk(Base):
    """One disk of an instance: a qcow2 overlay on a base (or a blank qcow2) in the region's host dir."""

    __tablename__ = "instance_disks"

    id: Mapped[str] = mapped_column(String(16), primary_key=True)  # disk-xxxxxxxx
    instance_id: Mapped[str] = mapped_column(ForeignKey("instances.id", ondelete="CASCADE"), index=True)
    index: Mapped[int] = mapped_column(Integer)
    usage: Mapped[str] = mapped_column(String(16))  # SYSTEM_DISK | DATA_DISK
    disk_type: Mapped[str] = mapped_column(String(32), default="CLOUD_PREMIUM")
    size_gib: Mapped[int] = mapped_column(Integer)
    path: Mapped[str] = mapped_column(Text)
    base_manifest: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    delete_with_instance: Mapped[bool] = mapped_column(Boolean, default=True)

    instance: Mapped[Instance] = relationship(back_populates="disks")


class InstanceTag(Base):
    __tablename__ = "instance_tags"

    instance_id: Mapped[str] = mapped_column(ForeignKey("instances.id", ondelete="CASCADE"), primary_key=True)
    key: Mapped[str] = mapped_column(String(128), primary_key=True)
    value: Mapped[str] = mapped_column(String(256), default="")


class RunRequest(Base):
    """A RunInstances call with a ClientToken: the same token with the same parameters returns the same
    instances; with other parameters it is refused."""

    __tablename__ = "run_requests"

    owner_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"), primary_key=True)
    region: Mapped[str] = mapped_column(String(64), primary_key=True)
    client_token: Mapped[str] = mapped_column(String(64), primary_key=True)
    params_digest: Mapped[str] = mapped_column(String(64))
    instance_ids: Mapped[str] = mapped_column(Text)  # JSON list
    created_at: Mapped[float] = mapped_column(Float, default=now)


class BaseDisk(Base):
    """An image disk materialized once per compute host and region as an immutable sparse raw file, shared
    by every instance disk made from it on that host. Keyed by manifest digest: identical disks share one base."""

    __tablename__ = "bases"

    host: Mapped[str] = mapped_column(String(64), primary_key=True)
    region: Mapped[str] = mapped_column(String(64), primary_key=True)
    manifest_digest: Mapped[str] = mapped_column(String(64), primary_key=True)
    path: Mapped[str] = mapped_column(Text)
    state: Mapped[str] = mapped_column(String(16), default="BUILDING")  # BUILDING READY RELEASED
    virtual_size: Mapped[int] = mapped_column(BigInteger, default=0)
    builder: Mapped[str | None] = mapped_column(String(64), nullable=True)
    build_expires_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    created_at: Mapped[float] = mapped_column(Float, default=now)


class Host(Base):
    """A compute host: a worker started with `--host NAME` (or `local`, the single-process server). It is
    up while its heartbeat is fresh (service/hosts.py); instances are placed only on hosts that are up."""

    __tablename__ = "hosts"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    regions: Mapped[str] = mapped_column(Text, default="[]")  # JSON list of the regions it serves
    compute: Mapped[str] = mapped_column(String(16), default="")  # disk | qemu; "": each region's setting
    capacity_instances: Mapped[int] = mapped_column(Integer, default=0)  # 0: no limit
    process: Mapped[str | None] = mapped_column(String(64), nullable=True)  # the last process to heartbeat
    started_at: Mapped[float] = mapped_column(Float, default=now)
    heartbeat_at: Mapped[float] = mapped_column(Float, default=now)
