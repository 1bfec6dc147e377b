"""A shared lock for machines where heavy work takes turns (``flock FILE`` semantics).

With ``--lock FILE`` the check holds an exclusive ``flock(2)`` on FILE only while a heavy step
runs (each export, each step inside the emulated system and on x86), never for the whole run, so
that others sharing the machine get their turns between steps and timed steps do not overlap
with their work. The guest takes the same lock: FILE is bound into the emulated system, and
qemu-user passes ``flock`` through to the host kernel. Stdlib only (the guest runs it with the
system Python, before any venv exists).
"""

from __future__ import annotations

import contextlib
import fcntl
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Callable, Optional


@contextlib.contextmanager
def held(path: Optional[str | Path], what: str, say: Callable[[str], None]) -> Iterator[float]:
    """Hold an exclusive flock on *path* for the block (no-op when *path* is None); yields the
    seconds spent waiting for it, reported so that waits are never mistaken for work."""
    if path is None:
        yield 0.0
        return
    t0 = time.monotonic()
    with open(path, "a+b") as f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            say(f"{what}: waiting for the lock {path}")
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        waited = time.monotonic() - t0
        try:
            yield waited
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)
