"""What an export is doing, phase by phase (load, export each graph, check it, calibrate and
quantise, gate, write).

``ExportProgress`` is what the export reports to: each phase is a ``with progress.phase(...)``
block that may count its items (calibration inputs) and change its status. A ``Display`` shows
it: ``TerminalDisplay`` keeps one live line on a terminal (counts, elapsed time, ETA) and leaves
one finished line per phase; ``StreamDisplay`` writes one plain line per phase
(``exporting the image graph (fp32)... done in 12 s``) for logs and pipes; ``LineDisplay``
hands whole lines to a callable (the API's ``log=``). Every phase's wall and CPU time is kept in
``records``; with ``measure_memory`` also its peak RSS (Linux), for bench/export_phases.py.
"""

from __future__ import annotations

import os
import shutil
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Optional, Protocol, TextIO


def format_seconds(seconds: float) -> str:
    """``0.4 s``, ``12 s``, ``2 min 05 s``."""
    if seconds < 10:
        return f"{seconds:.1f} s"
    if seconds < 60:
        return f"{seconds:.0f} s"
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes} min {rest:02d} s"


class Phase:
    """One phase while it runs: what the display shows."""

    def __init__(self, key: str, title: str, total: Optional[int], unit: str, live: bool = True) -> None:
        self.key = key
        self.title = title
        self.total = total
        self.unit = unit
        self.live = live  # False: other output (a download's own bars) may appear, no live line
        self.done = 0
        self.status = ""
        self.started = time.perf_counter()
        self.counted_at: Optional[float] = None  # when the count reached its total
        self._marks: list[tuple[str, float]] = []

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def eta(self) -> Optional[float]:
        """Seconds left, from the pace so far; None without a count to go by."""
        if not self.total or self.done <= 0 or self.done >= self.total:
            return None
        return self.elapsed / self.done * (self.total - self.done)

    def marks(self) -> dict[str, float]:
        """Seconds from the start of the phase at which each status was entered."""
        return dict(self._marks)


class Display(Protocol):
    def started(self, phase: Phase) -> None: ...

    def changed(self, phase: Phase) -> None: ...

    def finished(self, phase: Phase, failed: bool) -> None: ...

    def note(self, message: str) -> None: ...


@dataclass
class PhaseRecord:
    """A finished phase: times, and memory where it was measured (MiB)."""

    key: str
    title: str
    wall_s: float
    cpu_s: float
    count: Optional[int] = None
    unit: str = ""
    rss_start_mib: Optional[float] = None  # at the start of the phase (measure_memory)
    rss_mib: Optional[float] = None  # at the end of the phase
    peak_mib: Optional[float] = None  # the highest RSS during the phase (measure_memory)
    marks: dict[str, float] = field(default_factory=dict)
    failed: bool = False

    def as_dict(self) -> dict[str, object]:
        out: dict[str, object] = {
            "phase": self.key,
            "title": self.title,
            "wall_s": round(self.wall_s, 2),
            "cpu_s": round(self.cpu_s, 2),
        }
        if self.count is not None:
            out["count"] = self.count
            out["unit"] = self.unit
        if self.rss_start_mib is not None:
            out["rss_start_mib"] = round(self.rss_start_mib, 1)
        if self.rss_mib is not None:
            out["rss_end_mib"] = round(self.rss_mib, 1)
        if self.peak_mib is not None:
            out["peak_rss_mib"] = round(self.peak_mib, 1)
        if self.marks:
            out["status_at_s"] = {k: round(v, 2) for k, v in self.marks.items()}
        if self.failed:
            out["failed"] = True
        return out


def _cpu_seconds() -> float:
    return time.process_time()  # user + system, every thread of the process


def _rss_mib() -> tuple[Optional[float], Optional[float]]:
    """(current RSS, peak RSS since the last reset) from /proc/self/status; (None, None) elsewhere."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            values = {
                k: int(v.split()[0]) / 1024
                for k, _, v in (line.partition(":") for line in f)
                if k in ("VmRSS", "VmHWM")
            }
    except (OSError, ValueError):
        return None, None
    return values.get("VmRSS"), values.get("VmHWM")


def _reset_peak() -> bool:
    """Reset the process's peak RSS (VmHWM) to its current RSS (Linux 4.0+). Also what
    `/usr/bin/time` reports at exit, so only the benchmark, which reads the peaks itself, does it."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")
        return True
    except OSError:
        return False


