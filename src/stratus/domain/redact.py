"""Server filesystem paths never reach a client: an absolute path in a message becomes its last component.

Failure reasons are built from exceptions of lower layers (OSError, qemu-img's stderr), which name files by
their full path on the server. A reason keeps the file's name (`up-1a2b3c4d`, `disk0.src`: enough to act on)
and loses the directories (the data dir's layout, the operator's mount points). URLs are left alone: their
path follows the host, not a space or a quote.
"""

from __future__ import annotations

import re

# An absolute path: a '/' at the start of the text or after a space, quote, bracket or '=', then at least one
# more component. Not a URL path (after 'host' or '//'), not a ratio like 1/2.
_PATH = re.compile(r"(?:(?<=^)|(?<=[\s'\"(\[=<]))/(?:[^\s'\"()\[\]<>,;:/]+/)+([^\s'\"()\[\]<>,;:/]*)")


def redact_paths(text: str | None) -> str | None:
    """``text`` with every absolute path replaced by its last component (None stays None)."""
    if not text:
        return text
    return _PATH.sub(lambda m: m.group(1) or "(a directory)", text)
