"""What every use case needs: settings, the catalog, the region stores, and who is calling."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from stratus.catalog.db import Database, open_database
from stratus.config import Region, Settings
from stratus.domain import errors
from stratus.storage.dirstore import DirStore


@dataclass(frozen=True)
class Caller:
    """An authenticated account."""

    account_id: str
    is_operator: bool = False


@dataclass
class Services:
    settings: Settings
    db: Database
    _stores: dict[str, DirStore] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    # Called after a task is queued so in-process workers wake at once instead of at their next poll.
    on_task_queued: Callable[[], None] = lambda: None

    @classmethod
    def open(cls, settings: Settings) -> Services:
        return cls(settings, open_database(settings.database_url))

    def region(self, name: str | None) -> Region:
        if not name:
            raise errors.MissingParameter(name="Region (the X-TC-Region header)")
        region = self.settings.region(name)
        if region is None:
            raise errors.InvalidRegionNotFound(region=name)
        return region

    def store(self, region: str) -> DirStore:
        with self._lock:
            store = self._stores.get(region)
            if store is None:
                store = DirStore(self.region(region).store_path)
                self._stores[region] = store
            return store
