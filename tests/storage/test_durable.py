"""durable_replace: the new file's bytes are fsynced before the rename, its directory after it (what the
export task and ResetInstance rely on for a file that is whole or absent after a crash)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from stratus.storage import dirstore
from stratus.storage.dirstore import durable_replace


def test_durable_replace_fsyncs_the_file_then_its_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src, dest = tmp_path / "disk.raw.part", tmp_path / "disk.raw"
    dest.write_bytes(b"old")
    src.write_bytes(b"new bytes")
    seen: list[tuple[str, bool]] = []  # (what the fd is, whether the rename had happened)
    real_fsync = os.fsync

    def spy(fd: int) -> None:
        mode = os.fstat(fd).st_mode
        seen.append(("dir" if stat.S_ISDIR(mode) else "file", not src.exists()))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", spy)
    durable_replace(src, dest)
    assert seen == [("file", False), ("dir", True)]
    assert dest.read_bytes() == b"new bytes" and not src.exists()


def test_the_export_task_and_reset_use_it() -> None:
    """Both places that rename a finished file into place go through the durable helper."""
    import inspect

    from stratus.service import export_task, instance_tasks

    assert export_task.durable_replace is dirstore.durable_replace
    assert instance_tasks.durable_replace is dirstore.durable_replace
    assert "durable_replace(part, dest)" in inspect.getsource(export_task.ExportHandler.run)
    assert "durable_replace(new_path, system.path)" in inspect.getsource(instance_tasks.InstanceHandler._reset)