class ExportProgress:
    """The phases of one export, shown on *display* (None: shown nowhere) and kept in ``records``.

    *measure_memory*: also record each phase's peak RSS, by resetting the process's peak at the
    start of every phase (Linux; the process-wide peak that ``/usr/bin/time`` prints is then
    only the last phase's, so the CLI does not do this)."""

    def __init__(self, display: Optional[Display] = None, measure_memory: bool = False) -> None:
        self.display = display
        self.measure_memory = measure_memory and _reset_peak()
        self.records: list[PhaseRecord] = []
        self._current: Optional[Phase] = None

    @contextmanager
    def phase(
        self, key: str, title: str, total: Optional[int] = None, unit: str = "", live: bool = True
    ) -> Iterator[PhaseHandle]:
        """One phase; *key* names it in ``records`` (``export:image:fp32``), *title* is what users
        read; *total*: how many *unit* it counts (``handle.advance``); *live* False when other
        output may appear during it (no live line drawn over it)."""
        if self._current is not None:
            raise RuntimeError(f"phase {key!r} started inside phase {self._current.key!r}")
        rss0 = None
        if self.measure_memory:
            _reset_peak()
            rss0 = _rss_mib()[0]
        cpu0 = _cpu_seconds()
        phase = Phase(key, title, total, unit, live)
        self._current = phase
        if self.display is not None:
            self.display.started(phase)
        failed = True
        try:
            yield PhaseHandle(self, phase)
            failed = False
        finally:
            self._current = None
            if self.display is not None:
                self.display.finished(phase, failed)
            rss, peak = _rss_mib() if self.measure_memory else (None, None)
            self.records.append(
                PhaseRecord(
                    key=key,
                    title=title,
                    wall_s=phase.elapsed,
                    cpu_s=_cpu_seconds() - cpu0,
                    count=phase.done if total is not None else None,
                    unit=unit,
                    rss_start_mib=rss0,
                    rss_mib=rss,
                    peak_mib=peak,
                    marks=phase.marks(),
                    failed=failed,
                )
            )

    def note(self, message: str) -> None:
        """A line of information (a parity figure) between or during phases."""
        if self.display is not None:
            self.display.note(message)


class PhaseHandle:
    """What the code running a phase uses: count its items, say what it is doing now."""

    def __init__(self, owner: ExportProgress, phase: Phase) -> None:
        self._owner = owner
        self._phase = phase

    def advance(self, n: int = 1) -> None:
        phase = self._phase
        phase.done += n
        if phase.total is not None and phase.done >= phase.total and phase.counted_at is None:
            phase.counted_at = phase.elapsed
        if self._owner.display is not None:
            self._owner.display.changed(phase)

    def status(self, text: str) -> None:
        """What the phase does now (``quantising``): shown after its title, its start time recorded."""
        phase = self._phase
        phase.status = text
        phase._marks.append((text, phase.elapsed))
        if self._owner.display is not None:
            self._owner.display.changed(phase)


def _counts(phase: Phase) -> str:
    if phase.total is None:
        return ""
    return f"{min(phase.done, phase.total)}/{phase.total}" + (f" {phase.unit}" if phase.unit else "")


class LineDisplay:
    """Whole lines to a callable (``export_bundle(log=print)``): a line when a phase starts, one
    when it ends, and the notes."""

    def __init__(self, log: Callable[[str], None]) -> None:
        self.log = log

    def started(self, phase: Phase) -> None:
        self.log(f"{phase.title}...")

    def changed(self, phase: Phase) -> None:
        pass

    def finished(self, phase: Phase, failed: bool) -> None:
        counted = f" ({_counts(phase)})" if phase.total is not None else ""
        self.log(f"{phase.title}: {'failed after' if failed else 'done in'} {format_seconds(phase.elapsed)}{counted}")

    def note(self, message: str) -> None:
        self.log(message)


