"""The gate every untrusted disk file passes before qemu-img touches it.

Four layers, each failing closed (an exception inside any check refuses the file):

1. **oslo.utils format_inspector** parses headers in Python, without qemu: exactly one format must match,
   and its safety checks must pass. Stratus adds what the inspector lacks (measured against oslo.utils
   10.2.0 and qemu 7.2):

   - a file that *starts* like a known format (``QFI\xfb``, ``KDMV``, ``conectix``, ``QED\0``, ...) but
     that format's inspector doesn't accept it is ``truncated`` or ``corrupt_header``, never raw (the
     inspector itself falls back to raw);
   - vmdk ``parentFileNameHint`` → ``backing_file`` (the inspector passes it; qemu opens the parent);
   - a vmdk must be a binary sparse file, not a text descriptor → ``descriptor``;
   - VHD disk type 4 (differencing) → ``backing_file``; a dynamic VHD must end with its footer copy;
   - qcow2 built-in encryption → ``encrypted``; LUKS v1 passes the inspector → ``luks``.

2. **qemu-img info** under rlimits, only after layer 1 passed (even ``info`` opens the files a header
   names): no backing file, no data file, no encryption, a single-file vmdk create-type, and the inspector's
   virtual size (``qemu_info_mismatch``).

3. **qemu-img check** for qcow2 and vmdk: a header-complete file whose tables point past EOF (an upload
   cut short) passes layers 1 and 2, and converts to zeros without complaint.

4. **qemu-img map**: every extent read from the file lies inside it. ``check`` looks only at where
   clusters start, so a qcow2 or vmdk missing the tail of its last cluster passes it.

Reasons (``ImageRejected.reasons``):

====================================  ===================================================================
``empty``                             0 bytes, or a header with virtual size 0
``multiple_formats``                  valid as two formats at once (one header hidden in another)
``truncated`` / ``corrupt_header``    starts like a format but isn't a whole, valid one
``backing_file`` ``data_file``        the image needs another file (qcow2 backing or data file, vmdk
                                      parent, flat vmdk extent, VHD differencing parent)
``descriptor`` ``footer``             vmdk other than single-file monolithicSparse/streamOptimized; bad
                                      streamOptimized footer
``unknown_features``                  qcow2 incompatible-feature bits beyond those known (this includes
                                      extended L2, bit 4: the inspector's mask stops at bit 3)
``banned`` ``version`` ``mbr`` ...    other inspector checks (QED, LUKS version, MBR table; ``inner_*``)
``encrypted`` ``luks``                encrypted images
``unsupported_format``                vdi, vhdx, iso without ``allow_iso``, or an unknown declared format
``format_mismatch``                   declared format differs from the file's
``virtual_size``                      over ``max_virtual_size``
``unaligned_size``                    a raw file that is not whole 512-byte sectors (qemu would round up)
``qemu_info_failed``                  qemu-img can't open it
``qemu_info_mismatch``                qemu-img and the inspector disagree on format or virtual size
``corrupt``                           qemu-img check (or map) found broken metadata
``inspection_error``                  a check raised unexpectedly
====================================  ===================================================================

Format decisions:

- Accepted: raw, qcow2, vmdk (monolithicSparse, streamOptimized), vhd (qemu driver ``vpc``).
- "gpt" (an MBR/GPT-partitioned disk whose MBR check passed) is raw. An ISO is raw with ``allow_iso``;
  ``{iso, gpt}`` together is the usual hybrid installer ISO and is taken as ISO (Glance's rule).
- A raw image's virtual size is the file size (the inspector's raw "virtual size" is only bytes read).
- A *fixed* VHD is raw data plus a 512 B footer at the end, and the inspector calls it raw. Undeclared, it
  is taken as raw (the footer becomes the disk's last 512 bytes: harmless, and a raw disk whose last sector
  merely looks like a footer is not cut short). Declared VHD with a valid fixed footer (cookie, checksum,
  type 2, current size = file size - 512), it is ``vhd``/``vpc`` with the footer's size, which qemu-img
  info must confirm.
- The declared format must match what was found; a raw declaration of a qcow2 file is refused, not
  waved through as Glance does.
"""

from __future__ import annotations

import logging
import os
import stat
import struct
from dataclasses import dataclass
from typing import Any

from oslo_utils.imageutils import format_inspector as fi

from stratus.disk import qemu_img

