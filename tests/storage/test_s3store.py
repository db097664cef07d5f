"""S3Store: the store conformance suite (tests/storage/store_suite.py) on the real Swift s3api server, then
what is particular to an object store: key layout, gc's move-aside delete, retries when the endpoint goes
away, the startup check."""

from __future__ import annotations

import os
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import blake3
import pytest

from stratus.storage.chunkstore import StoreUnavailable
from stratus.storage.s3store import S3Store
from tests.s3server import ACCESS_KEY, SECRET_KEY, SwiftS3
from tests.storage.store_suite import *  # noqa: F403 - the conformance suite runs here on Swift s3api


def digest(data: bytes) -> str:
    return blake3.blake3(data).hexdigest()


@pytest.fixture(autouse=True)
def _credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    # boto3's usual sources, as an operator would set them.
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)


@pytest.fixture(scope="module")
def bucket(swift: SwiftS3) -> str:
    return swift.create_bucket(f"suite-{uuid.uuid4().hex[:8]}")


def make_store(swift: SwiftS3, bucket: str, tmp_path: Path, **kw: Any) -> S3Store:
    kw.setdefault("quiet", lambda since: True)
    return S3Store(bucket=bucket, endpoint_url=swift.endpoint_url, prefix=f"t-{uuid.uuid4().hex[:8]}/chunks/",
                   scratch_dir=tmp_path / "scratch", **kw)


@pytest.fixture
def store(swift: SwiftS3, bucket: str, tmp_path: Path) -> S3Store:
    return make_store(swift, bucket, tmp_path)


class ObjectBackdoor:
    def __init__(self, swift: SwiftS3, store: S3Store) -> None:
        self.client = swift.client()
        self.store = store

    def overwrite(self, digest: str, data: bytes) -> None:
        self.client.put_object(Bucket=self.store.bucket, Key=self.store.key_for(digest), Body=data)

    def exists(self, digest: str) -> bool:
        resp = self.client.list_objects_v2(Bucket=self.store.bucket, Prefix=self.store.key_for(digest))
        return bool(resp.get("Contents"))


@pytest.fixture
def backdoor(swift: SwiftS3, store: S3Store) -> ObjectBackdoor:
    return ObjectBackdoor(swift, store)


def test_key_layout_is_content_addressed(store: S3Store, swift: SwiftS3) -> None:
    data = os.urandom(5000)
    d = digest(data)
    store.put(d, data)
    body = swift.client().get_object(Bucket=store.bucket, Key=f"{store.prefix}{d[:2]}/{d}")["Body"].read()
    assert body == data and digest(body) == d  # any S3 client can check a chunk by its key


def test_foreign_objects_are_not_chunks(store: S3Store, swift: SwiftS3) -> None:
    data = os.urandom(100)
    d = digest(data)
    c = swift.client()
    c.put_object(Bucket=store.bucket, Key=f"{store.prefix}zz/{d}", Body=data)  # wrong shard
    c.put_object(Bucket=store.bucket, Key=f"{store.prefix}{d[:2]}/notes.txt", Body=b"x")
    c.put_object(Bucket=store.bucket, Key=f"{store.prefix}{d[:2]}/{d}.bak", Body=data)
    assert list(store.scan()) == []
    assert store.present([d] * 100) == {}


def test_present_lists_instead_of_one_head_per_chunk(store: S3Store) -> None:
    blobs = [os.urandom(300 + i) for i in range(400)]
    with store.writer() as w:
        for b in blobs[:200]:
            w.put_data(b)
    before = store.requests
    found = store.present([digest(b) for b in blobs])
    assert found == {digest(b): len(b) for b in blobs[:200]}
    # 400 digests spread over 16 first hex digits: 16 LIST pages, not 400 HEADs (a few more if a busy
    # server asked for a retry).
    assert store.requests - before < 40


def test_small_batches_ask_large_batches_list(store: S3Store) -> None:
    from stratus.storage.s3store import LIST_FROM

    old = os.urandom(1000)
    store.put(digest(old), old)
    before = store.requests
    with store.writer(expected=3) as w:  # a small capture: one HEAD per chunk, no listing
        w.put_data(old)
    assert store.requests - before == 1
    before = store.requests
    with store.writer(expected=LIST_FROM) as w:  # an import: one LIST for this sixteenth of the store
        assert w.put_data(old) == (digest(old), False)
    assert store.requests - before == 1


