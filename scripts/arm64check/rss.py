"""Peak memory of a process, and under qemu-user the part that belongs to the emulated program.

``VmHWM`` (/proc/self/status) is exact but, under qemu-user, counts the whole qemu process:
the guest program plus qemu's own memory (its code, and its cache of translated code, which
grows with the code executed: importing onnxruntime and numpy costs ~70 MiB more under qemu
than natively). To separate them, ``PeakSampler`` reads every *interval* seconds:

- ``/proc/self/maps``, which qemu-user answers itself with the *guest's* mappings only (in guest
  addresses; qemu 7.2 maps the guest at guest_base 0 on x86-64 hosts, so they are the host's
  addresses too), and
- ``/proc/self/smaps``, which qemu 7.2 passes through: the host's view, every mapping's RSS.

The RSS of host mappings inside guest mappings is the guest program's RSS: what the board
would show, give or take its kernel's page size. Natively there is nothing to split off: the
guest is the whole process. Splitting anyway would undercount, because a short-lived mapping
(a large buffer under --low-memory) can appear in smaps yet in neither maps read around it, so
the split is made only under qemu-user (``under_qemu_user``). The sampled peak can miss a
spike shorter than the interval; the sampled total is reported beside VmHWM to show how much
was missed.

stdlib only: imported by the measured child processes on both sides.
"""

from __future__ import annotations

import bisect
import os
import threading
from typing import Optional


def merged_ranges(maps_text: str) -> list[tuple[int, int]]:
    """Address ranges of a /proc/<pid>/maps text, sorted, touching ranges merged (the host may
    merge two adjacent guest mappings into one)."""
    ranges = []
    for line in maps_text.splitlines():
        field = line.split(None, 1)[0] if line.strip() else ""
        lo, sep, hi = field.partition("-")
        if sep:
            ranges.append((int(lo, 16), int(hi, 16)))
    ranges.sort()
    merged: list[tuple[int, int]] = []
    for lo, hi in ranges:
        if merged and lo <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], hi))
        else:
            merged.append((lo, hi))
    return merged


def _inside(ranges: list[tuple[int, int]], starts: list[int], lo: int, hi: int) -> bool:
    i = bisect.bisect_right(starts, lo) - 1
    return i >= 0 and ranges[i][0] <= lo and hi <= ranges[i][1]


def rss_split_kb(smaps_text: str, ranges: Optional[list[tuple[int, int]]]) -> tuple[int, int]:
    """(total RSS, RSS of mappings inside *ranges*) in kB, from a /proc/<pid>/smaps text.
    *ranges* None: everything counts as inside."""
    starts = [r[0] for r in ranges] if ranges is not None else []
    total = inside = 0
    current_in = False
    for line in smaps_text.splitlines():
        head = line.split(None, 1)[0] if line else ""
        lo, sep, hi = head.partition("-")
        if sep and lo and all(c in "0123456789abcdef" for c in lo):
            current_in = ranges is None or _inside(ranges, starts, int(lo, 16), int(hi, 16))
        elif line.startswith("Rss:"):
            kb = int(line.split()[1])
            total += kb
            if current_in:
                inside += kb
    return total, inside


def vm_hwm_mb() -> float:
    with open("/proc/self/status") as f:
        status = dict(line.split(":", 1) for line in f if ":" in line)
    return int(status["VmHWM"].split()[0]) / 1024


def under_qemu_user() -> bool:
    """True in the arm64 check's guest processes: emulator.py sets QEMU_CPU in every one of them
    (qemu-user reads it); a native process, or a real board, has no reason to."""
    return "QEMU_CPU" in os.environ


class PeakSampler(threading.Thread):
    """Samples this process's total and guest RSS until ``stop()``; peaks in MiB.
    *split* (default: ``under_qemu_user()``) separates the guest's mappings from qemu's."""

    def __init__(self, interval: float = 0.5, split: Optional[bool] = None) -> None:
        super().__init__(daemon=True)
        self.interval = interval
        self.split = under_qemu_user() if split is None else split
        self.total_peak_mb = 0.0
        self.guest_peak_mb = 0.0
        self.samples = 0
        self._stop_event = threading.Event()

    def sample(self) -> None:
        if not self.split:
            with open("/proc/self/smaps") as f:
                total, _ = rss_split_kb(f.read(), None)
            self._record(total, total)
            return
        # maps read before and after smaps: a mapping made or grown (the heap, an arena) by
        # another thread between the reads is in the second, so it is not taken for qemu's
        with open("/proc/self/maps") as f:
            before = f.read()
        with open("/proc/self/smaps") as f:
            smaps = f.read()
        with open("/proc/self/maps") as f:
            after = f.read()
        total, guest = rss_split_kb(smaps, merged_ranges(before + "\n" + after))
        self._record(total, guest)

    def _record(self, total: int, guest: int) -> None:
        self.total_peak_mb = max(self.total_peak_mb, total / 1024)
        self.guest_peak_mb = max(self.guest_peak_mb, guest / 1024)
        self.samples += 1

    def run(self) -> None:
        while not self._stop_event.is_set():
            self.sample()
            self._stop_event.wait(self.interval)

    def stop(self) -> dict[str, float]:
        """The peaks so far (the sampling thread, if started, is joined first); a sampler that
        was never started takes one sample now: the trivial and imports children measure only
        their end state."""
        self._stop_event.set()
        if self.ident is not None:  # started: Thread.join() raises on a thread never started
            self.join()
        self.sample()  # the end state too
        return {
            "peak_rss_mb": vm_hwm_mb(),
            "sampled_total_peak_mb": self.total_peak_mb,
            "sampled_guest_peak_mb": self.guest_peak_mb,
            "samples": self.samples,
        }
