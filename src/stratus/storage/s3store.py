"""A chunk store in an S3 bucket (Ceph RGW, MinIO, Swift s3api, AWS S3), through boto3.

Layout: one object per chunk (the choice and its numbers are in docs/design.md, "Chunks in an object
store")::

    s3://<bucket>/<prefix>ab/abcd…(64 hex)      a chunk: its key ends in the BLAKE3 of its bytes
    s3://<bucket>/<prefix>gc/abcd…(64 hex)      a chunk gc is deleting (restored by the next gc if left)

Rules (the same contract as DirStore, :mod:`stratus.storage.chunkstore`):

* A digest is validated before any key is built from it.
* A PUT is atomic and durable when S3 answers 200: a key never exists without its bytes, so a batch's
  ``commit()`` has nothing left to flush.
* Every read re-hashes (:meth:`S3Store.get`); a mismatch is ChunkCorrupt, never data.
* ``present(digests)`` answers a delta copy's question with LIST requests by key prefix (1000 keys per
  request) instead of a HEAD per chunk, once the set is large enough for that to be cheaper.
* S3 has no cheap mtime to refresh, so ``touch`` only checks presence, and gc's safety comes from the
  catalog instead: :meth:`S3Store.delete` with ``unless_touched_since`` moves the chunk aside (server-side
  copy to ``gc/``), deletes it, and then asks ``quiet(since)`` (wired by the service to the task table:
  "has any task of this region been queued, running or finished since gc planned?"). If anything ran,
  the chunk is put back; a writer that reused it in that window loses nothing. gc on an S3 store
  therefore reclaims in quiet moments only; a chunk is never lost to a race with reuse.
* Transient failures (connection refused or reset, timeouts, 5xx, throttling) are retried by botocore
  (standard mode) and then by :meth:`S3Store._call` with backoff until ``retry_seconds`` have passed;
  then :class:`~stratus.storage.chunkstore.StoreUnavailable`, naming the endpoint and bucket.

Only this module imports botocore: every S3 error is translated here.
"""

from __future__ import annotations

import secrets
import tempfile
import threading
import time
from collections.abc import Callable, Collection, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import blake3
import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from stratus.domain.manifest import MAX_CHUNK_SIZE, is_digest
from stratus.storage.chunkstore import (
    ChunkBatch,
    ChunkCorrupt,
    ChunkInfo,
    ChunkMissing,
    Data,
    StoreError,
    StoreStats,
    StoreUnavailable,
    TempFile,
    check_digest,
    temp_files,
    verified_digest,
)

TRASH = "gc/"  # under the prefix: chunks gc is deleting
_NO_SCRATCH = Path(tempfile.gettempdir())  # S3Objects never uses scratch space
_NOT_FOUND = frozenset({"404", "NoSuchKey", "NotFound"})
_TRANSIENT = frozenset({"500", "502", "503", "504", "InternalError", "ServiceUnavailable", "SlowDown",
                        "RequestTimeout", "RequestTimeTooSkewed", "Throttling"})
# Below this many digests, present() asks with HEADs (one request each); above, with LISTs by prefix.
# A LIST page carries up to 1000 keys; with 16 first-hex-digit prefixes listed in parallel the listing
# costs about 16 + chunks_in_store/1000 requests (bench/s3.py measures both, docs/design.md).
_HEAD_LIMIT = 64
_THREADS = 16
# A writer expecting at least this many chunks lists the store (about 16 + chunks_in_store/1000 requests)
# instead of asking one HEAD per chunk: an import lists, a small capture asks.
LIST_FROM = 256


def make_client(endpoint_url: str | None, region_name: str | None = None) -> Any:
    """A boto3 S3 client. Credentials come from boto3's usual chain (environment, profiles, instance
    roles), never from Stratus's configuration."""
    return boto3.session.Session().client(
        "s3",
        endpoint_url=endpoint_url,
        region_name=region_name or "us-east-1",
        config=Config(
            s3={"addressing_style": "path"},
            signature_version="s3v4",
            retries={"max_attempts": 4, "mode": "standard"},
            connect_timeout=5,
            read_timeout=60,
            max_pool_connections=32,
            # We verify every chunk with BLAKE3; botocore's default trailing CRC (aws-chunked uploads) is
            # not understood by every S3-compatible server.
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        ),
    )


