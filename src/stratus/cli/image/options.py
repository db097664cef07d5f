"""Options and arguments that more than one image verb takes."""

from __future__ import annotations

from typing import Any

import typer


def chunked_or_whole_file(chunked: str, whole_file: str) -> Any:
    return typer.Option(True, "--chunked/--whole-file",
                        help=f"Chunked (the default): {chunked}. --whole-file: {whole_file}; chosen for you for a "
                        "qcow2/vmdk/vhd when this machine has no qemu-img.")


def split_values(values: list[str]) -> list[str]:
    """A repeatable option's values, each of which may also hold several separated by commas."""
    return [v.strip() for item in values for v in item.split(",") if v.strip()]
