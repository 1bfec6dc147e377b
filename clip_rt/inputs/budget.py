"""One process-wide budget for the memory that decoding images takes.

Each decode thread reserves, before it decodes a file, what the decoded pixels and their
preprocessing copies will take (known from the header: width x height x bytes per pixel of the
mode, twice, for the copy an EXIF rotation, an animated frame or an alpha resize makes), and gives
it back once the image is preprocessed. A thread whose image does not fit waits for the others to
finish theirs, so N workers never hold N huge images at once; an image that needs more than the
whole budget fails on its own (its record says so) and the run goes on.

The budget is ``CLIP_RT_DECODE_MEMORY_MB`` (default 1024 MB: room for the largest image Pillow
opens, 89.5 megapixels at 4 bytes, with its copy), or :func:`set_decode_memory`.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import threading
from collections.abc import Iterator
from typing import Any, Optional

from ..errors import InputError, load_error

ENV = "CLIP_RT_DECODE_MEMORY_MB"
DEFAULT_MB = 1024
COPIES = 2  # the decoded image and one full-size copy made while preprocessing it
TRIM_BYTES = 64 << 20  # after a reservation this large, freed memory is handed back to the system
# Bytes per pixel as Pillow stores each mode (RGB and LA take 4: Pillow pads them to 32 bits).
_BYTES_PER_PIXEL = {
    "1": 1,
    "L": 1,
    "P": 1,
    "I;16": 2,
    "I;16L": 2,
    "I;16B": 2,
    "I;16N": 2,
    "BGR;15": 2,
    "BGR;16": 2,
    "BGR;24": 3,
}


def decoded_bytes(width: int, height: int, mode: str) -> int:
    """What decoding and preprocessing an image of this size and mode may hold at once."""
    return COPIES * width * height * _BYTES_PER_PIXEL.get(mode, 4)


class DecodeBudget:
    """Bytes of decoded images the decode threads may hold at once (thread-safe)."""

    def __init__(self, limit_bytes: int) -> None:
        self._limit = limit_bytes
        self._used = 0
        self._cond = threading.Condition()

    @property
    def limit(self) -> int:
        return self._limit

    @property
    def used(self) -> int:
        return self._used

    def set_limit(self, limit_bytes: int) -> None:
        with self._cond:
            self._limit = limit_bytes
            self._cond.notify_all()

    @contextlib.contextmanager
    def reserve(self, nbytes: int, label: str, what: str) -> Iterator[None]:
        """Hold *nbytes* for the block, waiting while other threads hold too much. An image that
        needs more than the whole budget is that image's ImageLoadError."""
        if nbytes > self._limit:
            raise load_error(
                label,
                f"{what} needs about {_mb(nbytes)} to decode and preprocess, more than "
                f"the decode memory budget of {_mb(self._limit)} ({ENV}, or "
                "clip_rt.inputs.budget.set_decode_memory)",
            )
        with self._cond:
            while self._used + nbytes > self._limit:
                self._cond.wait()
            self._used += nbytes
        try:
            yield
        finally:
            if nbytes >= TRIM_BYTES:
                _trim()
            with self._cond:
                self._used -= nbytes
                self._cond.notify_all()


_libc: Any = None


def _trim() -> None:
    """Hand freed heap memory back to the system (glibc's malloc_trim; a no-op elsewhere).

    Without it the budget bounds what is *used* but not the RSS: glibc raises its mmap threshold
    after the first big free, so the next image's blocks come from a decode thread's own arena and
    stay there once freed, and with N threads N images' worth stays resident (measured: 9400x9400
    float TIFFs, 2 threads: 752 MB peak RSS without the trim, 414 MB with it)."""
    global _libc
    if _libc is None:
        name = ctypes.util.find_library("c")
        try:
            lib = ctypes.CDLL(name) if name else None
            _libc = lib if lib is not None and hasattr(lib, "malloc_trim") else False
        except OSError:
            _libc = False
    if _libc:
        _libc.malloc_trim(0)


def _mb(nbytes: int) -> str:
    return f"{nbytes / (1 << 20):.0f} MB"


def _from_env() -> int:
    raw = os.environ.get(ENV, "").strip()
    if not raw:
        return DEFAULT_MB << 20
    try:
        mb = float(raw)
    except ValueError:
        mb = -1.0
    if not mb > 0:
        raise InputError(f"{ENV} must be a positive number of megabytes, got {raw!r}")
    return int(mb * (1 << 20))


_budget: Optional[DecodeBudget] = None
_budget_lock = threading.Lock()


def decode_budget() -> DecodeBudget:
    """The process-wide budget (created from the environment on first use)."""
    global _budget
    with _budget_lock:
        if _budget is None:
            _budget = DecodeBudget(_from_env())
        return _budget


def set_decode_memory(megabytes: float) -> None:
    """Set the process-wide decode memory budget, in megabytes."""
    if isinstance(megabytes, bool) or not isinstance(megabytes, (int, float)) or not megabytes > 0:
        raise InputError(f"the decode memory budget must be a positive number of megabytes, got {megabytes!r}")
    decode_budget().set_limit(int(megabytes * (1 << 20)))
