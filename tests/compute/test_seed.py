"""The NoCloud seed ISO, read back with pycdlib (the tiny VM's kernel reads it in test_qemu_driver.py)."""

from __future__ import annotations

import io
from pathlib import Path

import pycdlib
import pytest
from oslo_utils.imageutils import format_inspector

from stratus.compute.seed import MAX_USER_DATA, make_nocloud_seed


def read_iso(path: Path) -> tuple[str, dict[str, bytes], dict[str, bytes]]:
    """(volume id, files by Rock Ridge name, files by Joliet name)."""
    iso = pycdlib.PyCdlib()
    iso.open(str(path))
    try:
        volume = iso.pvd.volume_identifier.decode().strip()
        by_rr: dict[str, bytes] = {}
        by_joliet: dict[str, bytes] = {}
        for name in ("meta-data", "user-data"):
            for table, kw in ((by_rr, "rr_path"), (by_joliet, "joliet_path")):
                buf = io.BytesIO()
                iso.get_file_from_iso_fp(buf, **{kw: f"/{name}"})
                table[name] = buf.getvalue()
        return volume, by_rr, by_joliet
    finally:
        iso.close()


def test_seed_holds_meta_data_and_user_data(tmp_path: Path) -> None:
    seed = tmp_path / "seed.iso"
    user_data = b"#cloud-config\nruncmd:\n  - echo hi\n"
    make_nocloud_seed(seed, instance_id="ins-12345678", hostname="web-1", user_data=user_data)
    volume, rr, joliet = read_iso(seed)
    assert volume == "cidata"  # what cloud-init's NoCloud looks for
    assert rr == joliet
    assert rr["user-data"] == user_data
    assert rr["meta-data"] == b'instance-id: "ins-12345678"\nlocal-hostname: "web-1"\n'
    assert format_inspector.detect_file_format(str(seed)).NAME == "iso"
    assert not list(tmp_path.glob(".*.tmp"))


def test_seed_without_user_data_has_an_empty_file(tmp_path: Path) -> None:
    seed = tmp_path / "seed.iso"
    make_nocloud_seed(seed, instance_id="ins-1", hostname="h", user_data=None)
    assert read_iso(seed)[1]["user-data"] == b""


def test_hostile_hostname_stays_one_yaml_string(tmp_path: Path) -> None:
    # A newline or a YAML key in the name must not add keys to meta-data; JSON quoting keeps it one scalar.
    seed = tmp_path / "seed.iso"
    make_nocloud_seed(seed, instance_id="ins-1", hostname='x"\nuser-data: evil', user_data=b"")
    meta = read_iso(seed)[1]["meta-data"]
    assert meta.count(b"\n") == 2 and b'local-hostname: "x\\"\\nuser-data: evil"' in meta


def test_seed_is_replaced_and_size_bounded(tmp_path: Path) -> None:
    seed = tmp_path / "seed.iso"
    make_nocloud_seed(seed, instance_id="ins-1", hostname="h", user_data=b"first")
    make_nocloud_seed(seed, instance_id="ins-1", hostname="h", user_data=b"second")
    assert read_iso(seed)[1]["user-data"] == b"second"
    with pytest.raises(ValueError, match="user data"):
        make_nocloud_seed(seed, instance_id="ins-1", hostname="h", user_data=bytes(MAX_USER_DATA + 1))
    assert read_iso(seed)[1]["user-data"] == b"second"
