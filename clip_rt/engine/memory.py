"""Memory settings for small devices: ``clip-rt --low-memory`` and ``load(low_memory=True)``.

Low-memory mode is the lowest peak that keeps the results: the same graphs on the same pixels,
only one image per batch instead of eight (the export checks that a batch of one gives the
embeddings of a batch: bit-identical or within float rounding, 7.5e-8 measured; docs/devices.md):

- glibc's malloc serves a large allocation (128 KiB at first) with its own mapping and unmaps
  it when freed, but after the first such free it raises that threshold to the freed size (up
  to 32 MiB), so later buffers of that size (an onnxruntime session's load-time copies of the
  weights, a decoded 6-MP photo, a batch of pixels) come from the heap and stay in the process
  once freed. :func:`use_low_memory_allocator` fixes the threshold at 128 KiB: each large
  buffer is mapped and returned to the system when freed. This one is process-wide.
- onnxruntime sessions without their CPU arena and memory pattern
  (:data:`LOW_MEMORY_SESSION_OPTIONS`): intermediate tensors are freed after each run instead
  of being kept, at the arena's largest size, for the next one.
- images one at a time (:data:`LOW_MEMORY_IMAGE_BATCH`) and one decoding thread
  (:data:`LOW_MEMORY_DECODE_WORKERS`): one decoded photo at a time beside the model.

Each costs some time per image, which is why it is a mode and not the default everywhere.
The CLI turns it on by itself where the memory this process may use is at most
:data:`AUTO_LOW_MEMORY_AT` (a 1 or 2 GB board, or a container limited to that):
:func:`choose_memory_mode`, shown by ``clip-rt info``. Figures: docs/devices.md.
"""

from __future__ import annotations

import ctypes
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

M_MMAP_THRESHOLD = -3  # glibc's <malloc.h>
LOW_MEMORY_MMAP_THRESHOLD = 128 * 1024
LOW_MEMORY_SESSION_OPTIONS = {"enable_cpu_mem_arena": False, "enable_mem_pattern": False}
LOW_MEMORY_IMAGE_BATCH = 1
LOW_MEMORY_DECODE_WORKERS = 1
AUTO_LOW_MEMORY_AT = 2 * 1024**3  # bytes of memory this process may use, at most

MEMINFO = "/proc/meminfo"
# cgroup v2, then v1: the limit of the group this process runs in (a container's --memory)
CGROUP_LIMIT_FILES = ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes")


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


@dataclass(frozen=True)
class MemoryLimit:
    """The memory this process may use, in bytes, and where that figure came from."""

    bytes: int
    source: str  # "/proc/meminfo MemTotal" or a cgroup file


def memory_limit(meminfo: str = MEMINFO, cgroup_files: Sequence[str] = CGROUP_LIMIT_FILES) -> Optional[MemoryLimit]:
    """The smaller of the machine's RAM (MemTotal) and this process's cgroup limit; None where
    neither can be read (not Linux). A cgroup with no limit says ``max`` (v2) or a huge number
    (v1), and the RAM is the limit then."""
    found: list[MemoryLimit] = []
    try:
        for line in Path(meminfo).read_text(encoding="ascii", errors="replace").splitlines():
            if line.startswith("MemTotal:"):
                fields = line.split()
                if len(fields) >= 2 and fields[1].isdigit():
                    found.append(MemoryLimit(int(fields[1]) * 1024, f"{meminfo} MemTotal"))
                break
    except OSError:
        pass
    for path in cgroup_files:
        try:
            text = Path(path).read_text(encoding="ascii", errors="replace").strip()
        except OSError:
            continue
        if text.isdigit():
            found.append(MemoryLimit(int(text), path))
    return min(found, key=lambda m: m.bytes) if found else None


@dataclass(frozen=True)
class MemoryMode:
    """Whether low-memory mode is on, and why (what ``clip-rt info`` prints)."""

    low: bool
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {"low_memory": self.low, "reason": self.reason}


def _gib(n: int) -> str:
    return f"{n / 1024**3:.1f} GiB"


def choose_memory_mode(asked: Optional[bool], limit: Optional[MemoryLimit]) -> MemoryMode:
    """*asked*: True/False from ``--low-memory``/``--no-low-memory``, None for automatic: on
    where *limit* (:func:`memory_limit`) is at most :data:`AUTO_LOW_MEMORY_AT`."""
    if asked is not None:
        return MemoryMode(asked, "--low-memory" if asked else "--no-low-memory")
    if limit is None:
        return MemoryMode(False, "automatic: this system does not say how much memory it has")
    where = f"{_gib(limit.bytes)} ({limit.source})"
    if limit.bytes <= AUTO_LOW_MEMORY_AT:
        return MemoryMode(
            True,
            f"automatic: this process may use {where}, at most {_gib(AUTO_LOW_MEMORY_AT)}; "
            "--no-low-memory turns it off",
        )
    return MemoryMode(
        False,
        f"automatic: this process may use {where}, more than {_gib(AUTO_LOW_MEMORY_AT)}; --low-memory turns it on",
    )


def low_memory_session_options(session_options: Any) -> Any:
    """*session_options* (None or a dict of onnxruntime SessionOptions fields) with the
    low-memory fields added; the caller's own values win."""
    from ..errors import InputError

    if session_options is None:
        return dict(LOW_MEMORY_SESSION_OPTIONS)
    if isinstance(session_options, dict):
        return {**LOW_MEMORY_SESSION_OPTIONS, **session_options}
    raise InputError(
        "low_memory=True sets onnxruntime SessionOptions fields itself, so session_options must be a "
        f"dict of fields (yours win), got {type(session_options).__name__}; or pass low_memory=False "
        f"and set {', '.join(f'{k}={v}' for k, v in LOW_MEMORY_SESSION_OPTIONS.items())} on yours"
    )
