"""Regions whose chunk stores are S3 buckets (the real Swift s3api server of tests/s3server.py), end to end:
round trips of every format, SyncImages between two buckets with only the missing chunks crossing, gc
and fsck on a bucket, the object store going away in the middle of an import and of a copy, and the
start-up error for a bucket that isn't there."""

from __future__ import annotations

import json
import os
import random
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import blake3
import pytest

from stratus.disk import qemu_img
from tests import hostile
from tests.conftest import STRATUS, Account, Server, make_server, new_db_url, wait_for
from tests.e2e.helpers import describe, file_server, import_request, wait_image, wait_task
from tests.e2e.test_authz_matrix import make_accounts
from tests.e2e.test_sync import chunk_sizes, random_disk, start_sync, task_result
from tests.s3server import SwiftS3

MiB = 1024 * 1024
GZ, SH = "ap-guangzhou", "ap-shanghai"


def s3_regions(swift: SwiftS3, gz_bucket: str, sh_bucket: str) -> str:
    return (
        f'[[regions]]\nname = "{GZ}"\nzones = ["{GZ}-1", "{GZ}-2"]\n'
        # Exports of this region go to the same bucket under exports/ (streamed back through Stratus).
        f'buckets = [{{ name = "stratus-exports", type = "s3", endpoint_url = "{swift.endpoint_url}", '
        f'bucket = "{gz_bucket}", prefix = "exports/" }}]\n'
        f'store = {{ type = "s3", endpoint_url = "{swift.endpoint_url}", bucket = "{gz_bucket}", '
        'prefix = "chunks/" }\n'
        f'[[regions]]\nname = "{SH}"\nzones = ["{SH}-1"]\n'
        f'store = {{ type = "s3", endpoint_url = "{swift.endpoint_url}", bucket = "{sh_bucket}" }}\n'
    )


@pytest.fixture(scope="module")
def buckets(swift: SwiftS3) -> tuple[str, str]:
    tag = uuid.uuid4().hex[:6]
    return swift.create_bucket(f"gz-{tag}"), swift.create_bucket(f"sh-{tag}")


@pytest.fixture(scope="module")
def s3server(tmp_path_factory: pytest.TempPathFactory, db_url: str, swift: SwiftS3,
             buckets: tuple[str, str]) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("s3server")
    # Slow enough that a copy is caught in the middle; retries outlast a proxy restart on a busy machine.
    srv = make_server(tmp, db_url, config_extra="sync_bytes_per_second = 8388608\nstore_retry_seconds = 90\n"
                      + s3_regions(swift, *buckets),
                      env_extra={"STRATUS_IMPORT_URL_ALLOW": "127.0.0.2/32", **swift.env()})
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def web(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str]]:
    directory = tmp_path_factory.mktemp("s3-images")
    with file_server(directory, "127.0.0.2") as (url, _hits):
        yield directory, url


@pytest.fixture(scope="module")
def alice(s3server: Server) -> Account:
    return make_accounts(s3server, ("alice",))["alice"]


def objects(swift: SwiftS3, bucket: str, prefix: str = "chunks/") -> dict[str, int]:
    """digest → size of every chunk object in the bucket, listed with boto3 directly (the oracle)."""
    out: dict[str, int] = {}
    for page in swift.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", ()):
            name = obj["Key"].rsplit("/", 1)[-1]
            if len(name) == 64:
                out[name] = obj["Size"]
    return out


def import_url(srv: Server, acct: Account, name: str, url: str, region: str = GZ) -> str:
    return srv.client(acct, region).ImportImage(import_request(name, url)).ImageId


