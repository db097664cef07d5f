"""The instance type catalog (a small, fixed list; issue 3 makes it configurable)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class InstanceType:
    name: str
    cpu: int
    memory_gib: int
    architecture: str = "x86_64"


INSTANCE_TYPES: tuple[InstanceType, ...] = (
    InstanceType("S5.SMALL1", 1, 1),
    InstanceType("S5.SMALL2", 1, 2),
    InstanceType("S5.MEDIUM2", 2, 2),
    InstanceType("S5.MEDIUM4", 2, 4),
    InstanceType("S5.LARGE8", 4, 8),
    InstanceType("SR1.MEDIUM4", 2, 4, "arm"),
)


def find_instance_type(name: str) -> InstanceType | None:
    return next((t for t in INSTANCE_TYPES if t.name == name), None)
