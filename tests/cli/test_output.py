"""Tables on a terminal never cut an id; piped, they are plain tab-separated rows."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from stratus.cli import common

ROW = ["img-6io90u3e", "a-rather-long-image-name-that-needs-room", "PUBLIC_IMAGE", "NORMAL", 1,
       "Other Linux 64bit", "2026-12-03T03:40:17Z"]
HEADERS = ["ImageId", "Name", "Type", "State", "Size (GiB)", "OS", "Created"]


@pytest.mark.parametrize("width", [40, 60, 200])
def test_a_narrow_terminal_keeps_ids_whole(monkeypatch: pytest.MonkeyPatch, width: int) -> None:
    buf = io.StringIO()
    monkeypatch.setattr(common, "out", Console(file=buf, force_terminal=True, width=width, color_system=None))
    common.table(HEADERS, [ROW])
    assert any("img-6io90u3e" in line for line in buf.getvalue().splitlines())
    assert "…" not in buf.getvalue()  # nothing ellipsized, in any column


def test_piped_output_is_tab_separated(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setattr(common, "out", Console(file=io.StringIO(), force_terminal=False))
    common.table(HEADERS, [ROW, ["img-00000001", "b", None, "NORMAL", 2, "", ""]])
    assert capsys.readouterr().out.splitlines() == ["\t".join(str(v) for v in ROW),
                                                    "img-00000001\tb\t\tNORMAL\t2\t\t"]
