"""The process's Prometheus counters that the lower layers increment where the work happens.

Only counters live here (no I/O, importable from `storage`); the `/metrics` endpoint, the request
metrics and the collectors that read the catalog and the stores at scrape time are in
`stratus.api.metrics`. Counters are per process: with `stratus worker` processes beside the server,
each process counts its own work (docs/operations.md says what to scrape).
"""

from __future__ import annotations

from prometheus_client import Counter

INGESTED_BYTES = Counter(
    "stratus_ingested_bytes",
    "Bytes of disk data cut into chunks by imports (data bytes, zeros excluded)",
)
EXPORTED_BYTES = Counter("stratus_exported_bytes", "Bytes of disk (virtual size) written out by exports")
COPIED_BYTES = Counter("stratus_copied_bytes", "Bytes of chunks copied between region stores by SyncImages")
CHUNK_VERIFY_FAILURES = Counter(
    "stratus_chunk_verify_failures",
    "Chunk reads whose bytes did not hash to their name (damage on disk; run `stratus fsck`)",
)
