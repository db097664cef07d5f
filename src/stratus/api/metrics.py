"""What an operator scrapes: `GET /metrics` (Prometheus text format) and the request middleware.

* Requests by action and code, and latency histograms per action, counted by `Observe`, an ASGI
  middleware around the whole app that also gives every request its RequestId (the `logs.REQUEST_ID`
  context variable the CVM envelope returns) and writes one access log line per request. The CVM
  endpoint names the action and the result code (`note`); the data API is labelled by path
  (`data.uploads`, `data.buckets`) with its HTTP status as the code.
* The byte counters of `stratus.metrics` (incremented in storage where the work happens).
* Collectors read at scrape time: tasks by kind and state (one GROUP BY on the catalog) and, per
  region, the store's size from a cached walk refreshed in the background at most every
  `metrics.store_walk_seconds` (never a walk per scrape) plus the free space of its filesystem.

Who may read it is `metrics.allow` (docs/config.md): loopback only by default, because the store size
of a region moves when an import adds chunks nobody had, which must not become a cross-account oracle.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import threading
import time
import uuid
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from stratus import logs
from stratus.service import maintenance
from stratus.service.context import Services

access_log = logging.getLogger("stratus.access")

REQUESTS = Counter("stratus_requests", "API requests by action and result code (Success, an error code, or "
                   "the HTTP status for the data API)", ["action", "code"])
LATENCY = Histogram("stratus_request_duration_seconds", "API request latency by action", ["action"],
                    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300))


@dataclass
class RequestInfo:
    request_id: str
    action: str | None  # None: not counted (/metrics itself)
    code: str | None = None


_CURRENT: ContextVar[RequestInfo | None] = ContextVar("stratus_request_info", default=None)


def note(*, action: str | None = None, code: str | None = None) -> None:
    """Name the action and the result code of the request being served (from the CVM endpoint)."""
    info = _CURRENT.get()
    if info is None:
        return
    if action is not None:
        info.action = action
    if code is not None:
        info.code = code


def _path_action(path: str) -> str | None:
    if path == "/metrics":
        return None
    if path == "/":
        return "unknown"  # until the endpoint knows the action
    if path.startswith("/uploads"):
        return "data.uploads"
    if path.startswith("/buckets/"):
        return "data.buckets"
    return "other"


class Observe:
    """ASGI middleware: RequestId, request metrics and the access log line of every HTTP request."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        info = RequestInfo(str(uuid.uuid4()), _path_action(scope.get("path", "")))
        rid_token = logs.REQUEST_ID.set(info.request_id)
        info_token = _CURRENT.set(info)
        status = 500
        started = time.perf_counter()

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        except Exception:
            status = 500
            # Logged here, while the RequestId is still in the context; the server then answers 500.
            access_log.exception("unhandled error in %s %s", scope.get("method"), scope.get("path"))
            raise
        finally:
            elapsed = time.perf_counter() - started
            if info.action is not None:
                code = info.code or str(status)
                REQUESTS.labels(info.action, code).inc()
                LATENCY.labels(info.action).observe(elapsed)
                access_log.info("%s %s %s -> %s %s in %.1f ms", scope.get("method"), scope.get("path"),
                                info.action, status, code, elapsed * 1000,
                                extra={"action": info.action, "code": code, "status": status,
                                       "duration_ms": round(elapsed * 1000, 1)})
            _CURRENT.reset(info_token)
            logs.REQUEST_ID.reset(rid_token)


class TaskCollector(Collector):
    """Tasks by kind and state, counted in the catalog when scraped (one GROUP BY)."""

    def __init__(self, svc: Services) -> None:
        self.svc = svc

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily("stratus_tasks", "Tasks in the catalog by kind and state",
                                   labels=["kind", "state"])
        for kind, state, count in maintenance.task_counts(self.svc):
            family.add_metric([kind, state], count)
        yield family


@dataclass
class _Walk:
    chunks: int = 0
    bytes: int = 0
    finished_at: float = 0.0  # monotonic; 0: never
    running: bool = False


class StoreCollector(Collector):
    """Per region: stored chunks and bytes from a cached walk, free bytes of the store's filesystem.

    A scrape never walks: it reports the last finished walk and, when that is older than `refresh`
    seconds, starts one in a background thread (one at a time per region)."""

    def __init__(self, svc: Services, refresh: float) -> None:
        self.svc = svc
        self.refresh = refresh
        self._walks = {r.name: _Walk() for r in svc.settings.regions}
        self._lock = threading.Lock()

    def start(self) -> None:
        for name in self._walks:
            self._maybe_walk(name)

    def _maybe_walk(self, region: str) -> None:
        walk = self._walks[region]
        with self._lock:
            if walk.running or (walk.finished_at and time.monotonic() - walk.finished_at < self.refresh):
                return
            walk.running = True
        threading.Thread(target=self._walk, args=(region,), name=f"stratus-store-walk-{region}",
                         daemon=True).start()

    def _walk(self, region: str) -> None:
        walk = self._walks[region]
        try:
            stats = maintenance.store_dir_stats(self.svc, region)
            walk.chunks, walk.bytes, walk.finished_at = stats.chunks, stats.bytes, time.monotonic()
        except Exception:
            logging.getLogger(__name__).exception("walking the %s store for /metrics failed", region)
        finally:
            walk.running = False

    def collect(self) -> Iterator[GaugeMetricFamily]:
        size = GaugeMetricFamily("stratus_store_bytes", "Bytes of chunks in the region's store (cached walk)",
                                 labels=["region"])
        chunks = GaugeMetricFamily("stratus_store_chunks", "Chunks in the region's store (cached walk)",
                                   labels=["region"])
        age = GaugeMetricFamily("stratus_store_walk_age_seconds", "Age of the walk the store figures come from",
                                labels=["region"])
        free = GaugeMetricFamily("stratus_store_free_bytes", "Free bytes on the store's filesystem",
                                 labels=["region"])
        now = time.monotonic()
        for region in self.svc.settings.regions:
            walk = self._walks[region.name]
            self._maybe_walk(region.name)
            if walk.finished_at:
                size.add_metric([region.name], walk.bytes)
                chunks.add_metric([region.name], walk.chunks)
                age.add_metric([region.name], now - walk.finished_at)
            try:
                st = os.statvfs(region.store_path)
                free.add_metric([region.name], st.f_bavail * st.f_frsize)
            except OSError:
                pass
        yield from (size, chunks, age, free)


def make_metrics_endpoint(svc: Services):
    """The `/metrics` endpoint, readable from the networks in `metrics.allow` only."""
    allow = svc.settings.metrics.allow
    registry = CollectorRegistry(auto_describe=False)
    registry.register(TaskCollector(svc))
    stores = StoreCollector(svc, svc.settings.metrics.store_walk_seconds)
    registry.register(stores)
    stores.start()

    def endpoint(request: Request) -> Response:
        client = request.client.host if request.client else ""
        try:
            addr = ipaddress.ip_address(client)
        except ValueError:
            addr = None
        if addr is None or not any(addr in net for net in allow):
            return PlainTextResponse(f"/metrics is not readable from {client or 'this address'} "
                                     "(see metrics.allow in the server's config)\n", status_code=403)
        body = generate_latest(REGISTRY) + generate_latest(registry)
        return Response(body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    return endpoint