LOG = logging.getLogger(__name__)

# inspector name -> qemu driver
ACCEPTED = {"raw": "raw", "qcow2": "qcow2", "vmdk": "vmdk", "vhd": "vpc"}

# declared (lower case) -> inspector name
_DECLARED = {"raw": "raw", "qcow2": "qcow2", "vmdk": "vmdk", "vhd": "vhd", "vpc": "vhd"}

_VMDK_CREATE_TYPES = ("monolithicSparse", "streamOptimized")

# Reads of 64 KiB while headers are parsed, then 1 MiB: only a streamOptimized vmdk (whose footer is
# at the end) makes the inspector read the whole file.
_SMALL_CHUNK = 64 * 1024
_LARGE_CHUNK = 1 << 20
_SMALL_UNTIL = 4 << 20

# (offset, magic, inspector name): a file starting like this must be accepted by *that* inspector.
_MAGICS: tuple[tuple[int, bytes, str], ...] = (
    (0, b"QFI\xfb", "qcow2"),
    (0, b"QED\x00", "qed"),
    (0, b"KDMV", "vmdk"),
    (0, b"# Disk DescriptorFile", "vmdk"),
    (0, b"conectix", "vhd"),
    (0, b"vhdxfile", "vhdx"),
    (0, b"LUKS\xba\xbe", "luks"),
    (0x40, b"\x7f\x10\xda\xbe", "vdi"),
)

_LABEL = {
    "raw": "raw",
    "qcow2": "qcow2",
    "vmdk": "VMDK",
    "vhd": "VHD",
    "qed": "QED",
    "vhdx": "VHDX",
    "vdi": "VDI",
    "iso": "ISO",
    "luks": "LUKS",
    "gpt": "partitioned raw",
}

_FLATTEN = {
    "qcow2": "`qemu-img convert -O qcow2 in.qcow2 out.qcow2`",
    "vmdk": "`qemu-img convert -O vmdk -o subformat=streamOptimized in.vmdk out.vmdk`",
    "vhd": "`qemu-img convert -O vpc -o force_size=on in.vhd out.vhd`",
}

# Advice for reasons named by the inspector's checks; "{fmt}" is the format's label.
_ADVICE = {
    "backing_file": "the {fmt} image depends on a backing file; flatten it first with {flatten}",
    "data_file": "the qcow2 image keeps its data in an external data file; "
    "merge it first with `qemu-img convert -O qcow2 in.qcow2 out.qcow2`",
    "unknown_features": "the qcow2 image uses features this service does not accept (extended L2 or "
    "newer); rewrite it with `qemu-img convert -O qcow2 -o compat=1.1 in.qcow2 out.qcow2`",
    "descriptor": "only single-file VMDKs (monolithicSparse or streamOptimized) are accepted; convert it "
    "with `qemu-img convert -O vmdk -o subformat=streamOptimized in.vmdk out.vmdk`",
    "footer": "the streamOptimized VMDK footer is invalid, so the file is damaged or cut short; "
    "export or upload it again",
    "banned": "QED images are not accepted; convert it with `qemu-img convert -O qcow2 in.qed out.qcow2`",
    "version": "the LUKS header version is not supported",
    "passphrase": "the LUKS passphrase does not open the volume",
    "mbr": "the MBR partition table is invalid; repair it (e.g. with fdisk) or upload the disk as qcow2",
}


@dataclass(frozen=True)
class Inspection:
    format: str  # inspector name: raw, qcow2, vmdk or vhd
    qemu_format: str  # the -f to give qemu-img for this file
    virtual_size: int
    file_size: int
    warnings: tuple[str, ...] = ()  # accepted, but the owner should know (recorded on the image)


class ImageRejected(Exception):
    """The file is refused. ``reasons`` are short check names; ``message`` says what to do next."""

    def __init__(self, reasons: list[str], message: str) -> None:
        super().__init__(message)
        self.reasons = reasons
        self.message = message


class _Refusal:
    """Findings collected by the gate: (reason, advice) pairs, rendered as one sentence."""

    def __init__(self) -> None:
        self.findings: list[tuple[str, str]] = []

    def add(self, reason: str, advice: str) -> None:
        if reason not in [r for r, _ in self.findings]:
            self.findings.append((reason, advice))

    def __bool__(self) -> bool:
        return bool(self.findings)

    def error(self) -> ImageRejected:
        reasons = [r for r, _ in self.findings]
        advice = "; ".join(a for _, a in self.findings)
        return ImageRejected(reasons, f"Image refused ({', '.join(reasons)}): {advice}.")

    def raise_if_any(self) -> None:
        if self.findings:
            raise self.error()


