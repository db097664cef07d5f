"""`stratus fsck` and `stratus gc` against a real server's store and catalog."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

from stratus.config import load_settings
from stratus.disk import qemu_img
from stratus.service.maintenance import plan_region_gc, referenced_manifests
from stratus.service.runtime import prepare
from stratus.tasks.runner import enqueue
from tests import hostile
from tests.conftest import Server
from tests.e2e.helpers import describe, wait_image

MiB = 1024 * 1024


def admin(server: Server, *args: str, check: bool = True):  # type: ignore[no-untyped-def]
    return server.run(*args, "--data-dir", str(server.data_dir), "--config", str(server.config), check=check)


def chunk_files(server: Server) -> dict[str, Path]:
    store = server.data_dir / "regions" / "ap-guangzhou" / "store" / "chunks"
    return {p.name: p for p in store.rglob("*") if p.is_file() and len(p.name) == 64}


def test_gc_sweeps_only_unreferenced_chunks_then_fsck_is_clean(server: Server, tmp_path: Path) -> None:
    acct = server.account("gc-user")
    keep = hostile.make_test_disk(tmp_path, "qcow2", 9 * MiB, seed=101)
    drop = hostile.make_test_disk(tmp_path, "raw", 9 * MiB, seed=102)
    keep_id = server.run("image", "import", str(keep), "--name", "gc-keep", env=acct.env()).stdout.split()[-1]
    drop_id = server.run("image", "import", str(drop), "--name", "gc-drop", env=acct.env()).stdout.split()[-1]
    svc = prepare(load_settings(server.data_dir, server.config, env={**os.environ, **server.env}))
    manifests = referenced_manifests(svc, "ap-guangzhou")
    keep_digest = describe(server, acct, keep_id)["DiskSet"][0]["ManifestDigest"]
    drop_digest = describe(server, acct, drop_id)["DiskSet"][0]["ManifestDigest"]
    kept_chunks = manifests[keep_digest].data_digests()
    dropped_chunks = manifests[drop_digest].data_digests() - kept_chunks
    assert kept_chunks and dropped_chunks
    server.run("image", "delete", drop_id, env=acct.env())
    # With the default grace period nothing this young is swept.
    plan = json.loads(admin(server, "gc", "--dry-run", "--json").stdout)
    assert plan[0]["Region"] == "ap-guangzhou"
    before = set(chunk_files(server))
    admin(server, "gc")
    assert set(chunk_files(server)) == before
    # With no grace period the deleted image's own chunks go, every referenced chunk stays.
    admin(server, "gc", "--grace", "0")
    after = set(chunk_files(server))
    assert kept_chunks <= after
    assert not (dropped_chunks & after)
    res = admin(server, "fsck", "--json")
    report = json.loads(res.stdout)
    assert report[0]["Damaged"] == {} and report[0]["Missing"] == {}


def test_fsck_names_the_image_of_a_damaged_chunk(server: Server, tmp_path: Path) -> None:
    acct = server.account("fsck-user")
    src = hostile.make_test_disk(tmp_path, "raw", 5 * MiB, seed=103)
    image_id = server.run("image", "import", str(src), "--name", "fsck-victim", env=acct.env()).stdout.split()[-1]
    svc = prepare(load_settings(server.data_dir, server.config, env={**os.environ, **server.env}))
    digest = describe(server, acct, image_id)["DiskSet"][0]["ManifestDigest"]
    victim = sorted(referenced_manifests(svc, "ap-guangzhou")[digest].data_digests())[0]
    path = chunk_files(server)[victim]
    data = bytearray(path.read_bytes())
    data[100] ^= 0xFF
    os.chmod(path, 0o644)
    path.write_bytes(bytes(data))
    try:
        res = admin(server, "fsck", check=False)
        assert res.returncode == 4
        assert victim in res.stdout and image_id in res.stdout
        # Export refuses to hand out damaged bytes: the chunk is verified when read.
        out = admin(server, "fsck", "--json", check=False)
        assert image_id + " disk 0" in json.loads(out.stdout)[0]["Damaged"][victim]
        res = server.run("image", "export", image_id, "-o", str(tmp_path / "x.raw"), env=acct.env(), check=False)
        assert res.returncode == 1 and victim in res.stderr and "stratus fsck" in res.stderr  # chunked: refused
        res = server.run("image", "export", image_id, "-o", str(tmp_path / "x.raw"), "--whole-file", env=acct.env(),
                         check=False)
        assert res.returncode == 3 and victim[:12] in res.stderr  # ExportImages: the task failed
    finally:
        data[100] ^= 0xFF
        path.write_bytes(bytes(data))
    assert admin(server, "fsck", check=False).returncode == 0


def test_gc_keeps_chunks_of_imports_in_flight(server: Server, tmp_path: Path) -> None:
    """A chunk written after an in-flight task started is kept even with no grace period: it may belong
    to a manifest that is not recorded yet."""
    svc = prepare(load_settings(server.data_dir, server.config, env={**os.environ, **server.env}))
    store = svc.store("ap-guangzhou")
    from blake3 import blake3

    old_data, new_data = os.urandom(4096), os.urandom(4096)
    old, new = blake3(old_data).hexdigest(), blake3(new_data).hexdigest()
    store.put(old, old_data)
    store.put(new, new_data)
    now = time.time()
    os.utime(store.path_for(old), (now - 600, now - 600))
    os.utime(store.path_for(new), (now - 60, now - 60))
    with svc.db.write() as s:
        task = enqueue(s, "import", {"disks": []}, region="ap-guangzhou")
        task.state = "RUNNING"
        task.started_at = now - 120
        task.lease_owner = "elsewhere"
        task.lease_expires_at = now + 3600
        task_id = task.id
    try:
        plan = plan_region_gc(svc, "ap-guangzhou", grace_seconds=0)
        doomed = {c.digest if hasattr(c, "digest") else c for c in plan.to_delete}
        assert old in doomed and new not in doomed
    finally:
        from sqlalchemy import delete

        from stratus.catalog.models import Task

        with svc.db.write() as s:
            s.execute(delete(Task).where(Task.id == task_id))
        store.delete(old)
        store.delete(new)


def test_instances_keep_what_they_stand_on_through_gc(server: Server, tmp_path: Path) -> None:
    """Delete an image, gc with no grace period: its instance's base manifest and chunks stay, so the
    instance can be captured, a new instance launched from the capture, and its base rebuilt on a host
    that lost it (another host)."""
    from tencentcloud.cvm.v20170312 import models

    from stratus.service.bases import base_path, ensure_base
    from tests.e2e.test_instances import qemu_io_write, req, run, wait_settled

    acct = server.account("gc-instance")
    src = hostile.make_test_disk(tmp_path, "qcow2", 12 * MiB, seed=111)
    image_id = server.run("image", "import", str(src), "--name", "gc-standing", env=acct.env()).stdout.split()[-1]
    base_digest = describe(server, acct, image_id)["DiskSet"][0]["ManifestDigest"]
    [iid] = run(server, acct, image_id, 1, SystemDisk={"DiskSize": 1})
    [inst] = wait_settled(server, acct, [iid])
    overlay = server.data_dir / "regions" / "ap-guangzhou" / "host" / "instances" / iid / \
        f"{inst['SystemDisk']['DiskId']}.qcow2"
    qemu_io_write(overlay, 2 * MiB, 1 * MiB, 0x5A)  # the "guest" changes one chunk
    server.run("image", "delete", image_id, env=acct.env())
    admin(server, "gc", "--grace", "0")
    assert json.loads(admin(server, "fsck", "--json").stdout)[0]["Missing"] == {}

    # A capture reads the base's manifest and chunks.
    c = server.client(acct)
    captured = c.CreateImage(req(models.CreateImageRequest, InstanceId=iid, ImageName="gc-captured")).ImageId
    image = wait_image(server, acct, captured)
    assert image["ImageState"] == "NORMAL", image["ImageStateReason"]
    expected = tmp_path / "expected.raw"
    subprocess.run(["qemu-img", "convert", "-f", "qcow2", "-O", "raw", str(overlay), str(expected)], check=True)
    out = tmp_path / "captured.raw"
    server.run("image", "export", captured, "-o", str(out), env=acct.env())
    assert qemu_img.compare(expected, "raw", out, "raw")
    # A new instance from the capture, and a reset to it: their base is built from chunks of the deleted image.
    [clone] = run(server, acct, captured, 1)
    assert wait_settled(server, acct, [clone])[0]["InstanceState"] == "RUNNING"
    c.ResetInstance(req(models.ResetInstanceRequest, InstanceId=iid, ImageId=captured))
    [after] = wait_settled(server, acct, [iid])
    assert after["LatestOperationState"] == "SUCCESS", after
    # Another host has no base file: it is rebuilt from the manifest and chunks the instance stood on.
    svc = prepare(load_settings(server.data_dir, server.config, env={**os.environ, **server.env}))
    path = base_path(svc, "ap-guangzhou", base_digest, "local")
    if path.exists():
        path.rename(path.with_name(path.name + ".moved"))
    assert ensure_base(svc, "ap-guangzhou", base_digest, "local") == path
    src_raw = tmp_path / "src.raw"
    subprocess.run(["qemu-img", "convert", "-f", "qcow2", "-O", "raw", str(src), str(src_raw)], check=True)
    assert qemu_img.compare(src_raw, "raw", path, "raw")


def test_orphan_manifest_cleanup_keeps_what_is_in_flight(server: Server) -> None:
    """A manifest recorded by a task still in flight (not yet pointed at by any row) survives the cleanup;
    the same manifest with nothing in flight goes."""
    from stratus.catalog.models import Manifest, Task
    from stratus.domain.manifest import DiskManifest
    from stratus.service.maintenance import drop_orphan_manifests
    from stratus.service.manifests import record_manifest

    svc = prepare(load_settings(server.data_dir, server.config, env={**os.environ, **server.env}))
    manifest = DiskManifest(MiB, MiB, [os.urandom(32).hex()])
    now = time.time()
    with svc.db.write() as s:
        task = enqueue(s, "capture", {"instance_id": "ins-00000000"}, region="ap-guangzhou")
        task.state, task.started_at = "RUNNING", now - 5
        task.lease_owner, task.lease_expires_at = "elsewhere", now + 3600
        task_id = task.id
        digest = record_manifest(s, "ap-guangzhou", manifest)
    try:
        drop_orphan_manifests(svc, "ap-guangzhou")
        with svc.db.read() as s:
            assert s.get(Manifest, ("ap-guangzhou", digest)) is not None
    finally:
        from sqlalchemy import delete

        with svc.db.write() as s:
            s.execute(delete(Task).where(Task.id == task_id))
    drop_orphan_manifests(svc, "ap-guangzhou")
    with svc.db.read() as s:
        assert s.get(Manifest, ("ap-guangzhou", digest)) is None


def test_gc_in_shards_keeps_and_sweeps_what_one_pass_does(server: Server, tmp_path: Path) -> None:
    """With a mark budget far below the references, gc runs shard by shard and ends where one pass would."""
    from stratus.service.maintenance import gc_region, gc_shards

    acct = server.account("gc-shards")
    keep = hostile.make_test_disk(tmp_path, "raw", 6 * MiB, seed=121)
    drop = hostile.make_test_disk(tmp_path, "raw", 6 * MiB, seed=122)
    keep_id = server.run("image", "import", str(keep), "--name", "sh-keep", env=acct.env()).stdout.split()[-1]
    drop_id = server.run("image", "import", str(drop), "--name", "sh-drop", env=acct.env()).stdout.split()[-1]
    svc = prepare(load_settings(server.data_dir, server.config, env={**os.environ, **server.env}))
    manifests = referenced_manifests(svc, "ap-guangzhou")
    kept = manifests[describe(server, acct, keep_id)["DiskSet"][0]["ManifestDigest"]].data_digests()
    dropped = manifests[describe(server, acct, drop_id)["DiskSet"][0]["ManifestDigest"]].data_digests() - kept
    server.run("image", "delete", drop_id, env=acct.env())
    assert len(gc_shards(svc, "ap-guangzhou", budget=2)) > 4
    done = gc_region(svc, "ap-guangzhou", 0, budget=2)
    assert any(line.startswith("shard 2/") for line in done.lines)
    after = set(chunk_files(server))
    assert kept <= after and not (dropped & after)
    assert done.deleted >= len(dropped)
    assert json.loads(admin(server, "fsck", "--json").stdout)[0]["Missing"] == {}
