"""Resource identifiers: made and parsed in one place.

CVM ids are a prefix and 8 characters of [a-z0-9] (`img-gvbnzy6f`); accounts are decimal strings;
API keys follow Tencent's shape (`AKID` + 32 characters, a 32-character secret).
"""

from __future__ import annotations

import re
import secrets
import string

_ALPHABET = string.ascii_lowercase + string.digits
_KEY_ALPHABET = string.ascii_letters + string.digits

PREFIXES = {"image": "img", "instance": "ins", "snapshot": "snap", "disk": "disk", "upload": "up"}
_ID_RE = {kind: re.compile(rf"^{prefix}-[a-z0-9]{{8}}$") for kind, prefix in PREFIXES.items()}
ACCOUNT_RE = re.compile(r"^[1-9][0-9]{5,19}$")


def new_id(kind: str) -> str:
    return PREFIXES[kind] + "-" + "".join(secrets.choice(_ALPHABET) for _ in range(8))


def is_id(kind: str, value: object) -> bool:
    return isinstance(value, str) and bool(_ID_RE[kind].match(value))


def new_image_id() -> str:
    return new_id("image")


def new_snapshot_id() -> str:
    return new_id("snapshot")


def new_account_id() -> str:
    # 12 digits like Tencent's UINs; the first is never 0 so it survives int round-trips.
    return str(secrets.choice(range(1, 10))) + "".join(secrets.choice(string.digits) for _ in range(11))


def new_secret_id() -> str:
    return "AKID" + "".join(secrets.choice(_KEY_ALPHABET) for _ in range(32))


def new_secret_key() -> str:
    return "".join(secrets.choice(_KEY_ALPHABET) for _ in range(32))


def is_account_id(value: object) -> bool:
    return isinstance(value, str) and bool(ACCOUNT_RE.match(value))


def new_instance_id() -> str:
    return new_id("instance")


def new_disk_id() -> str:
    return new_id("disk")
