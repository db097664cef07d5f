"""Instance drivers: `disk` (qcow2 overlays only) and `qemu` (a real VM over QMP).

Imports disk and domain only.
"""
