"""The operating systems ImportImage accepts (DescribeImportImageOs) and how they are named."""

from __future__ import annotations

from dataclasses import dataclass

ARCHITECTURES = ("x86_64", "i386", "arm_64")


@dataclass(frozen=True)
class OsFamily:
    name: str
    kind: str  # "Linux" | "Windows"
    versions: tuple[str, ...]
    architectures: tuple[str, ...] = ("x86_64", "i386", "arm_64")


OS_FAMILIES: tuple[OsFamily, ...] = (
    OsFamily("CentOS", "Linux", ("5", "6", "7", "8")),
    OsFamily("CentOS Stream", "Linux", ("8", "9")),
    OsFamily("Ubuntu", "Linux", ("10", "12", "14", "16", "18", "20", "22", "24")),
    OsFamily("Debian", "Linux", ("6", "7", "8", "9", "10", "11", "12", "13")),
    OsFamily("Fedora", "Linux", ("38", "39", "40", "41")),
    OsFamily("AlmaLinux", "Linux", ("8", "9")),
    OsFamily("Rocky Linux", "Linux", ("8", "9")),
    OsFamily("Redhat", "Linux", ("5", "6", "7", "8", "9")),
    OsFamily("OpenSUSE", "Linux", ("11", "12", "15")),
    OsFamily("SUSE", "Linux", ("10", "11", "12", "13", "15")),
    OsFamily("CoreOS", "Linux", ("7",)),
    OsFamily("TencentOS", "Linux", ("2", "3", "4")),
    OsFamily("FreeBSD", "Linux", ("10", "11", "12", "13", "14")),
    OsFamily("Other Linux", "Linux", ("-",)),
    OsFamily("Windows Server 2008", "Windows", ("-",), ("x86_64", "i386")),
    OsFamily("Windows Server 2012", "Windows", ("-",), ("x86_64", "i386")),
    OsFamily("Windows Server 2016", "Windows", ("-",), ("x86_64", "i386")),
    OsFamily("Windows Server 2019", "Windows", ("-",), ("x86_64",)),
    OsFamily("Windows Server 2022", "Windows", ("-",), ("x86_64",)),
)

_BY_NAME = {f.name: f for f in OS_FAMILIES}


def family(name: str) -> OsFamily | None:
    return _BY_NAME.get(name)


def platform_of(os_type: str) -> str:
    """The Image.Platform value: 'Windows' for every Windows release, else the OS type itself."""
    fam = _BY_NAME.get(os_type)
    if fam is not None and fam.kind == "Windows":
        return "Windows"
    return os_type


def image_architecture(import_arch: str) -> str:
    """ImportImage says arm_64, the Image model says arm."""
    return "arm" if import_arch == "arm_64" else import_arch


def os_name(os_type: str, os_version: str, architecture: str) -> str:
    bits = "32bit" if architecture == "i386" else "64bit"
    if os_version in ("", "-"):
        return f"{os_type} {bits}"
    return f"{os_type} {os_version} {bits}"
