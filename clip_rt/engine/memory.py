"""Process-wide memory settings for small devices: ``clip-rt --low-memory``.

glibc's malloc serves a large allocation (128 KiB at first) with its own mapping and unmaps it
when freed, but after the first such free it raises that threshold to the freed size (up to
32 MiB), so later buffers of that size (an onnxruntime session's load-time copies of the
weights, a decoded 6-MP photo, a batch of pixels) come from the heap and stay in the process
once freed. A one-image classify keeps ~18 MiB more at its peak that way (docs/devices.md).
:func:`use_low_memory_allocator` fixes the threshold at 128 KiB: each large buffer is mapped
and returned to the system when freed. Results are identical; the cost is a fresh mapping (and
its page faults) per large buffer, which is why it is a setting and not the default.

Python API users can call :func:`use_low_memory_allocator` themselves, or set glibc's own
``MALLOC_MMAP_THRESHOLD_=131072`` in the environment before the process starts.
"""
from __future__ import annotations

import ctypes
import sys
from typing import Any, Optional

M_MMAP_THRESHOLD = -3  # glibc's <malloc.h>
LOW_MEMORY_MMAP_THRESHOLD = 128 * 1024


def use_low_memory_allocator(libc: Optional[Any] = None) -> bool:
    """Fix glibc's mmap threshold at 128 KiB for the rest of the process. True when applied;
    False where the C library has no ``mallopt`` or refuses it (not Linux/glibc: nothing done)."""
    if libc is None:
        if not sys.platform.startswith("linux"):
            return False
        try:
            libc = ctypes.CDLL(None)  # the process's own symbols, the C library's among them
        except OSError:
            return False
    mallopt = getattr(libc, "mallopt", None)
    if mallopt is None:
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, LOW_MEMORY_MMAP_THRESHOLD))