class S3Store:
    """Chunks as objects under ``prefix`` in ``bucket``. See the module docstring for the layout and rules.

    ``scratch_dir`` is local scratch space (conversions, exports). ``quiet(since)`` tells gc whether no
    chunk-writing work has run since ``since``; without it, gc deletes nothing (the safe default).
    """

    def __init__(
        self,
        *,
        bucket: str,
        scratch_dir: Path | str,
        endpoint_url: str | None = None,
        prefix: str = "chunks/",
        region_name: str | None = None,
        retry_seconds: float = 60.0,
        quiet: Callable[[float], bool] | None = None,
        client: Any = None,
    ) -> None:
        if prefix and not prefix.endswith("/"):
            prefix += "/"
        self.bucket = bucket
        self.prefix = prefix
        self.endpoint_url = endpoint_url
        self.retry_seconds = retry_seconds
        self.quiet = quiet
        # Each request waits on the server; on Swift here 8-16 in flight carry 3x what 1 does (bench/s3.py).
        self.concurrency = 16
        self.scratch_dir = Path(scratch_dir)
        self.scratch_dir.mkdir(parents=True, exist_ok=True)
        self.requests = 0  # S3 requests made (bench/s3.py reports requests per GiB)
        self.list_page = 1000  # keys per LIST request (S3's maximum)
        self._count_lock = threading.Lock()
        self.client = client or make_client(endpoint_url, region_name)

    def __repr__(self) -> str:
        return f"S3Store({self.describe()!r})"

    def describe(self) -> str:
        return f"s3 bucket {self.bucket!r} prefix {self.prefix!r} at {self.endpoint_url or 'AWS'}"

    # --- keys

    def key_for(self, digest: str) -> str:
        d = check_digest(digest)
        return f"{self.prefix}{d[:2]}/{d}"

    def _trash_key(self, digest: str) -> str:
        return f"{self.prefix}{TRASH}{digest}"

    # --- requests, retried

    def _call(self, op: str, **kwargs: Any) -> Any:
        """One S3 request, retried with backoff on transient failures until ``retry_seconds`` pass.
        ClientErrors that are answers (404, 403, 400…) go to the caller at once."""
        deadline = time.monotonic() + self.retry_seconds
        delay = 0.25
        attempt = 0
        while True:
            attempt += 1
            with self._count_lock:
                self.requests += 1
            try:
                return getattr(self.client, op)(**kwargs)
            except ClientError as exc:
                code = _code(exc)
                if code not in _TRANSIENT:
                    raise
                last: Exception = exc
            except BotoCoreError as exc:  # connection refused/reset, timeouts, incomplete reads
                last = exc
            if time.monotonic() + delay > deadline:
                raise StoreUnavailable(
                    f"the S3 store {self.endpoint_url or 'AWS'} bucket {self.bucket!r} failed {attempt} times "
                    f"in {self.retry_seconds:g} s ({op}): {last}. Check that the store is running and reachable "
                    "from this host (limits.store_retry_seconds sets how long to wait), then try again"
                ) from last
            time.sleep(delay)
            delay = min(delay * 2, 5.0)

    def check(self) -> None:
        """Raise StoreUnavailable unless the bucket answers (startup check)."""
        try:
            self._call("head_bucket", Bucket=self.bucket)
        except ClientError as exc:
            what = "does not exist" if _code(exc) in _NOT_FOUND else f"answered {_code(exc)}"
            raise StoreUnavailable(f"bucket {self.bucket!r} at {self.endpoint_url or 'AWS'} {what}") from exc

    def _head(self, key: str) -> dict[str, Any] | None:
        try:
            return self._call("head_object", Bucket=self.bucket, Key=key)
        except ClientError as exc:
            if _code(exc) in _NOT_FOUND:
                return None
            raise StoreError(f"HEAD {key}: {exc}") from exc

    # --- the store verbs

    def has(self, digest: str) -> bool:
        return self._head(self.key_for(digest)) is not None

    def stat(self, digest: str) -> ChunkInfo | None:
        head = self._head(self.key_for(digest))
        if head is None:
            return None
        return ChunkInfo(digest, int(head["ContentLength"]), head["LastModified"].timestamp())

    def put(self, digest: str, data: bytes | bytearray | memoryview) -> bool:
        """Store ``data`` under ``digest``; True if newly written, False if already there. ChunkCorrupt if
        the bytes don't hash to the digest, ZeroChunk if all zeros (nothing is written either way)."""
        verified_digest(digest, data)
        if self.has(digest):
            return False
        self._put_object(digest, data)
        return True

    def _put_object(self, digest: str, data: bytes | bytearray | memoryview) -> None:
        self._call("put_object", Bucket=self.bucket, Key=self.key_for(digest), Body=bytes(data))

    def write_decoy(self, data: bytes | bytearray | memoryview) -> None:
        """PUT ``data`` under a throwaway key and DELETE it: what a present chunk costs a writer that must
        not reveal it was present (see :meth:`ChunkStore.writer`). A crash in between leaves one object
        under ``decoy/``, outside the chunk namespace."""
        key = f"{self.prefix}decoy/{secrets.token_hex(8)}"
        self._call("put_object", Bucket=self.bucket, Key=key, Body=bytes(data))
        self._call("delete_object", Bucket=self.bucket, Key=key)

    def get(self, digest: str) -> bytes:
        """The chunk's bytes, re-hashed: ChunkMissing if absent, ChunkCorrupt if they don't match."""
        key = self.key_for(digest)
        deadline = time.monotonic() + self.retry_seconds
        while True:
            try:
                resp = self._call("get_object", Bucket=self.bucket, Key=key)
            except ClientError as exc:
                if _code(exc) in _NOT_FOUND:
                    raise ChunkMissing(digest) from None
                raise StoreError(f"GET {key}: {exc}") from exc
            if int(resp["ContentLength"]) > MAX_CHUNK_SIZE:
                resp["Body"].close()
                raise ChunkCorrupt(digest, None, f"object is larger than the largest chunk ({MAX_CHUNK_SIZE} B)")
            try:
                data: bytes = resp["Body"].read()
                break
            except BotoCoreError as exc:  # the connection broke mid-body: read it again
                if time.monotonic() > deadline:
                    raise StoreUnavailable(f"reading {key} from bucket {self.bucket!r}: {exc}") from exc
                time.sleep(0.5)
        actual = blake3.blake3(data).hexdigest()
        if actual != digest:
            raise ChunkCorrupt(digest, actual)
        return data

    def verify(self, digest: str) -> bool:
        """Re-hash the stored chunk: True if intact, False if damaged; ChunkMissing if absent."""
        try:
            self.get(digest)
        except ChunkCorrupt:
            return False
        return True

    def touch(self, digest: str) -> bool:
        """True if the chunk is present. S3 has no cheap way to refresh LastModified; gc's guarantee
        comes from the catalog instead (see the module docstring)."""
        return self.has(digest)

    def present(self, digests: Collection[str]) -> dict[str, int]:
        """The sizes of the chunks of ``digests`` the store has: HEADs for a few, LISTs for many."""
        wanted = set(dict.fromkeys(check_digest(d) for d in digests))
        if not wanted:
            return {}
        if len(wanted) <= _HEAD_LIMIT:
            with ThreadPoolExecutor(max_workers=_THREADS, thread_name_prefix="s3-head") as pool:
                infos = list(pool.map(self.stat, sorted(wanted)))
            return {i.digest: i.size for i in infos if i is not None}
        found: dict[str, int] = {}
        firsts = sorted({d[0] for d in wanted})
        with ThreadPoolExecutor(max_workers=_THREADS, thread_name_prefix="s3-list") as pool:
            for listed in pool.map(lambda c: list(self._list_chunks(self.prefix + c)), firsts):
                found.update((i.digest, i.size) for i in listed if i.digest in wanted)
        return found

    def delete(self, digest: str, *, unless_touched_since: float | None = None,
               planned_at: float | None = None) -> bool:
        """Remove a chunk; True if this call removed it.

        With ``unless_touched_since`` (gc): kept if its LastModified is at or after that time; otherwise
        moved aside, deleted, and put back unless ``quiet(planned_at)`` confirms that no task of the
        region ran since gc planned (then no writer can have counted on it). Without a ``quiet`` hook,
        nothing is deleted this way.
        """
        key = self.key_for(digest)
        if unless_touched_since is None:
            if self._head(key) is None:
                return False
            self._call("delete_object", Bucket=self.bucket, Key=key)
            return True
        if self.quiet is None:
            return False
        head = self._head(key)
        if head is None or head["LastModified"].timestamp() >= unless_touched_since:
            return False
        since = planned_at if planned_at is not None else unless_touched_since
        trash = self._trash_key(digest)
        try:
            self._call("copy_object", Bucket=self.bucket, Key=trash,
                       CopySource={"Bucket": self.bucket, "Key": key})
        except ClientError as exc:
            if _code(exc) in _NOT_FOUND:
                return False  # deleted meanwhile
            raise
        self._call("delete_object", Bucket=self.bucket, Key=key)
        if not self.quiet(since):
            self._restore(digest)
            return False
        self._call("delete_object", Bucket=self.bucket, Key=trash)
        return True

    def _restore(self, digest: str) -> None:
        """Put a chunk caught mid-delete back under its name (a writer may have re-created it: same bytes)."""
        trash = self._trash_key(digest)
        if self._head(self.key_for(digest)) is None:
            self._call("copy_object", Bucket=self.bucket, Key=self.key_for(digest),
                       CopySource={"Bucket": self.bucket, "Key": trash})
        self._call("delete_object", Bucket=self.bucket, Key=trash)

    def writer(self, expected: int | None = None, *, conceal_present: bool = False) -> S3ChunkWriter:
        """A batch writer; ``expected`` (how many chunks the batch may write) picks how it learns which
        the store has: a LIST of the store when the batch is large, a HEAD per chunk when it is small."""
        return S3ChunkWriter(self, list_store=(expected or 0) >= LIST_FROM, conceal_present=conceal_present)

    # --- listing

    def _list(self, prefix: str) -> Iterator[dict[str, Any]]:
        token: str | None = None
        while True:
            kwargs: dict[str, Any] = {"Bucket": self.bucket, "Prefix": prefix, "MaxKeys": self.list_page}
            if token:
                kwargs["ContinuationToken"] = token
            page = self._call("list_objects_v2", **kwargs)
            yield from page.get("Contents", ())
            if not page.get("IsTruncated"):
                return
            token = page["NextContinuationToken"]

    def _list_chunks(self, prefix: str) -> Iterator[ChunkInfo]:
        for obj in self._list(prefix):
            rest = obj["Key"][len(self.prefix):]
            name = rest[3:]
            if len(rest) == 67 and rest[2] == "/" and is_digest(name) and name.startswith(rest[:2]):
                yield ChunkInfo(name, int(obj["Size"]), obj["LastModified"].timestamp())

    def scan(self) -> Iterator[ChunkInfo | TempFile]:
        """Every chunk, then every chunk caught mid-delete (``trash``); anything else is ignored."""
        yield from self._list_chunks(self.prefix)
        for obj in self._list(self.prefix + TRASH):
            name = obj["Key"][len(self.prefix) + len(TRASH):]
            if is_digest(name):
                yield TempFile(Path(obj["Key"]), "trash", int(obj["Size"]), obj["LastModified"].timestamp(), name)

    def iter_chunks(self) -> Iterator[ChunkInfo]:
        yield from self._list_chunks(self.prefix)

    def iter_temp_files(self) -> Iterator[TempFile]:
        return temp_files(self.scan())

    def stats(self) -> StoreStats:
        return StoreStats.of(self.scan())

    def remove_temp(self, temp: TempFile) -> bool:
        """Restore a chunk gc was deleting when it died (restoring is always safe)."""
        if temp.kind != "trash" or temp.digest is None:
            return False
        try:
            self._restore(temp.digest)
        except ClientError as exc:
            if _code(exc) in _NOT_FOUND:
                return False
            raise
        return True


