"""A tiny bootable Linux image, built without root privileges or mounts: `stratus demo` imports it as the
public image ``stratus-tiny-linux``, and the qemu driver's tests boot it.

The image is a bare ext4 filesystem (``mke2fs -d``) carrying the host's Debian cloud kernel and a busybox
initramfs at ``/boot/vmlinuz`` and ``/boot/initrd.img`` (symlinks to the versioned files, as distributions do),
so it boots from the image alone through :func:`stratus.compute.boot.extract_kernel`. Its ``/init`` prints
markers on the serial console (what the tests and the README quickstart wait for):

=====================================  ==================================================================
``STRATUS-BOOT-OK``                    the root disk (/dev/vda) is mounted read-write at /mnt/root
``STRATUS-MARKER-PRESENT <text>``      /marker existed in the root filesystem at boot (e.g. a captured image)
``STRATUS-HOSTNAME <name>``            local-hostname from the NoCloud seed's meta-data
``STRATUS-USERDATA-DONE rc=<n>``       user-data began with ``#!`` and ran (with ``ROOT=/mnt/root``), then sync
``STRATUS-READY``                      the power-button watcher runs; ACPI powerdown now powers off
``STRATUS-POWERDOWN``                  the power button was pressed; the root is unmounted, then poweroff
=====================================  ==================================================================

Needs the Debian packages linux-image-cloud-amd64, busybox-static, cpio and e2fsprogs.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import subprocess
from pathlib import Path

KERNEL_GLOB = "vmlinuz-*-cloud-amd64"
BUSYBOX = Path("/bin/busybox")
# Load order matters (no modprobe, no depmod in the initramfs): virtio transport, then the block driver,
# then what the seed needs (cdrom → isofs) and what delivers the ACPI power button to userspace.
MODULES = (
    "virtio_ring",
    "virtio",
    "virtio_pci_modern_dev",
    "virtio_pci_legacy_dev",
    "virtio_pci",
    "virtio_blk",
    "cdrom",
    "isofs",
    "evdev",
    "button",
)
ROOT_SIZE = 64 << 20

INIT = r"""#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
for m in @MODULES@; do insmod /lib/modules/$m.ko || echo "STRATUS-INSMOD-FAILED $m"; done
# Wait until every virtio disk the kernel knows has its device node.
i=0
while [ $i -lt 200 ]; do
  missing=0
  for b in /sys/block/vd*; do [ -e "$b" ] && [ ! -b /dev/${b##*/} ] && missing=1; done
  [ -b /dev/vda ] && [ $missing = 0 ] && break
  sleep 0.02; i=$((i+1))
done
mkdir -p /mnt/root /mnt/seed /tmp
if mount -t ext4 -o rw /dev/vda /mnt/root; then echo STRATUS-BOOT-OK; else echo STRATUS-BOOT-FAILED; fi
[ -f /mnt/root/marker ] && echo "STRATUS-MARKER-PRESENT $(cat /mnt/root/marker)"
seed=
for d in /dev/vd?; do
  [ "$d" = /dev/vda ] && continue
  if mount -t iso9660 -o ro "$d" /mnt/seed 2>/dev/null; then
    [ -f /mnt/seed/meta-data ] && { seed=$d; break; }
    umount /mnt/seed
  fi
done
if [ -n "$seed" ]; then
  name=$(sed -n 's/^local-hostname: *"\{0,1\}\([^"]*\)"\{0,1\}$/\1/p' /mnt/seed/meta-data)
  [ -n "$name" ] && hostname "$name" && echo "STRATUS-HOSTNAME $name"
  if [ "$(head -c 2 /mnt/seed/user-data)" = "#!" ]; then
    cp /mnt/seed/user-data /tmp/user-data; chmod +x /tmp/user-data
    ROOT=/mnt/root /tmp/user-data; rc=$?
    sync
    echo "STRATUS-USERDATA-DONE rc=$rc"
  fi
fi
# The device is opened here, before READY is printed: evdev drops events that arrive before a reader opens it.
for e in /sys/class/input/event*; do
  [ "$(cat $e/device/name 2>/dev/null)" = "Power Button" ] || continue
  exec 3</dev/input/${e##*/}
  (dd of=/dev/null bs=24 count=1 <&3 2>/dev/null
   echo STRATUS-POWERDOWN; umount /mnt/root; sync; poweroff -f) &
  exec 3<&-
done
echo STRATUS-READY
while true; do sleep 3600; done
"""


def cloud_kernel() -> Path | None:
    """The newest installed Debian cloud kernel, or None."""
    found = sorted(Path("/boot").glob(KERNEL_GLOB))
    return found[-1] if found else None


def missing_tools() -> list[str]:
    """What the tiny VM needs and this machine lacks (empty when the qemu tests can run)."""
    missing = [tool for tool in ("qemu-system-x86_64", "mke2fs", "debugfs", "cpio") if shutil.which(tool) is None]
    if not BUSYBOX.is_file():
        missing.append("busybox-static")
    if cloud_kernel() is None:
        missing.append("linux-image-cloud-amd64")
    return missing


def _module_paths(version: str) -> dict[str, Path]:
    root = Path("/lib/modules") / version / "kernel"
    found = {p.stem: p for p in root.rglob("*.ko") if p.stem in MODULES}
    lacking = set(MODULES) - found.keys()
    if lacking:
        raise RuntimeError(f"kernel {version} lacks modules {sorted(lacking)}")
    return found


def build_initramfs(dest: Path, version: str) -> Path:
    """A gzip'd newc cpio: busybox, the modules (uncompressed .ko), and /init."""
    tree = dest.parent / f"{dest.name}.tree"
    shutil.rmtree(tree, ignore_errors=True)
    for sub in ("bin", "lib/modules", "proc", "sys", "dev", "mnt", "tmp"):
        (tree / sub).mkdir(parents=True)
    shutil.copy2(BUSYBOX, tree / "bin/busybox")
    for name, path in _module_paths(version).items():
        shutil.copyfile(path, tree / "lib/modules" / f"{name}.ko")
    init = tree / "init"
    init.write_text(INIT.replace("@MODULES@", " ".join(MODULES)))
    init.chmod(0o755)
    names = sorted(str(p.relative_to(tree)) for p in tree.rglob("*"))
    archive = subprocess.run(
        ["cpio", "--quiet", "-o", "-H", "newc", "-R", "0:0"],
        cwd=tree,
        input="\n".join(names).encode() + b"\n",
        capture_output=True,
        check=True,
    ).stdout
    dest.write_bytes(gzip.compress(archive, compresslevel=1))
    shutil.rmtree(tree)
    return dest


def build_tiny_root_image(directory: Path) -> Path:
    """``directory/tiny-root.raw``: a 64 MiB bare ext4 root with /boot/vmlinuz and /boot/initrd.img inside.

    Reused when already built from the same kernel and /init (the stamp is in the file name), so a test session
    pays the ~1 s once."""
    kernel = cloud_kernel()
    if kernel is None:
        raise RuntimeError("no cloud kernel in /boot; install linux-image-cloud-amd64")
    version = kernel.name.removeprefix("vmlinuz-")
    stamp = hashlib.sha256(f"{version}\n{INIT}\n{MODULES}".encode()).hexdigest()[:12]
    image = directory / f"tiny-root-{stamp}.raw"
    if image.is_file():
        return image
    directory.mkdir(parents=True, exist_ok=True)
    rootdir = directory / f"rootdir-{stamp}"
    shutil.rmtree(rootdir, ignore_errors=True)
    boot = rootdir / "boot"
    boot.mkdir(parents=True)
    (rootdir / "etc").mkdir()
    (rootdir / "etc/hostname").write_text("tiny\n")
    shutil.copyfile(kernel, boot / f"vmlinuz-{version}")
    build_initramfs(boot / f"initrd.img-{version}", version)
    os.symlink(f"vmlinuz-{version}", boot / "vmlinuz")
    os.symlink(f"initrd.img-{version}", boot / "initrd.img")
    tmp = image.with_suffix(".tmp")
    subprocess.run(
        ["mke2fs", "-q", "-F", "-t", "ext4", "-L", "tinyroot", "-d", str(rootdir), str(tmp), f"{ROOT_SIZE // 1024}k"],
        check=True,
        capture_output=True,
    )
    os.replace(tmp, image)
    shutil.rmtree(rootdir)
    return image


def debugfs_cat(raw: Path, path: str) -> bytes | None:
    """The content of ``path`` in the ext4 filesystem ``raw``, read with debugfs (None if absent)."""
    proc = subprocess.run(["debugfs", "-R", f"cat {path}", str(raw)], capture_output=True, check=True)
    if b"File not found" in proc.stderr:
        return None
    return proc.stdout
