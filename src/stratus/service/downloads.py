"""Who may download an exported file, and where its bytes are: the rule behind GET /buckets/<bucket>/<key>.

An exported object is its exporter's alone (an account never learns another's keys), and only once its
export is DONE. The API layer streams what this returns; it decides nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import select

from stratus.catalog.models import ExportObject
from stratus.domain import errors
from stratus.service.context import Caller, Services


@dataclass(frozen=True)
class Download:
    key: str
    path: Path | None  # the file, for a directory bucket
    objects: Any = None  # the bucket's S3Objects, for a bucket kept in S3 (then path is None)


def authorize_download(svc: Services, caller: Caller, region: str | None, bucket_name: str, key: str) -> Download:
    """The caller's DONE export `key` in `bucket_name`; ResourceNotFound for anything else (unknown bucket,
    another account's object), InvalidParameterValue while its export is still running or failed."""
    spec = svc.region(region)
    bucket = spec.bucket(bucket_name)
    obj = None
    if bucket is not None:
        with svc.db.read() as s:
            obj = s.scalar(select(ExportObject).where(
                ExportObject.region == spec.name, ExportObject.bucket == bucket_name,
                ExportObject.key == key, ExportObject.account_id == caller.account_id))
    if obj is None or bucket is None:
        raise errors.ResourceNotFound(detail=f"No object {key!r} in bucket {bucket_name!r}.")
    if obj.state != "DONE":
        raise errors.InvalidParameterValue(detail=f"The export of {key!r} is {obj.state}; wait for it.")
    objects = svc.export_objects(spec.name, bucket_name)
    if objects is not None:
        return Download(key, None, objects)
    return Download(key, bucket.path / key)