def _refuse(reason: str, advice: str) -> ImageRejected:
    refusal = _Refusal()
    refusal.add(reason, advice)
    return refusal.error()


def inspect_file(
    path: str | os.PathLike[str],
    *,
    declared: str | None = None,
    max_virtual_size: int,
    allow_iso: bool = False,
) -> Inspection:
    """Inspect an untrusted disk file; return what it is, or raise :class:`ImageRejected`.

    ``declared`` is the client's claim (RAW/QCOW2/VMDK/VHD, any case; "vpc" means VHD). OSError (the
    file can't be read) and a missing qemu-img propagate: those are not the file's fault.
    """
    path = os.fspath(path)
    expected = _expected_format(declared)
    st = os.stat(path)
    if not stat.S_ISREG(st.st_mode):
        raise ValueError(f"{path} is not a regular file")
    try:
        return _inspect(path, st.st_size, expected, max_virtual_size, allow_iso)
    except (ImageRejected, OSError):
        raise
    except Exception as exc:  # fail closed: a check that breaks is a check that failed
        LOG.exception("image inspection of %s failed unexpectedly", path)
        raise _refuse(
            "inspection_error",
            f"the file could not be inspected ({type(exc).__name__}: {exc}), so it is refused to be safe; "
            "re-export it as qcow2 and try again",
        ) from exc


def _expected_format(declared: str | None) -> str | None:
    if declared is None:
        return None
    name = _DECLARED.get(declared.strip().lower())
    if name is None:
        raise _refuse(
            "unsupported_format",
            f"the declared format {declared!r} is not accepted; declare RAW, QCOW2, VMDK or VHD",
        )
    return name


NOT_A_DISK_BELOW = 1 << 20  # bytes: below this, an unaligned headerless file is "not a disk image"


