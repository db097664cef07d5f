"""Keep freed memory for reuse instead of handing it back to the kernel after every large buffer.

The data paths allocate and free chunk-sized buffers (1 MiB chunks, 8 MiB batches) thousands of times a
second. glibc serves such sizes with mmap and returns them with munmap (or trims its heaps), so each new
buffer is fresh pages the kernel must fault in and zero: on the VMs measured, zeroing pages was 13% of the
server's CPU during an export. A fixed mmap threshold above those sizes and a high trim threshold make
malloc reuse the memory instead; what is kept is bounded by the largest burst of buffers in flight.
"""

from __future__ import annotations

import ctypes

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 * 1024 * 1024  # glibc's largest allowed value on 64-bit (HEAP_MAX / 2)
TRIM_THRESHOLD = 256 * 1024 * 1024


def keep_freed_memory() -> bool:
    """Tune glibc's malloc for buffer reuse; False where it is not glibc (nothing changes there)."""
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the process's own symbols: libc's, without a library search
    except (OSError, AttributeError):
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
