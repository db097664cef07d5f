"""Bounded memory: the server's peak RSS while it imports a crafted qcow2 whose map has a million extents,
and a 2 TiB (virtual) image. Numbers are recorded in docs/design.md ("Memory")."""

from __future__ import annotations

import struct
import subprocess
from pathlib import Path

import pytest

from tests.conftest import Server
from tests.e2e.helpers import wait_image

MiB = 1 << 20
GiB = 1 << 30


def fragmented_qcow2(path: Path, data_clusters: int) -> Path:
    """A valid qcow2 (v2, 512-byte clusters) whose guest clusters alternate allocated / unallocated:
    ``qemu-img map`` prints 2 x ``data_clusters`` extents. The data clusters are holes in the file (they
    read as zeros), so the file holds only metadata; refcounts are exact, so `qemu-img check` is clean."""
    cb, c = 9, 512
    n = 2 * data_clusters  # guest clusters
    per_l2 = c // 8
    l2_count = -(-n // per_l2)
    l1_clusters = -(-l2_count * 8 // c)
    rb_count = rt_clusters = 1
    while True:  # refcount blocks cover every host cluster, themselves included
        host = 1 + rt_clusters + rb_count + l1_clusters + l2_count + data_clusters
        need_rb = -(-host // (c // 2))
        need_rt = -(-need_rb * 8 // c)
        if (need_rb, need_rt) == (rb_count, rt_clusters):
            break
        rb_count, rt_clusters = need_rb, need_rt
    rt_off = c
    rb_off = rt_off + rt_clusters * c
    l1_off = rb_off + rb_count * c
    l2_off = l1_off + l1_clusters * c
    data_off = l2_off + l2_count * c
    copied = 1 << 63
    with open(path, "wb") as f:
        f.write(struct.pack(">4sIQIIQIIQQIIQ", b"QFI\xfb", 2, 0, 0, cb, n * c, 0, l2_count, l1_off, rt_off,
                            rt_clusters, 0, 0))
        f.seek(rt_off)
        f.write(b"".join(struct.pack(">Q", rb_off + i * c) for i in range(rb_count)))
        f.seek(rb_off)
        f.write(struct.pack(">H", 1) * host)
        f.seek(l1_off)
        f.write(b"".join(struct.pack(">Q", (l2_off + i * c) | copied) for i in range(l2_count)))
        f.seek(l2_off)
        entry = struct.Struct(">QQ")  # one allocated guest cluster, then one unallocated
        f.write(b"".join(entry.pack((data_off + k * c) | copied, 0) for k in range(data_clusters)))
        f.truncate(data_off + data_clusters * c)
    return path


def peak_rss(pid: int) -> int:
    """VmHWM: the process's peak resident set since it started, in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


def rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


@pytest.fixture(scope="module")
def mem_server(tmp_path_factory: pytest.TempPathFactory, db_url: str):  # type: ignore[no-untyped-def]
    from tests.conftest import make_server

    srv = make_server(tmp_path_factory.mktemp("mem"), db_url)
    # The default limit (2 TiB) instead of the test servers' 1 GiB: the huge image is the point here.
    srv.config.write_text(srv.config.read_text().replace("max_virtual_size = 1073741824",
                                                         f"max_virtual_size = {2048 * GiB}"))
    srv.start()
    yield srv
    srv.stop()


def test_peak_rss_of_hostile_and_huge_imports(mem_server: Server, tmp_path: Path) -> None:
    server = mem_server
    acct = server.account("mem-user")
    pid = server.proc.pid
    fragmented = fragmented_qcow2(tmp_path / "fragmented.qcow2", 500_000)
    out = subprocess.run(["qemu-img", "map", "--output=json", "-f", "qcow2", str(fragmented)],
                         capture_output=True, check=True).stdout
    assert out.count(b"\n") >= 999_999  # a million extents: ~110 MB of JSON
    huge = tmp_path / "huge.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(huge), str(2048 * GiB)], check=True)
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", "write -P 0x11 0 1M", "-c", f"write -P 0x22 {2047 * GiB} 1M",
                    str(huge)], check=True, capture_output=True)
    baseline = peak_rss(pid)
    figures = {"baseline_peak": baseline, "baseline_rss": rss(pid)}
    for name, path in (("fragmented", fragmented), ("huge", huge)):
        image_id = server.run("image", "import", str(path), "--name", f"mem-{name}", "--whole-file", env=acct.env(),
                              check=True).stdout.split()[-1]
        image = wait_image(server, acct, image_id, timeout=300)
        assert image["ImageState"] == "NORMAL", image.get("ImageStateReason")
        figures[name] = peak_rss(pid)
    print("peak RSS (MiB):", {k: round(v / MiB, 1) for k, v in figures.items()})
    # Before streaming the map, the fragmented image alone took ~1 GiB (its JSON, then a dict per extent).
    assert figures["fragmented"] - baseline < 120 * MiB, figures
    assert figures["huge"] - baseline < 160 * MiB, figures
