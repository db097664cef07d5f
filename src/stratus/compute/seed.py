"""The cloud-init NoCloud seed: an ISO9660 volume labelled ``cidata`` holding ``meta-data`` and ``user-data``.

cloud-init finds it by its volume label (https://cloudinit.readthedocs.io/en/latest/reference/datasources/
nocloud.html). ``network-config`` is left out, so the guest falls back to DHCP on its first NIC. Built with
pycdlib in memory (about 2 ms, no external tool); Joliet and Rock Ridge carry the lower-case names with a dash,
which plain ISO9660 can't spell.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
from pathlib import Path

import pycdlib

# CVM limits UserData to 16 KiB base64-encoded; anything much larger is a caller's bug, not a seed.
MAX_USER_DATA = 1 << 20


def meta_data(instance_id: str, hostname: str) -> bytes:
    """NoCloud meta-data. Values are JSON strings, which YAML reads as the same strings whatever they hold."""
    return f"instance-id: {json.dumps(instance_id)}\nlocal-hostname: {json.dumps(hostname)}\n".encode()


def make_nocloud_seed(path: Path, *, instance_id: str, hostname: str, user_data: bytes | None) -> None:
    """Write the seed ISO to ``path`` (replaced atomically). ``user_data`` None gives an empty user-data file:
    cloud-init wants the file to exist, and an empty one means "nothing to do"."""
    data = user_data or b""
    if len(data) > MAX_USER_DATA:
        raise ValueError(f"user data is {len(data)} bytes; at most {MAX_USER_DATA} fit in a seed")
    iso = pycdlib.PyCdlib()
    iso.new(interchange_level=3, joliet=3, rock_ridge="1.09", vol_ident="cidata")
    try:
        for iso_name, name, content in (
            ("/META_DAT.;1", "meta-data", meta_data(instance_id, hostname)),
            ("/USER_DAT.;1", "user-data", data),
        ):
            iso.add_fp(io.BytesIO(content), len(content), iso_name, rr_name=name, joliet_path=f"/{name}")
        tmp = path.with_name(f".{path.name}.tmp")
        try:
            with open(tmp, "wb") as f:
                iso.write_fp(f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            raise
    finally:
        iso.close()
