"""stratus.malloc: large buffers are served from memory malloc keeps, not fresh mappings."""

import platform
import subprocess
import sys

import pytest

# In a fresh process: is a 16 MiB buffer a mapping of its own (hblks counts them), with and without tuning?
PROBE = """
import ctypes, sys
from stratus.malloc import keep_freed_memory
class Info(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]
libc = ctypes.CDLL(None)
libc.mallinfo2.restype = Info
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
if sys.argv[1] == "tuned":
    assert keep_freed_memory()
before = libc.mallinfo2().hblks
p = libc.malloc(16 << 20)
print(libc.mallinfo2().hblks - before)
libc.free(p)
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
@pytest.mark.parametrize(("mode", "mappings"), [("default", 1), ("tuned", 0)])
def test_large_buffers_come_from_the_heap_once_tuned(mode: str, mappings: int) -> None:
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True).stdout
    assert int(out) == mappings
