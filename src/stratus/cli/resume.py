"""Which uploads this machine started and has not finished, so that running the same command again resumes
them: upload ids by a key naming the server, the key id and the file as it was (a changed file is a new
upload). One small JSON file per transfer path under the user's cache directory."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from stratus.cli.common import Endpoint


class Unfinished:
    """The unfinished uploads of one transfer path (``name``: its file under ~/.cache/stratus)."""

    def __init__(self, name: str) -> None:
        self.name = name

    @property
    def path(self) -> Path:
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
        return base / "stratus" / self.name

    @staticmethod
    def key(ep: Endpoint, path: Path, *more: str) -> str:
        """The key of an upload of ``path`` as this key to this server (and ``more``, e.g. the region)."""
        st = path.stat()
        ident = "|".join([ep.url, ep.secret_id, *more, str(path.resolve()), str(st.st_size), str(st.st_mtime_ns)])
        return hashlib.sha256(ident.encode()).hexdigest()

    def recall(self, key: str) -> str | None:
        return self._load().get(key)

    def remember(self, key: str, upload_id: str | None) -> None:
        """Record ``upload_id`` under ``key``; None forgets it (the upload finished)."""
        state = self._load()
        if upload_id is None:
            if state.pop(key, None) is None:
                return
        else:
            state[key] = upload_id
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(state))
        tmp.replace(self.path)

    def _load(self) -> dict[str, str]:
        try:
            found = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}
        return found if isinstance(found, dict) else {}
