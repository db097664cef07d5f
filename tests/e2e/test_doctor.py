"""`stratus doctor` on a healthy data dir and on broken ones: a missing store, an unwritable directory,
qemu-img missing from PATH, a damaged chunk, a catalog that doesn't exist."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import STRATUS, Server

MiB = 1024 * 1024


def doctor(data_dir: Path, config: Path, env: dict[str, str], *extra: str) -> tuple[int, list[dict]]:
    res = subprocess.run([STRATUS, "doctor", "--data-dir", str(data_dir), "--config", str(config), "--json", *extra],
                         env=env, capture_output=True, text=True, timeout=120)
    return res.returncode, json.loads(res.stdout)


def by_name(checks: list[dict]) -> dict[str, dict]:
    return {c["check"]: c for c in checks}


@pytest.fixture
def healthy(server: Server, tmp_path: Path) -> tuple[Path, Path, dict[str, str]]:
    """A data dir of its own (so the tests can break it), laid out and migrated by `stratus account create`."""
    data_dir = tmp_path / "var"
    env = {**server.env, "STRATUS_DATABASE_URL": f"sqlite:///{data_dir / 'stratus.db'}"}
    res = subprocess.run([STRATUS, "account", "create", "doc", "--init", "--data-dir", str(data_dir), "--config",
                          str(server.config), "--json"], env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    return data_dir, server.config, env


def test_doctor_on_the_running_servers_data_dir(server: Server) -> None:
    server.account("doctor-user")
    rc, checks = doctor(server.data_dir, server.config, server.env)
    assert rc == 0, checks
    names = by_name(checks)
    assert {"config", "catalog", "data dir", "tmp", "uploads", "region ap-guangzhou store",
            "region ap-guangzhou chunks", "free space", "qemu-img", "prlimit"} <= set(names)
    assert all(c["status"] == "ok" and not c["fix"] for c in checks), checks
    assert "newest" in names["catalog"]["detail"] and "qemu-img version" in names["qemu-img"]["detail"]
    text = subprocess.run([STRATUS, "doctor", "--data-dir", str(server.data_dir), "--config", str(server.config)],
                          env=server.env, capture_output=True, text=True, timeout=120)
    assert text.returncode == 0
    assert len(text.stdout.splitlines()) == len(checks)
    assert all(line.startswith("ok ") for line in text.stdout.splitlines())


def test_missing_store_dir(healthy: tuple[Path, Path, dict[str, str]]) -> None:
    data_dir, config, env = healthy
    assert doctor(data_dir, config, env)[0] == 0
    shutil.rmtree(data_dir / "regions" / "ap-shanghai" / "store")
    rc, checks = doctor(data_dir, config, env)
    assert rc == 1
    store = by_name(checks)["region ap-shanghai store"]
    assert store["status"] == "fail" and "does not exist" in store["detail"] and store["fix"]
    assert [c["check"] for c in checks if c["status"] != "ok"] == ["region ap-shanghai store"]
    assert not (data_dir / "regions" / "ap-shanghai" / "store").exists()  # doctor changes nothing


def test_unwritable_dir(healthy: tuple[Path, Path, dict[str, str]]) -> None:
    data_dir, config, env = healthy
    host = data_dir / "regions" / "ap-guangzhou" / "host"
    # Permission bits don't stop root; the immutable attribute does.
    if os.geteuid() == 0:
        if subprocess.run(["chattr", "+i", str(host)], capture_output=True).returncode != 0:
            pytest.skip("chattr +i is not available on this filesystem")
        undo = ["chattr", "-i", str(host)]
    else:
        host.chmod(0o555)
        undo = ["chmod", "755", str(host)]
    try:
        rc, checks = doctor(data_dir, config, env)
    finally:
        subprocess.run(undo, check=True)
    assert rc == 1
    check = by_name(checks)["region ap-guangzhou host"]
    assert check["status"] == "fail" and "not writable" in check["detail"] and "write access" in check["fix"]
    assert not list(host.glob(".stratus-doctor-*"))


def test_qemu_img_missing_from_path(healthy: tuple[Path, Path, dict[str, str]], tmp_path: Path) -> None:
    data_dir, config, env = healthy
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "prlimit").symlink_to(shutil.which("prlimit"))  # type: ignore[arg-type]
    rc, checks = doctor(data_dir, config, {**env, "PATH": str(bin_dir)})
    assert rc == 1
    check = by_name(checks)["qemu-img"]
    assert check["status"] == "fail" and "not on PATH" in check["detail"] and "qemu-utils" in check["fix"]
    assert by_name(checks)["prlimit"]["status"] == "ok"


def test_damaged_chunk_and_missing_catalog(healthy: tuple[Path, Path, dict[str, str]]) -> None:
    data_dir, config, env = healthy
    digest = "ab" * 32
    chunk = data_dir / "regions" / "ap-guangzhou" / "store" / "chunks" / "ab" / "ab" / digest
    chunk.parent.mkdir(parents=True)
    chunk.write_bytes(b"not the bytes of that digest")
    rc, checks = doctor(data_dir, config, env)
    assert rc == 1
    check = by_name(checks)["region ap-guangzhou chunks"]
    assert check["status"] == "fail" and digest in check["detail"] and "stratus fsck" in check["fix"]
    (data_dir / "stratus.db").unlink()
    rc, checks = doctor(data_dir, config, env)
    assert rc == 1 and by_name(checks)["catalog"]["status"] == "fail"
    assert "stratus serve" in by_name(checks)["catalog"]["fix"]
    assert not (data_dir / "stratus.db").exists()
