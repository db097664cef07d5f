"""Property-based fuzzing of the disk gate with mutated headers of real qcow2, vmdk, vhd and vhdx files.

Each example takes a real image made by qemu-img (tests' disk content from tests/hostile.py),
overwrites a few bytes of its metadata (header, tables, footers) or cuts it short, and sends it through
the gate as an import does: `inspect_file` with the declared format, then `ingest_disk` into a real store.
The property: the file is either refused with a reason (ImageRejected with reasons, or IngestError with a
message), or it is accepted and the stored disk holds exactly the bytes `qemu-img convert` (run here, on
its own) reads from the file; and no call runs past its limit. A handful of mutated files also go
through a real server's ImportImage: NORMAL with the manifest the gate computed, or IMPORTFAILED with a
reason.

Budget: STRATUS_FUZZ_EXAMPLES examples (default 12, fixed seed, `make test`; `make fuzz`: 200, random).
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import struct
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from stratus.disk import qemu_img
from stratus.disk.inspect import ImageRejected, inspect_file
from stratus.storage.dirstore import DirStore
from stratus.storage.export import iter_raw
from stratus.storage.ingest import IngestError, ingest_disk
from tests import hostile
from tests.conftest import Server
from tests.e2e.helpers import file_server, import_request, wait_image

EXAMPLES = int(os.environ.get("STRATUS_FUZZ_EXAMPLES", "12"))
FUZZ = settings(max_examples=EXAMPLES, derandomize=EXAMPLES <= 50, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
SIZE = hostile.MiB
LIMIT = 64 * hostile.MiB  # max_virtual_size: a mutated size field can't make a test write gigabytes
# The slowest gate step runs under qemu_img.CONVERT_LIMITS; inspection steps under INSPECT_LIMITS.
TIME_LIMIT = 3 * qemu_img.INSPECT_LIMITS.timeout
FORMATS = {"qcow2": "qcow2", "qcow2-compressed": "qcow2", "vmdk": "vmdk", "vmdk-stream": "vmdk", "vhd": "vhd",
           "vhdx": "vhdx"}
# Where each format keeps its metadata: header, tables, and (vhd) the footer copy at the end. The
# qcow2 and vmdk tables are found from the file's own header (see `hot`).
HOT = {"vhd": [(0, 512), (512, 1024 + 64), (1536, 2048 + 64), (-512, 0)],
       "vhdx": [(0, 0x40000)]}


def hot(name: str, data: bytes) -> list[tuple[int, int]]:
    """Byte ranges of `data` that hold metadata: (start, end), a negative start counts from the end."""
    family = _family(name)
    if family == "qcow2":  # header; L1 table, refcount table, the first L2 table (qcow2 spec, big-endian)
        l1_size, l1 = struct.unpack_from(">IQ", data, 36)
        refcounts = struct.unpack_from(">Q", data, 48)[0]
        l2 = struct.unpack_from(">Q", data, l1)[0] & 0x00FFFFFFFFFFFE00
        ranges = [(0, 512), (l1, l1 + 8 * l1_size), (refcounts, refcounts + 64)]
        return ranges + ([(l2, l2 + 4096)] if l2 else [])
    if family == "vmdk":  # header, descriptor, grain directory and its first table, the stream footer
        gd_sector = struct.unpack_from("<q", data, 56)[0]
        ranges = [(0, 512), (512, 2048), (-1536, 0)]
        if 0 < gd_sector * 512 < len(data):
            gd = gd_sector * 512
            gt = struct.unpack_from("<I", data, gd)[0] * 512
            ranges += [(gd, gd + 512)] + ([(gt, gt + 2048)] if 0 < gt < len(data) else [])
        return ranges
    return HOT[family]


INTERESTING = [b"\x00", b"\xff", b"\x7f\xff\xff\xff", b"\xff" * 8, b"\x80\x00\x00\x00\x00\x00\x00\x00",
               b"\x00\x00\x00\x01", b"\x00\x00\x00\x00\x00\x00\x02\x00", b"\x00\x00\x00\x03", b"\x00\x00\x00\x04"]


@pytest.fixture(autouse=True)
def _quiet_inspector() -> None:
    logging.getLogger("oslo_utils.imageutils.format_inspector").setLevel(logging.CRITICAL)


@pytest.fixture(scope="module")
def originals(tmp_path_factory: pytest.TempPathFactory) -> Originals:
    d = tmp_path_factory.mktemp("originals")
    made = {name: hostile.make_test_disk(d, name, SIZE, 5) for name in FORMATS if name != "vhdx"}
    made["vhdx"] = hostile.vhdx(d)
    return Originals({name: path.read_bytes() for name, path in made.items()})


def _family(name: str) -> str:
    return name.split("-")[0]


class Originals(dict[str, bytes]):
    """The unmutated files by format name (short repr: hypothesis prints its arguments on failure)."""

    def __repr__(self) -> str:
        return "<originals>"


Mutation = tuple[str, "str | None", tuple[tuple[int, bytes], ...], "int | None"]


@st.composite
def mutations(draw: st.DrawFn, originals: Originals) -> Mutation:
    """(format name, declared format or None as for a URL import, (offset, new bytes)..., cut at or None)"""
    name = draw(st.sampled_from(sorted(originals)))
    declared = draw(st.sampled_from([None, _family(name)]))
    size = len(originals[name])
    patches = []
    for _ in range(draw(st.integers(1, 4))):
        start, end = draw(st.sampled_from(hot(name, originals[name])))
        start, end = (size + start, size + end) if start < 0 else (start, min(end, size))
        patches.append((draw(st.integers(start, max(start, end - 1))),
                        draw(st.one_of(st.sampled_from(INTERESTING), st.binary(min_size=1, max_size=8)))))
    cut = draw(st.integers(1, size - 1)) if draw(st.integers(0, 5)) == 0 else None  # an interrupted upload
    return name, declared, tuple(patches), cut


def apply(original: bytes, patches: tuple[tuple[int, bytes], ...], cut: int | None) -> bytes:
    data = bytearray(original)
    for offset, patch in patches:
        data[offset : offset + len(patch)] = patch
    return bytes(data[:cut] if cut is not None else data)


def qemu_reads(path: Path, fmt: str, tmp: Path) -> bytes:
    """What qemu-img itself makes of the file: the oracle for an accepted image's bytes."""
    out = tmp / "oracle.raw"
    run = subprocess.run(["qemu-img", "convert", "-f", fmt, "-O", "raw", str(path), str(out)],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, f"the gate accepted a file qemu-img can't read: {run.stderr.strip()}"
    return out.read_bytes()


def through_gate(path: Path, declared: str | None, store: DirStore, tmp: Path) -> tuple[str, Any]:
    """('accepted', (manifest, stored bytes, qemu format)) or ('refused', reason), as the import task sees it."""
    try:
        inspection = inspect_file(path, declared=declared, max_virtual_size=LIMIT)
    except ImageRejected as exc:
        assert exc.reasons and exc.message.startswith("Image refused (") and "\n" not in exc.message
        return "refused", exc.message
    try:
        result = ingest_disk(path, inspection.qemu_format, store, tmp_dir=tmp)
    except IngestError as exc:
        assert str(exc)
        return "refused", str(exc)
    stored = b"".join(iter_raw(result.manifest, store))
    assert len(stored) == inspection.virtual_size
    return "accepted", (result.manifest, stored, inspection.qemu_format)


@pytest.fixture
def work(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path


def check(originals: Originals, work: Path, mutation: Mutation, expect: str | None = None) -> str:
    """The property for one mutated file; returns the outcome."""
    name, declared, patches, cut = mutation
    content = apply(originals[name], patches, cut)
    case = work / f"case-{hashlib.sha256(content).hexdigest()[:12]}"
    case.mkdir(exist_ok=True)
    path = case / f"disk.{_family(name)}"
    path.write_bytes(content)
    store = DirStore(case / "store", durable=False, direct_io=False)
    started = time.monotonic()
    outcome, detail = through_gate(path, declared, store, case)
    assert time.monotonic() - started < TIME_LIMIT
    if expect is not None:
        assert outcome == expect, (name, detail)
    if outcome == "accepted":  # as what the gate found: a qcow2 without its magic is a raw disk
        assert detail[1] == qemu_reads(path, detail[2], case), f"{name}: stored bytes differ from qemu's"
    shutil.rmtree(case)
    return outcome


@pytest.mark.parametrize("name", sorted(FORMATS))
def test_unmutated_files(originals: Originals, work: Path, name: str) -> None:
    """Each real file is accepted with qemu's bytes (vhdx is refused as a format)."""
    check(originals, work, (name, None, (), None), "refused" if name == "vhdx" else "accepted")


# Mutations that once broke the property, kept as they were found.
REGRESSIONS: list[Mutation] = [
    # qemu-img convert failed reading a grain ("error while reading at byte 0: Invalid argument") and the
    # QemuImgError escaped ingest_disk instead of an IngestError with a reason.
    ("vmdk-stream", None, ((13824, b"\xeb"), (285184, b"\x08\x90\x06o\x10\x93"), (14484, b"\x7f\xff\xff\xff")), None),
]


@pytest.mark.parametrize("mutation", REGRESSIONS)
def test_regressions(originals: Originals, work: Path, mutation: Mutation) -> None:
    check(originals, work, mutation)


@pytest.mark.timeout(max(600, 10 * EXAMPLES))  # each example runs qemu-img a few times
@FUZZ
@given(data=st.data())
def test_mutated_headers_are_refused_or_stored_exactly(originals: Originals, work: Path,
                                                       data: st.DataObject) -> None:
    mutation = data.draw(mutations(originals))
    event(f"{mutation[0]}: {check(originals, work, mutation)}")  # --hypothesis-show-statistics: both sides?


# A handful through a real server: the same outcome as the gate in-process, recorded on the image.
SERVER_CASES = [("qcow2", 0, b""), ("qcow2", 4, b"\x00\x00\x00\x09"), ("qcow2", 24, b"\x00\x00\x00\x00\x00\x01"),
                ("vmdk", 4, b"\x09"), ("vhd", 0, b"cOnectix"), ("vhd", -4, b"\x00"), ("vhdx", 0, b"vhdxfile")]


def test_mutated_files_through_a_real_import(server: Server, originals: Originals, tmp_path: Path) -> None:
    alice = server.account("alice")
    served = tmp_path / "served"
    served.mkdir()
    expected: dict[str, tuple[str, Any]] = {}
    for i, (name, offset, patch) in enumerate(SERVER_CASES):
        data = bytearray(originals[name])
        offset = offset % len(data)
        data[offset : offset + len(patch)] = patch
        file = served / f"case{i}.{name}"
        file.write_bytes(bytes(data))
        scratch = tmp_path / f"scratch{i}"
        scratch.mkdir()
        expected[file.name] = through_gate(file, None, DirStore(scratch / "store", durable=False, direct_io=False),
                                           scratch)
    assert {o for o, _ in expected.values()} == {"accepted", "refused"}  # both sides are exercised
    with file_server(served) as (base, _):
        ids = {f: server.client(alice).ImportImage(import_request(f"gate-{f}", f"{base}/{f}")).ImageId
               for f in expected}
        for f, image_id in ids.items():
            image = wait_image(server, alice, image_id)
            outcome, detail = expected[f]
            if outcome == "accepted":
                assert image["ImageState"] == "NORMAL", (f, image.get("ImageStateReason"))
                assert image["DiskSet"][0]["ManifestDigest"] == detail[0].digest(), f
            else:
                assert image["ImageState"] == "IMPORTFAILED", (f, image)
                assert image["ImageStateReason"], f