def _inspect(path: str, file_size: int, expected: str | None, max_size: int, allow_iso: bool) -> Inspection:
    if file_size == 0:
        raise _refuse("empty", "the file is empty; upload the disk image itself")

    # --- layer 1: the format inspector -----------------------------------------------------------------
    matches = _detect(path)
    names = sorted(m.NAME for m in matches)
    if names == ["gpt", "iso"]:
        matches = [m for m in matches if m.NAME == "iso"]  # hybrid ISO: an ISO with a GPT for USB boot
    elif len(matches) != 1:
        raise _refuse(
            "multiple_formats",
            f"the file is valid as more than one format ({', '.join(names)}), which is how one image hides "
            "inside another; export it again as plain qcow2",
        )
    inspector = matches[0]
    name = inspector.NAME

    magic = _sniff(path)
    if magic is not None and magic != name:
        reason = _why_not(path, magic)
        label = _LABEL.get(magic, magic)
        if reason == "truncated":
            raise _truncated(label, file_size)
        raise _refuse(
            "corrupt_header",
            f"the file starts like a {label} image but its header is invalid; export the image again",
        )

    refusal = _Refusal()
    fmt_label = _LABEL.get(name, name)
    try:
        inspector.safety_check()
    except fi.SafetyCheckFailed as exc:
        for check in exc.failures:
            refusal.add(check, _advice(check, name, str(exc.failures[check])))
    except fi.ImageFormatError as exc:
        # Some inspectors match on their magic alone (vhd, vmdk) and only notice here that the header
        # never arrived in full.
        if not inspector.complete:
            raise _truncated(fmt_label, file_size) from exc
        raise _refuse("corrupt_header", f"the {fmt_label} header could not be parsed ({exc}); export it again") from exc

    _extra_checks(path, inspector, refusal)

    fmt: str | None = None  # accepted format, or None when the format itself is refused
    virtual_size = 0
    if name in ("raw", "gpt"):
        fmt, virtual_size = "raw", file_size
        if expected == "vhd" and name == "raw":
            fixed = _fixed_vhd_size(path, file_size)
            if fixed is not None:
                fmt, virtual_size = "vhd", fixed
    elif name == "iso":
        if allow_iso:
            fmt, virtual_size = "raw", file_size
        else:
            refusal.add(
                "unsupported_format",
                "ISO images are not accepted here; import it as an ISO "
                "(allow_iso) or install it to a disk and upload that",
            )
    elif name in ACCEPTED:
        fmt, virtual_size = name, inspector.virtual_size
    elif name == "luks":
        refusal.add(
            "luks",
            "encrypted LUKS volumes are not accepted; upload the decrypted disk, e.g. from "
            "`qemu-img convert --object secret,id=k,data=PASSPHRASE --image-opts "
            "driver=luks,key-secret=k,file.filename=in.img -O qcow2 out.qcow2`",
        )
    elif name != "qed":  # qed already failed its `banned` check
        refusal.add(
            "unsupported_format",
            f"{fmt_label} images are not accepted; convert it with `qemu-img convert -O qcow2 in.{name} out.qcow2`",
        )

    if fmt == "raw" and name == "raw" and file_size % 512 and file_size < NOT_A_DISK_BELOW:
        # A small file with no format header and not even whole sectors is a text file, a script, an HTML
        # error page saved as .img: padding advice would only make it a useless disk.
        raise _refuse(
            "not_a_disk",
            f"this is not a disk image: {file_size} bytes with no qcow2, VMDK or VHD header, and not whole "
            "512-byte sectors as a raw disk is; upload the disk image itself (e.g. the .qcow2 file)",
        )
    if fmt == "raw" and file_size % 512:
        # qemu rounds a raw file up to whole sectors, so the guest would see bytes that aren't there.
        refusal.add(
            "unaligned_size",
            f"a raw disk must be a whole number of 512-byte sectors but the file has {file_size} bytes; "
            "pad it with `truncate -s %512 disk.raw`",
        )
    if fmt is not None:
        if expected is not None and expected != fmt:
            refusal.add(
                "format_mismatch",
                f"it was declared {_LABEL[expected]} but the file is {_LABEL.get(name, name)}; declare "
                f"{fmt.upper()} or upload a {_LABEL[expected]} file",
            )
        if virtual_size <= 0 and not refusal:  # a refused header often reads as size 0: no extra noise
            refusal.add("empty", f"the {fmt_label} image has a virtual size of 0; upload a real disk")
        elif virtual_size > max_size:
            refusal.add(
                "virtual_size",
                f"its virtual size of {virtual_size} bytes is over the limit of {max_size} bytes; shrink the "
                "disk (`qemu-img resize --shrink`) after shrinking its file systems",
            )
    refusal.raise_if_any()
    assert fmt is not None
    qemu_format = ACCEPTED[fmt]

    # --- layer 2: qemu-img info ------------------------------------------------------------------------
    try:
        info = qemu_img.info(path, qemu_format)
    except qemu_img.QemuImgError as exc:
        raise _refuse("qemu_info_failed", f"qemu-img cannot read it ({exc.stderr}); export it again") from exc
    _check_info(info, fmt, qemu_format, virtual_size, refusal)
    refusal.raise_if_any()

    # --- layer 3: qemu-img check (metadata consistency) ------------------------------------------------
    if qemu_format in ("qcow2", "vmdk"):
        try:
            report = qemu_img.check(path, qemu_format)
        except qemu_img.QemuImgError as exc:
            raise _refuse("corrupt", f"qemu-img check failed on it ({exc.stderr}); export it again") from exc
        if report and (report.get("corruptions", 0) or report.get("check-errors", 0)):
            raise _refuse(
                "corrupt",
                f"qemu-img check found {report.get('corruptions', 0)} corruptions and "
                f"{report.get('check-errors', 0)} errors in the {fmt_label} metadata, as when an upload "
                "is cut short; upload it again (or repair it with `qemu-img check -r all`)",
            )

    # --- layer 4: every extent qemu reads from the file lies inside it ---------------------------------
    # The storage layer reads the file at mapped offsets, and a cut-short qcow2/vmdk can pass `check`
    # (it looks only at where clusters start) while its last cluster is missing bytes.
    if qemu_format != "raw":
        try:
            with qemu_img.map_extents(path, qemu_format) as extents:  # spooled: bounded memory
                end = extents.max_file_end
        except qemu_img.QemuImgError as exc:
            raise _refuse("corrupt", f"qemu-img map failed on it ({exc.stderr}); export it again") from exc
        if end > file_size:
            raise _refuse(
                "truncated",
                f"the {fmt_label} image refers to data up to byte {end} but the file has only {file_size} "
                "bytes; the upload was probably cut short, upload it again",
            )
    warnings = (NO_BOOT_SECTOR,) if name == "raw" and fmt == "raw" and not _has_boot_signature(path) else ()
    return Inspection(format=fmt, qemu_format=qemu_format, virtual_size=virtual_size, file_size=file_size,
                      warnings=warnings)