def test_listing_follows_continuation_tokens(store: S3Store) -> None:
    """S3 returns at most 1000 keys per LIST; with 7 per page, 30 chunks take several pages."""
    store.list_page = 7
    blobs = [os.urandom(100 + i) for i in range(30)]
    with store.writer(expected=1000) as w:
        for b in blobs:
            w.put_data(b)
    before = store.requests
    assert sorted(c.digest for c in store.iter_chunks()) == sorted(digest(b) for b in blobs)
    assert store.requests - before >= 5
    assert store.present([digest(b) for b in blobs] + ["f" * 64] * 70) == {digest(b): len(b) for b in blobs}


def test_gc_delete_puts_the_chunk_back_unless_quiet(swift: SwiftS3, bucket: str, tmp_path: Path) -> None:
    """gc moves a chunk aside, deletes it, and restores it if any task ran since gc planned: a writer that
    reused it in that window loses nothing. Without a quiet hook (no catalog), gc deletes nothing."""
    asked: list[float] = []

    def busy(since: float) -> bool:
        asked.append(since)
        return False

    store = make_store(swift, bucket, tmp_path, quiet=busy)
    data = os.urandom(2000)
    d = digest(data)
    store.put(d, data)
    assert store.delete(d, unless_touched_since=time.time() + 60, planned_at=123.0) is False
    assert asked == [123.0]
    assert store.get(d) == data
    assert [c.digest for c in store.scan()] == [d]  # no gc/ leftover
    blind = make_store(swift, bucket, tmp_path, quiet=None)
    blind.put(d, data)
    assert blind.delete(d, unless_touched_since=time.time() + 60) is False
    assert blind.has(d)


def test_interrupted_gc_delete_is_restored(store: S3Store, swift: SwiftS3) -> None:
    data = os.urandom(700)
    d = digest(data)
    store.put(d, data)
    c = swift.client()
    # A gc that died between its move-aside copy and its delete's end: only the gc/ copy is left.
    c.copy_object(Bucket=store.bucket, Key=f"{store.prefix}gc/{d}",
                  CopySource={"Bucket": store.bucket, "Key": store.key_for(d)})
    c.delete_object(Bucket=store.bucket, Key=store.key_for(d))
    temps = list(store.iter_temp_files())
    assert [(t.kind, t.digest) for t in temps] == [("trash", d)]
    assert store.remove_temp(temps[0]) is True
    assert store.get(d) == data
    assert list(store.iter_temp_files()) == []


def test_startup_check_names_the_bucket(swift: SwiftS3, tmp_path: Path) -> None:
    store = S3Store(bucket="no-such-bucket", endpoint_url=swift.endpoint_url, scratch_dir=tmp_path)
    with pytest.raises(StoreUnavailable, match="'no-such-bucket' at http://127.0.0.1:.* does not exist"):
        store.check()
    dead = S3Store(bucket="b", endpoint_url="http://127.0.0.1:9", scratch_dir=tmp_path, retry_seconds=1)
    with pytest.raises(StoreUnavailable, match="127.0.0.1:9 bucket 'b' failed"):
        dead.check()


def test_requests_are_retried_while_the_endpoint_is_away(store: S3Store, swift: SwiftS3) -> None:
    """The proxy stops and comes back 3 s later on the same port: the PUT and GET in between succeed."""
    data = os.urandom(4000)
    d = digest(data)
    swift.stop_proxy()
    restarter = threading.Timer(3.0, swift.start_proxy)
    restarter.start()
    try:
        t0 = time.monotonic()
        assert store.put(d, data) is True
        assert time.monotonic() - t0 > 2.0  # it really waited for the endpoint
        assert store.get(d) == data
    finally:
        restarter.join()


def test_gives_up_with_a_reason_when_the_endpoint_stays_away(swift: SwiftS3, bucket: str, tmp_path: Path) -> None:
    store = make_store(swift, bucket, tmp_path, retry_seconds=2)
    data = os.urandom(100)
    swift.stop_proxy()
    try:
        with pytest.raises(StoreUnavailable, match=f"bucket '{bucket}' failed .* times in 2 s"):
            store.put(digest(data), data)
    finally:
        swift.start_proxy()