class S3ChunkWriter(ChunkBatch):
    """A batch of chunk writes. Each PUT is durable when it returns, so :meth:`commit` has nothing to do.
    Thread-safe.

    For a large batch (``list_store``), which chunks the store already has is learnt by listing, not by
    a HEAD per chunk (a HEAD costs about as much as a small PUT on Swift, bench/s3.py): the first chunk
    whose digest starts with a given hex digit lists that sixteenth of the store once (1000 keys per
    request); later chunks in it cost no request to decide. A small batch asks a HEAD per chunk, which
    costs less than listing a large store. A chunk gc deletes after the listing is put back by gc
    itself, since this writer's task is running (see :meth:`S3Store.delete`).
    """

    def __init__(self, store: S3Store, *, list_store: bool = True, conceal_present: bool = False) -> None:
        super().__init__(conceal_present=conceal_present, write_decoy=store.write_decoy)
        self.store = store
        self.list_store = list_store
        self._listed: dict[str, threading.Event] = {}
        self._known: set[str] = set()

    def _write(self, digest: str, data: Data) -> None:
        self.store._put_object(digest, data)

    def _present(self, digest: str) -> bool:
        if not self.list_store:
            return self.store.has(digest)
        shard = digest[0]
        with self._lock:
            ready = self._listed.get(shard)
            lister = ready is None
            if lister:
                ready = self._listed[shard] = threading.Event()
        assert ready is not None
        if lister:
            try:
                found = {c.digest for c in self.store._list_chunks(self.store.prefix + shard)}
            except BaseException:
                with self._lock:
                    del self._listed[shard]
                ready.set()
                raise
            with self._lock:
                self._known |= found
            ready.set()
        else:
            ready.wait()
            if shard not in self._listed:  # the lister failed: ask this one directly
                return self.store.has(digest)
        with self._lock:
            return digest in self._known

    def commit(self) -> None:
        """Every PUT that returned is durable already."""