def _has_boot_signature(path: str) -> bool:
    """An MBR (partition table or boot sector) ends its first sector with 55 AA; a GPT disk has one too."""
    with open(path, "rb") as f:
        f.seek(510)
        return f.read(2) == b"\x55\xaa"


NO_BOOT_SECTOR = ("the raw disk has no partition table or boot sector, so firmware cannot boot it: as a system "
                  "disk it boots only if it is a bare ext filesystem carrying /boot/vmlinuz and /boot/initrd.img "
                  "(direct kernel boot); as a data disk it is fine")


def _truncated(label: str, file_size: int) -> ImageRejected:
    return _refuse(
        "truncated",
        f"the file starts like a {label} image but ends ({file_size} bytes) before its header does; "
        "the upload was probably cut short, upload it again",
    )


def _advice(check: str, name: str, detail: str) -> str:
    label = _LABEL.get(name, name)
    if check.startswith("inner_"):
        return f"the data inside the {label} volume failed check {check[6:]} ({detail})"
    template = _ADVICE.get(check)
    if template is None:
        return f"the {label} image failed the {check} safety check ({detail})"
    return template.format(fmt=label, flatten=_FLATTEN.get(name, _FLATTEN["qcow2"]))


def _detect(path: str) -> list[fi.FileInspector]:
    """Every inspector that matches the file.

    This is ``format_inspector.InspectWrapper`` minus two things Stratus can't use: it raises on two
    matches (a hybrid ISO must be told from an attack), and an inspector that *raises* on the file stays
    among the matches when its magic matched (a KDMV header with a bad version comes back as "vmdk"
    with no descriptor). Here an inspector that raises is out, and the magic check in ``_inspect``
    then calls the file corrupt.
    """
    inspectors = [cls() for name, cls in fi.ALL_FORMATS.items() if name != "raw"]
    failed: set[int] = set()
    pos = 0
    with open(path, "rb") as f:
        while chunk := f.read(_SMALL_CHUNK if pos < _SMALL_UNTIL else _LARGE_CHUNK):
            pos += len(chunk)
            for i, inspector in enumerate(inspectors):
                if i in failed:
                    continue
                try:
                    inspector.eat_chunk(chunk)
                except Exception:  # this format doesn't fit the file
                    failed.add(i)
            if all(insp.complete for i, insp in enumerate(inspectors) if i not in failed):
                break
    live = [insp for i, insp in enumerate(inspectors) if i not in failed]
    for inspector in live:
        inspector.finish()
    # As in InspectWrapper: after EOF an inspector still waiting for data counts by its magic alone, and
    # its safety_check() then reports it incomplete.
    matches = [insp for insp in live if insp.format_match]
    if not matches:
        raw = fi.RawFileInspector()
        raw.finish()
        return [raw]
    return matches


def _sniff(path: str) -> str | None:
    with open(path, "rb") as f:
        head = f.read(0x44)
    for offset, magic, name in _MAGICS:
        if head[offset : offset + len(magic)] == magic:
            return name
    return None


def _why_not(path: str, name: str) -> str:
    """Why the ``name`` inspector did not match a file carrying its magic: truncated or corrupt_header."""
    cls = fi.get_inspector(name)
    if cls is None:
        return "corrupt_header"
    inspector = cls()
    try:
        with open(path, "rb") as f:
            while chunk := f.read(_SMALL_CHUNK):
                inspector.eat_chunk(chunk)
                if inspector.complete and inspector.format_match:
                    break
        inspector.finish()
    except Exception:  # the parser choked on the header
        return "corrupt_header"
    return "corrupt_header" if inspector.complete else "truncated"