class StreamDisplay:
    """One plain line per phase on a stream that is not a terminal (a log file, a pipe, CI):
    ``title... done in 12 s``, the title written when the phase starts so a reader sees what
    runs. A note in the middle of a phase ends the line first; the phase then finishes on a line
    of its own."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self._open: Optional[Phase] = None  # the phase whose title ends the last line written

    def started(self, phase: Phase) -> None:
        self._close_line()
        self.stream.write(f"{phase.title}... ")
        self.stream.flush()
        self._open = phase

    def changed(self, phase: Phase) -> None:
        pass

    def finished(self, phase: Phase, failed: bool) -> None:
        counted = f" ({_counts(phase)})" if phase.total is not None else ""
        outcome = f"{'failed after' if failed else 'done in'} {format_seconds(phase.elapsed)}{counted}"
        self.stream.write(outcome + "\n" if self._open is phase else f"{phase.title}: {outcome}\n")
        self.stream.flush()
        self._open = None

    def note(self, message: str) -> None:
        self._close_line()
        self.stream.write(message + "\n")
        self.stream.flush()

    def _close_line(self) -> None:
        if self._open is not None:
            self.stream.write("\n")
            self._open = None


_SPINNER = "|/-\\"


class TerminalDisplay:
    """A live line on a terminal for the running phase (counts, elapsed, ETA; redrawn by a
    ticker thread so long phases without counts still move), replaced by a finished line."""

    TICK_S = 0.5

    def __init__(self, stream: TextIO, width: Optional[int] = None) -> None:
        self.stream = stream
        self.width = width
        self._phase: Optional[Phase] = None
        self._lock = threading.Lock()
        self._ticks = 0
        self._last_draw = 0.0
        self._stop = threading.Event()
        self._ticker: Optional[threading.Thread] = None

    def _columns(self) -> int:
        return self.width or shutil.get_terminal_size((100, 24)).columns

    def _line(self, phase: Phase) -> str:
        parts = [phase.title]
        if phase.status:
            parts.append(phase.status)
        counts = _counts(phase)
        if counts and not (phase.status and phase.counted_at is not None):
            parts.append(counts)
        timing = format_seconds(phase.elapsed)
        eta = phase.eta()
        if eta is not None:
            timing += f", about {format_seconds(eta)} left"
        parts.append(timing)
        line = f"{_SPINNER[self._ticks % len(_SPINNER)]} " + "  ".join(parts)
        return line[: max(10, self._columns() - 1)]

    def _draw(self) -> None:  # under the lock
        if self._phase is not None:
            self.stream.write("\r" + self._line(self._phase) + "\x1b[K")
            self.stream.flush()
            self._last_draw = time.perf_counter()

    def _tick(self) -> None:
        while not self._stop.wait(self.TICK_S):
            with self._lock:
                self._ticks += 1
                self._draw()

    def started(self, phase: Phase) -> None:
        if not phase.live:
            self.stream.write(f"{phase.title}...\n")
            self.stream.flush()
            return
        with self._lock:
            self._phase = phase
            self._draw()
        if self._ticker is None:
            self._stop.clear()
            self._ticker = threading.Thread(target=self._tick, name="clip-rt-export-progress", daemon=True)
            self._ticker.start()

    def changed(self, phase: Phase) -> None:
        with self._lock:
            if time.perf_counter() - self._last_draw >= 0.1 or phase.status:
                self._draw()

    def finished(self, phase: Phase, failed: bool) -> None:
        counted = f" ({_counts(phase)})" if phase.total is not None else ""
        outcome = f"{'failed after' if failed else 'done in'} {format_seconds(phase.elapsed)}{counted}"
        with self._lock:
            self._phase = None
            self.stream.write(f"\r{phase.title}... {outcome}\x1b[K\n")
            self.stream.flush()
        self.close()

    def note(self, message: str) -> None:
        with self._lock:
            self.stream.write("\r\x1b[K" + message + "\n")
            self._draw()
            self.stream.flush()

    def close(self) -> None:
        """Stop the ticker (between phases nothing moves)."""
        ticker, self._ticker = self._ticker, None
        if ticker is not None:
            self._stop.set()
            ticker.join()


def display_for(stream: Optional[TextIO] = None) -> Display:
    """The display for *stream* (default stderr): live on a terminal that can redraw a line,
    plain lines otherwise."""
    stream = stream if stream is not None else sys.stderr
    is_tty = getattr(stream, "isatty", lambda: False)()
    if is_tty and os.environ.get("TERM", "") != "dumb":
        return TerminalDisplay(stream)
    return StreamDisplay(stream)