def admin(srv: Server, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return srv.run(*args, "--data-dir", str(srv.data_dir), "--config", str(srv.config), check=check)


# --------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("fmt", ["raw", "qcow2", "qcow2-compressed", "vmdk", "vmdk-stream", "vhd"])
def test_round_trip_through_a_bucket(s3server: Server, swift: SwiftS3, buckets: tuple[str, str], alice: Account,
                                     web: tuple[Path, str], fmt: str, tmp_path: Path) -> None:
    size = 9 * MiB + 65536 * 3
    src = hostile.make_test_disk(web[0], fmt, size, seed=40 + len(fmt))
    reference = hostile.make_test_disk(tmp_path, "raw", size, seed=40 + len(fmt))
    image_id = import_url(s3server, alice, f"s3-{fmt}", f"{web[1]}/{src.name}")
    image = wait_image(s3server, alice, image_id)
    assert image["ImageState"] == "NORMAL", image["ImageStateReason"]
    # Every data chunk of the disk is an object in the region's bucket, nothing in a local store.
    expected = chunk_sizes(reference, MiB)
    assert expected and set(expected) <= set(objects(swift, buckets[0]))
    assert not list((s3server.data_dir / "regions" / GZ / "store").glob("chunks/*"))
    exports = [("RAW", "raw"), ("QCOW2", "qcow2"), ("VMDK", "vmdk"), ("VHD", "vpc")] if fmt == "qcow2" \
        else [("RAW", "raw")]
    for out_fmt, driver in exports:
        req = {"BucketName": "stratus-exports", "ImageIds": [image_id], "ExportFormat": out_fmt}
        resp = s3server.common(alice).call_json("ExportImages", req)["Response"]
        assert wait_task(s3server, alice, resp["TaskId"])["TaskState"] == "SUCCESS"
        # The export lives in S3 (under exports/), not in the local bucket directory.
        listed = swift.client().list_objects_v2(Bucket=buckets[0], Prefix="exports/").get("Contents", [])
        assert "exports/" + resp["CosPaths"][0].lstrip("/") in {o["Key"] for o in listed}
        assert not [p for p in (s3server.data_dir / "regions" / GZ / "buckets").rglob("*") if p.is_file()]
        out = tmp_path / f"out.{out_fmt.lower()}"
        s3server.run("image", "export", image_id, "--format", out_fmt.lower(), "-o", str(out), "--whole-file",
                     env=alice.env())
        assert qemu_img.compare(reference, "raw", out, driver), f"{fmt} → {out_fmt} differs"


# --------------------------------------------------------------------------- copies between buckets


def test_sync_between_two_buckets_sends_only_missing_chunks(s3server: Server, swift: SwiftS3,
                                                             buckets: tuple[str, str], alice: Account,
                                                             web: tuple[Path, str]) -> None:
    size = 12 * MiB
    base = random_disk(web[0] / "s3base.raw", size, seed=301, holes=(4 * MiB,))
    derived = web[0] / "s3derived.raw"
    data = bytearray(base.read_bytes())
    rng = random.Random(302)
    for offset in (1 * MiB, 7 * MiB):
        data[offset:offset + MiB] = rng.randbytes(MiB)
    derived.write_bytes(bytes(data))
    base_chunks, derived_chunks = chunk_sizes(base, MiB), chunk_sizes(derived, MiB)
    new = {d: n for d, n in derived_chunks.items() if d not in base_chunks}
    assert len(new) == 2

    b = import_url(s3server, alice, "s3-base", f"{web[1]}/{base.name}")
    assert wait_image(s3server, alice, b)["ImageState"] == "NORMAL"
    [bc] = start_sync(s3server, alice, b, [SH])
    assert task_result(s3server, alice, bc["TaskId"])["BytesCopied"] == sum(base_chunks.values())
    d = import_url(s3server, alice, "s3-derived", f"{web[1]}/{derived.name}")
    assert wait_image(s3server, alice, d)["ImageState"] == "NORMAL"
    [dc] = start_sync(s3server, alice, d, [SH])
    result = task_result(s3server, alice, dc["TaskId"])
    assert (result["ChunksCopied"], result["BytesCopied"]) == (2, 2 * MiB)
    assert result["ChunksPresent"] == len(derived_chunks) - 2
    assert wait_image(s3server, alice, dc["ImageId"], region=SH)["ImageState"] == "NORMAL"
    assert set(derived_chunks) <= set(objects(swift, buckets[1]))


# --------------------------------------------------------------------------- gc and fsck


def test_gc_and_fsck_on_a_bucket(s3server: Server, swift: SwiftS3, buckets: tuple[str, str], alice: Account,
                                 web: tuple[Path, str]) -> None:
    keep = random_disk(web[0] / "gc-keep.raw", 3 * MiB, seed=501)
    drop = random_disk(web[0] / "gc-drop.raw", 3 * MiB, seed=502)
    keep_id = import_url(s3server, alice, "s3-gc-keep", f"{web[1]}/{keep.name}")
    drop_id = import_url(s3server, alice, "s3-gc-drop", f"{web[1]}/{drop.name}")
    for image_id in (keep_id, drop_id):
        assert wait_image(s3server, alice, image_id)["ImageState"] == "NORMAL"
    kept, dropped = set(chunk_sizes(keep, MiB)), set(chunk_sizes(drop, MiB))
    s3server.run("image", "delete", drop_id, env=alice.env())
    wait_for(lambda: describe(s3server, alice, drop_id) is None, what="the delete")
    before = set(objects(swift, buckets[0]))
    assert kept | dropped <= before
    admin(s3server, "gc")  # the default grace period: nothing this young goes
    assert set(objects(swift, buckets[0])) == before
    admin(s3server, "gc", "--grace", "0")
    after = set(objects(swift, buckets[0]))
    assert kept <= after and not (dropped & after)
    assert not objects(swift, buckets[0], "chunks/gc/")  # nothing left aside
    report = json.loads(admin(s3server, "fsck", "--json").stdout)
    gz = next(r for r in report if r["Region"] == GZ)
    assert gz["Damaged"] == {} and gz["Missing"] == {}
    # `stratus doctor` reads its sample of chunks from the bucket, not from the region's local scratch dir.
    checks = {c["check"]: c for c in json.loads(admin(s3server, "doctor", "--json").stdout)}
    assert checks[f"region {GZ} chunks"]["status"] == "ok", checks
    assert checks[f"region {GZ} chunks"]["detail"].endswith("sampled chunks verify"), checks
    # Damage one chunk behind the store's back: fsck names it and the image it belongs to.
    victim = sorted(kept)[0]
    swift.client().put_object(Bucket=buckets[0], Key=f"chunks/{victim[:2]}/{victim}", Body=b"rot")
    res = admin(s3server, "fsck", "--json", check=False)
    assert res.returncode == 4, res.stdout + res.stderr
    gz = next(r for r in json.loads(res.stdout) if r["Region"] == GZ)
    assert victim in gz["Damaged"] and any(keep_id in owner for owner in gz["Damaged"][victim])
    swift.client().put_object(Bucket=buckets[0], Key=f"chunks/{victim[:2]}/{victim}",
                              Body=_chunk_of(keep, victim))


def _chunk_of(path: Path, digest: str) -> bytes:
    with path.open("rb") as f:
        while block := f.read(MiB):
            if blake3.blake3(block).hexdigest() == digest:
                return block
    raise AssertionError(f"{digest} is not a chunk of {path}")


def test_gc_sweeps_nothing_while_a_task_of_the_region_runs(s3server: Server, swift: SwiftS3,
                                                           buckets: tuple[str, str],
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """Objects have no mtime an import can refresh when it reuses a chunk, so gc on a bucket puts back
    every chunk it deleted if any task of the region ran since it planned."""
    from sqlalchemy import delete

    from stratus.catalog.models import Task
    from stratus.config import load_settings
    from stratus.service.runtime import prepare
    from stratus.storage.gc import plan_gc
    from stratus.tasks.runner import enqueue

    for key, value in swift.env().items():
        monkeypatch.setenv(key, value)
    env = {**os.environ, **s3server.env}
    svc = prepare(load_settings(s3server.data_dir, s3server.config, env=env))
    store = svc.store(GZ)
    orphan = os.urandom(5000)
    digest = blake3.blake3(orphan).hexdigest()
    store.put(digest, orphan)
    # Planned a minute ahead, so the fresh orphan counts as old; every other chunk counts as referenced.
    others = {c.digest for c in store.iter_chunks()} - {digest}
    plan = plan_gc(store, others, grace_seconds=0, now=time.time() + 60)
    assert [c.digest for c in plan.to_delete] == [digest]
    with svc.db.write() as s:  # an import reusing chunks right now
        task = enqueue(s, "import", {"disks": []}, region=GZ)
        task.state, task.lease_owner, task.lease_expires_at = "RUNNING", "elsewhere", time.time() + 3600
        task_id = task.id
    try:
        result = plan.execute()
        assert result.deleted == 0 and store.get(digest) == orphan
        assert not objects(swift, buckets[0], "chunks/gc/")
    finally:
        with svc.db.write() as s:
            s.execute(delete(Task).where(Task.id == task_id))
    store.delete(digest)


# --------------------------------------------------------------------------- faults


def _bounce_proxy_when(swift: SwiftS3, ready: Any, down_seconds: float, state: Any) -> threading.Thread:
    """Stop the S3 endpoint as soon as ``ready()`` is true, start it again ``down_seconds`` later;
    ``seen`` records ``state()`` (the image's state) right after the stop."""
    seen: list[str] = []

    def run() -> None:
        wait_for(ready, timeout=120, interval=0.05, what="work in flight")
        swift.stop_proxy()
        seen.append(state())
        time.sleep(down_seconds)
        swift.start_proxy()

    thread = threading.Thread(target=run)
    thread.seen = seen  # type: ignore[attr-defined]
    thread.start()
    return thread


def test_store_away_mid_import_then_back(s3server: Server, swift: SwiftS3, buckets: tuple[str, str],
                                         alice: Account, web: tuple[Path, str], tmp_path: Path) -> None:
    disk = random_disk(web[0] / "fault-import.raw", 48 * MiB, seed=701)
    image_id = import_url(s3server, alice, "s3-fault-import", f"{web[1]}/{disk.name}")
    before = set(objects(swift, buckets[0]))

    def ingesting() -> bool:
        return len(set(objects(swift, buckets[0])) - before) >= 2  # chunks are landing in the bucket

    bounce = _bounce_proxy_when(swift, ingesting, 3.0, lambda: describe(s3server, alice, image_id)["ImageState"])
    bounce.join()
    assert bounce.seen == ["IMPORTING"], "the store must go away in the middle of the import"  # type: ignore[attr-defined]
    image = wait_image(s3server, alice, image_id, timeout=300)
    assert image["ImageState"] == "NORMAL", image["ImageStateReason"]
    assert set(chunk_sizes(disk, MiB)) <= set(objects(swift, buckets[0]))
    out = tmp_path / "back.raw"
    s3server.run("image", "export", image_id, "-o", str(out), env=alice.env())
    assert out.read_bytes() == disk.read_bytes()


def _start_copy(srv: Server, acct: Account, web: tuple[Path, str],
                disk: Path) -> tuple[str, dict[str, Any], Callable[[], bool]]:
    """Import ``disk`` and start its copy to SH: (source id, the copy, "is the copy 10 % along?")."""
    image_id = import_url(srv, acct, f"s3-{disk.stem}", f"{web[1]}/{disk.name}")
    assert wait_image(srv, acct, image_id)["ImageState"] == "NORMAL"
    [c] = start_sync(srv, acct, image_id, [SH])

    def copying() -> bool:
        image = describe(srv, acct, c["ImageId"], SH)
        return image is not None and image["ImageState"] == "SYNCING" and image["SyncPercent"] >= 10

    return image_id, c, copying


def test_store_away_mid_copy_then_back(s3server: Server, swift: SwiftS3, buckets: tuple[str, str],
                                       alice: Account, web: tuple[Path, str]) -> None:
    disk = random_disk(web[0] / "fault-copy.raw", 32 * MiB, seed=702)
    image_id, c, copying = _start_copy(s3server, alice, web, disk)
    bounce = _bounce_proxy_when(swift, copying, 3.0,
                                lambda: describe(s3server, alice, c["ImageId"], SH)["ImageState"])
    bounce.join()
    assert bounce.seen == ["SYNCING"], "the store must go away in the middle of the copy"  # type: ignore[attr-defined]
    image = wait_image(s3server, alice, c["ImageId"], region=SH, timeout=300)
    assert image["ImageState"] == "NORMAL", image["ImageStateReason"]
    assert set(chunk_sizes(disk, MiB)) <= set(objects(swift, buckets[1]))
    _intact(swift, buckets[1], chunk_sizes(disk, MiB))


@pytest.fixture(scope="module")
def short_buckets(swift: SwiftS3) -> tuple[str, str]:
    tag = uuid.uuid4().hex[:6]  # their own, so that fsck has only these tests' chunks to re-hash
    return swift.create_bucket(f"gz-short-{tag}"), swift.create_bucket(f"sh-short-{tag}")


@pytest.fixture(scope="module")
def short_server(tmp_path_factory: pytest.TempPathFactory, db_url: str, swift: SwiftS3,
                 short_buckets: tuple[str, str]) -> Iterator[Server]:
    """A server whose retry budget (2 s) a test can outlast: its tasks fail instead of waiting. Its own
    catalog: on the module's, the other server's workers (and their 90 s budget) would take its tasks."""
    assert db_url  # runs on both databases
    tmp = tmp_path_factory.mktemp("s3-short")
    srv = make_server(tmp, new_db_url(tmp),
                      config_extra="store_retry_seconds = 2\nsync_bytes_per_second = 8388608\n"
                      + s3_regions(swift, *short_buckets),
                      env_extra={"STRATUS_IMPORT_URL_ALLOW": "127.0.0.2/32", **swift.env()})
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


@contextmanager
def _store_away_when(swift: SwiftS3, ready: Any) -> Iterator[None]:
    """Stop the S3 endpoint as soon as ``ready()`` is true; start it again (same port) on leaving."""
    wait_for(ready, timeout=120, interval=0.05, what="work in flight")
    swift.stop_proxy()
    try:
        yield
    finally:
        swift.start_proxy()


def _intact(swift: SwiftS3, bucket: str, digests: Any) -> None:
    """Each chunk is in the bucket and its bytes hash to its name (read with boto3 directly, the oracle)."""
    client = swift.client()
    for d in digests:
        body = client.get_object(Bucket=bucket, Key=f"chunks/{d[:2]}/{d}")["Body"].read()
        assert blake3.blake3(body).hexdigest() == d


def _fsck_clean(srv: Server) -> None:
    """Every chunk every image names is in its bucket and intact (fsck re-hashes each object)."""
    res = admin(srv, "fsck", "--json", check=False)
    assert res.returncode == 0, res.stdout + res.stderr
    for region in json.loads(res.stdout):
        assert region["Missing"] == {} and region["Damaged"] == {}, region


def _names_the_store(reason: str, swift: SwiftS3, bucket: str | tuple[str, ...]) -> None:
    assert swift.endpoint_url in reason, reason
    assert any(f"bucket '{b}'" in reason for b in ((bucket,) if isinstance(bucket, str) else bucket)), reason
    assert "failed" in reason and "times in 2 s" in reason, reason


def test_store_away_for_good_mid_import_fails_it_with_a_reason(short_server: Server, swift: SwiftS3,
                                                               short_buckets: tuple[str, str],
                                                               web: tuple[Path, str]) -> None:
    acct = make_accounts(short_server, ("gone",))["gone"]
    disk = random_disk(web[0] / "fault-gone.raw", 48 * MiB, seed=703)
    before = set(objects(swift, short_buckets[0]))
    image_id = import_url(short_server, acct, "s3-gone", f"{web[1]}/{disk.name}")

    def ingesting() -> bool:
        return len(set(objects(swift, short_buckets[0])) - before) >= 2

    with _store_away_when(swift, ingesting):
        assert describe(short_server, acct, image_id)["ImageState"] == "IMPORTING"
        image = wait_image(short_server, acct, image_id, timeout=120)  # the store stays away past the budget
    assert image["ImageState"] == "IMPORTFAILED"
    assert image["ImageStateReason"].startswith("system disk: "), image["ImageStateReason"]
    _names_the_store(image["ImageStateReason"], swift, short_buckets[0])
    assert not set(chunk_sizes(disk, MiB)) <= set(objects(swift, short_buckets[0]))  # it did stop half-way
    _fsck_clean(short_server)  # no image names a chunk the bucket lacks


def test_store_away_for_good_mid_copy_fails_it_with_a_reason(short_server: Server, swift: SwiftS3,
                                                             short_buckets: tuple[str, str],
                                                             web: tuple[Path, str]) -> None:
    acct = make_accounts(short_server, ("gone-copy",))["gone-copy"]
    disk = random_disk(web[0] / "fault-gone-copy.raw", 32 * MiB, seed=704)
    image_id, c, copying = _start_copy(short_server, acct, web, disk)
    with _store_away_when(swift, copying):
        copy = wait_image(short_server, acct, c["ImageId"], region=SH, timeout=120)
    # The contract has no failed state for SYNCING: a copy that can't finish is CREATEFAILED (sync.py).
    assert copy["ImageState"] == "CREATEFAILED"
    assert copy["ImageStateReason"].startswith(f"sync of {image_id} from {GZ} failed: "), copy["ImageStateReason"]
    _names_the_store(copy["ImageStateReason"], swift, short_buckets)  # reading the source or writing the copy
    assert describe(short_server, acct, image_id)["ImageState"] == "NORMAL"  # the source is untouched
    _fsck_clean(short_server)


# --------------------------------------------------------------------------- start-up


def test_a_missing_bucket_stops_the_start_with_one_line(tmp_path: Path, db_url: str, swift: SwiftS3) -> None:
    srv = make_server(tmp_path, db_url, config_extra=s3_regions(swift, "no-such-gz", "no-such-sh"),
                      env_extra=swift.env())
    res = subprocess.run([STRATUS, "serve", "--data-dir", str(srv.data_dir), "--port", str(srv.port),
                          "--config", str(srv.config)], env=srv.env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 3
    err = res.stderr.strip()
    assert "Traceback" not in res.stderr and "Traceback" not in res.stdout
    assert f"region {GZ}" in err and swift.endpoint_url in err and "'no-such-gz'" in err, err
    assert "does not exist" in err