def _extra_checks(path: str, inspector: fi.FileInspector, refusal: _Refusal) -> None:
    """Checks the oslo inspector doesn't make (see the module docstring)."""
    name = inspector.NAME
    if name == "qcow2":
        header = bytes(inspector.region("header").data)
        (crypt_method,) = struct.unpack(">I", header[32:36])
        if crypt_method != 0:
            refusal.add(
                "encrypted",
                "encrypted qcow2 images are not accepted; upload it decrypted "
                "(`qemu-img convert` with the key, `-O qcow2`)",
            )
    elif name == "vmdk":
        with open(path, "rb") as f:
            binary = f.read(4) == b"KDMV"
        if not binary:
            refusal.add("descriptor", _ADVICE["descriptor"])
        desc = getattr(inspector, "desc_text", None) or ""
        if "parentfilenamehint" in desc:
            refusal.add("backing_file", _advice("backing_file", "vmdk", ""))
    elif name == "vhd":
        header = bytes(inspector.region("header").data)
        (disk_type,) = struct.unpack(">I", header[60:64])
        if disk_type == 4:
            refusal.add(
                "backing_file",
                f"the VHD is a differencing disk that needs its parent; merge it first with {_FLATTEN['vhd']}",
            )
        elif disk_type != 3:  # a footer at offset 0 means dynamic; fixed VHDs have it only at the end
            refusal.add(
                "corrupt_header",
                f"the VHD header has disk type {disk_type}, not dynamic (3); export it again",
            )
        # A dynamic VHD ends with a copy of its footer. qemu reads only the first one, so without this
        # a file cut inside that last sector would pass.
        with open(path, "rb") as f:
            f.seek(max(0, os.fstat(f.fileno()).st_size - 512))
            if f.read(512) != header[:512]:
                refusal.add(
                    "truncated",
                    "the VHD does not end with the copy of its footer, so the upload was probably cut "
                    "short; upload it again",
                )


def _vhd_checksum_ok(footer: bytes) -> bool:
    (stored,) = struct.unpack(">I", footer[64:68])
    return (~(sum(footer[:64]) + sum(footer[68:])) & 0xFFFFFFFF) == stored


def _fixed_vhd_size(path: str, file_size: int) -> int | None:
    """The disk size if the file ends in a valid fixed-VHD footer, else None. Layout (VHD spec 1.0,
    big-endian): 0 cookie "conectix", 16 data offset (all ones for fixed), 48 current size,
    60 disk type (2 = fixed), 64 checksum."""
    if file_size < 1024 or file_size % 512:
        return None
    with open(path, "rb") as f:
        f.seek(file_size - 512)
        footer = f.read(512)
    if len(footer) != 512 or footer[:8] != b"conectix" or not _vhd_checksum_ok(footer):
        return None
    (data_offset,) = struct.unpack(">Q", footer[16:24])
    (current_size,) = struct.unpack(">Q", footer[48:56])
    (disk_type,) = struct.unpack(">I", footer[60:64])
    if disk_type != 2 or data_offset != 0xFFFFFFFFFFFFFFFF or current_size != file_size - 512:
        return None
    return current_size


def _check_info(info: dict[str, Any], fmt: str, qemu_format: str, virtual_size: int, refusal: _Refusal) -> None:
    """Layer 2: qemu-img's own reading of the header must agree with the inspector's."""
    label = _LABEL[fmt]
    if any(k in info for k in ("backing-filename", "full-backing-filename", "backing-image")):
        refusal.add("backing_file", _advice("backing_file", fmt, ""))
    specific = info.get("format-specific")
    data = specific.get("data", {}) if isinstance(specific, dict) else {}
    if not isinstance(data, dict):
        data = {}
    if "data-file" in data:
        refusal.add("data_file", _ADVICE["data_file"])
    if info.get("encrypted"):
        refusal.add("encrypted", f"encrypted {label} images are not accepted; upload it decrypted")
    if qemu_format == "vmdk":
        extents = data.get("extents")
        single = isinstance(extents, list) and len(extents) == 1
        if data.get("create-type") not in _VMDK_CREATE_TYPES or not single:
            refusal.add("descriptor", _ADVICE["descriptor"])
    if qemu_format == "qcow2" and data.get("corrupt"):
        refusal.add(
            "corrupt",
            "the qcow2 image is marked corrupt; repair it with `qemu-img check -r all` and upload it again",
        )
    if info.get("format") != qemu_format or info.get("virtual-size") != virtual_size:
        refusal.add(
            "qemu_info_mismatch",
            f"qemu-img reads it as {info.get('format')} of {info.get('virtual-size')} bytes but its header "
            f"says {label} of {virtual_size} bytes; export it again with "
            f"{_FLATTEN.get(fmt, _FLATTEN['qcow2'])}",
        )