class S3Objects:
    """Exported files as objects under ``prefix`` in ``bucket`` (an export bucket kept in S3). The owner
    still downloads through Stratus, with the same authorization as from a directory: the server streams
    the object (``read`` with a byte range)."""

    def __init__(self, *, bucket: str, endpoint_url: str | None = None, prefix: str = "exports/",
                 retry_seconds: float = 60.0, client: Any = None) -> None:
        # An S3Store over the same bucket lends its retrying request helper; its chunk verbs are unused.
        self._s3 = S3Store(bucket=bucket, endpoint_url=endpoint_url, prefix="", scratch_dir=_NO_SCRATCH,
                           retry_seconds=retry_seconds, client=client)
        self.bucket = bucket
        self.prefix = prefix if not prefix or prefix.endswith("/") else prefix + "/"
        self.endpoint_url = endpoint_url

    def check(self) -> None:
        self._s3.check()

    def upload(self, path: Path, key: str) -> None:
        """Upload a local file (multipart for large files, boto3's default transfer settings)."""
        deadline = time.monotonic() + self._s3.retry_seconds
        while True:
            try:
                self._s3.client.upload_file(str(path), self.bucket, self.prefix + key)
                return
            except Exception as exc:  # s3transfer wraps botocore's errors in its own types
                if time.monotonic() > deadline:
                    raise StoreUnavailable(f"uploading {key} to bucket {self.bucket!r} at "
                                           f"{self.endpoint_url or 'AWS'}: {exc}") from exc
                time.sleep(1.0)

    def size(self, key: str) -> int | None:
        head = self._s3._head(self.prefix + key)
        return None if head is None else int(head["ContentLength"])

    def read(self, key: str, start: int, end: int) -> Iterator[bytes]:
        """Bytes ``start``..``end`` (inclusive) of the object, in pieces."""
        resp = self._s3._call("get_object", Bucket=self.bucket, Key=self.prefix + key, Range=f"bytes={start}-{end}")
        body = resp["Body"]
        try:
            yield from body.iter_chunks(1 << 20)
        finally:
            body.close()

    def delete(self, key: str) -> None:
        self._s3._call("delete_object", Bucket=self.bucket, Key=self.prefix + key)


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", "")) or str(
        exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", "")
    )


__all__ = ["S3ChunkWriter", "S3Objects", "S3Store", "make_client"]
