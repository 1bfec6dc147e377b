"""``classify -o FILE``: the output file of a run, its identity, resume, and its safety.

- The run's identity (model fingerprint, precision, labels, templates) is kept in a sidecar
  ``<output>.clip-rt.json``, so that resuming with another model or other labels is refused.
- ``--resume`` reads an existing CSV/JSONL output, drops a torn last line (a run killed
  mid-write), and returns the records already done; new records are appended.
- Everything the output needs (its folder, the sidecar's place, the lock) is checked before
  anything is truncated. A run that replaces an earlier CSV/JSONL output streams its records
  into the real path (a killed run can be resumed), and keeps the earlier output aside as
  ``.<name>.previous`` until it ends: if writing fails (full disk ...) the earlier output is
  put back. JSON and table outputs are written to a temporary file and renamed at the end.
- One run at a time per output (:class:`~clip_rt.outputs.files.OutputLock`): a second run is
  refused, never interleaved.
- A device or FIFO (``-o /dev/null``) is written as it is, with no sidecar and no resume.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
from collections.abc import Sequence
from typing import Any, Optional

from ..display import display_path
from ..errors import InputError, OutputError
from .files import (
    OutputLock,
    RecordSink,
    atomic_file,
    check_regular_or_absent,
    check_target,
    file_kind,
    is_special,
    open_sink,
    output_error,
    remove_stale_temps,
    temp_name,
    through_link,
)
from .records import RESUMABLE, Record, csv_header, csv_line, dumps_json, unneutralise

SIDECAR_SUFFIX = ".clip-rt.json"
PREVIOUS_SUFFIX = ".previous"


# -- run identity (sidecar) ------------------------------------------------------------
def sidecar_path(output: str) -> str:
    return output + SIDECAR_SUFFIX


def write_sidecar(output: str, identity: dict[str, Any]) -> None:
    with atomic_file(sidecar_path(output), "w", "run description", encoding="utf-8") as f:
        f.write(dumps_json(identity) + "\n")


def _read_sidecar(side: str) -> bytes:
    """The run description's bytes: a regular file (a FIFO there would block the run), at most
    four times the labels-file limit (it holds the labels and templates) plus 1 MB."""
    from ..inputs.bounded import LABELS_ENV, env_hint, labels_limit, read_limited

    return read_limited(
        side,
        what=f"run description {display_path(side)!r}",
        limit=4 * labels_limit() + (1 << 20),
        hint=env_hint(LABELS_ENV),
    )


def recorded_precision(output: str) -> Optional[str]:
    """The precision *output*'s run description records; None when it has none (a missing or
    unreadable description is reported by :func:`check_sidecar`)."""
    try:
        stored = json.loads(_read_sidecar(sidecar_path(output)).decode("utf-8"))
    except (OSError, ValueError, InputError):
        return None
    value = stored.get("precision") if isinstance(stored, dict) else None
    return value if isinstance(value, str) else None


def check_sidecar(output: str, identity: dict[str, Any]) -> None:
    """Refuse to resume *output* if it was written by another model, precision, labels or templates."""
    side = sidecar_path(output)
    try:
        stored = json.loads(_read_sidecar(side).decode("utf-8"))
    except FileNotFoundError:
        raise InputError(
            f"cannot resume {display_path(output)!r}: its run description {display_path(side)!r} is missing, "
            "so it is unknown which model and labels wrote it; run without --resume to start over"
        ) from None
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise InputError(f"cannot resume: {display_path(side)!r} is not valid JSON ({exc})") from None
    except OSError as exc:
        raise InputError(f"cannot resume: cannot read {display_path(side)!r} ({exc.strerror or exc})") from None
    if not isinstance(stored, dict):
        raise InputError(f"cannot resume: {display_path(side)!r} is not a clip-rt run description")
    diffs = [k for k in identity if stored.get(k) != identity[k]]
    if diffs:
        detail = "; ".join(f"{k}: output has {stored.get(k)!r}, this run has {identity[k]!r}" for k in diffs)
        raise InputError(f"cannot resume {display_path(output)!r}: it was written by a different run ({detail})")


# -- the output file of a run ------------------------------------------------------------
class RecordOutput:
    """``-o FILE`` of one classify run. Use::

    out = RecordOutput(path, fmt, resume=resume)
    out.prepare(identity, labels)      # checks, lock, resume; nothing truncated yet
    sink = out.open()                  # the stream for RecordWriter
    try:
        ...write batches...; out.commit()
    except OutputError as exc:
        raise out.fail(exc, written=n)  # puts the previous output back where there was one
    finally:
        out.release()
    """

    def __init__(self, path: str, fmt: str, *, resume: bool = False) -> None:
        # A symbolic link: the file it points to is the output (its sidecar, lock and kept
        # earlier version live beside it), as when writing through the link.
        self.path, self.fmt, self.resume = through_link(path), fmt, resume
        self.streaming = fmt in RESUMABLE  # records appear in the real file as they come
        self.special = False
        self.done: list[Record] = []
        self.append = False
        self._identity: dict[str, Any] = {}
        self._lock: Optional[OutputLock] = None
        self._sink: Optional[RecordSink] = None
        self._tmp: Optional[str] = None  # JSON/table: written here, renamed at the end
        self._kept = False  # an earlier output was moved aside
        self._created = False  # this run made the file (it did not exist, or was empty)
        folder, base = os.path.split(path)
        self._previous = os.path.join(folder, f".{base}{PREVIOUS_SUFFIX}")

    # -- before anything is written ----------------------------------------------------
    def prepare(
        self, identity: dict[str, Any], labels: Sequence[str], described: Optional[dict[str, Any]] = None
    ) -> None:
        """*identity*: what a ``--resume`` must match; *described*: what the run description
        records (identity plus, e.g., which backend ran, which a resume may change)."""
        self._identity = described if described is not None else identity
        st = check_target(self.path)
        if is_special(st):
            if self.resume:
                kind = file_kind(st.st_mode)  # type: ignore[union-attr]  # is_special: st is a stat
                raise InputError(
                    f"cannot resume {display_path(self.path)!r}: it is a {kind}, not a file that holds earlier records"
                )
            self.special = True
            return
        self._lock = OutputLock(self.path).acquire()  # also proves files can be made in the folder
        try:
            check_regular_or_absent(sidecar_path(self.path), "run description")
            if st is not None and not os.access(self.path, os.W_OK):
                raise OutputError(f"cannot write output {display_path(self.path)!r}: it is read-only")
            remove_stale_temps(self.path)  # left by a killed JSON/table run on this output
            if self.resume and st is not None:
                check_sidecar(self.path, identity)
                try:
                    self.done = resume_jsonl(self.path) if self.fmt == "jsonl" else resume_csv(self.path, labels)
                    self.append = os.path.getsize(self.path) > 0
                except OSError as exc:
                    raise output_error(self.path, exc, "output") from None
        except BaseException:
            self.release()
            raise

    # -- writing -----------------------------------------------------------------------
    def open(self) -> RecordSink:
        """The stream to write records to. May move the earlier output aside (see the module).
        Call it inside the ``try`` whose ``except OutputError`` calls :meth:`fail`."""
        if self.special:
            self._sink = open_sink(self.path, "wb", truncatable=False)
            return self._sink
        # An OutputError here goes to fail() like one from a later write.
        if not self.streaming:
            self._tmp = temp_name(self.path)
            self._sink = open_sink(self._tmp, "wb", truncatable=False)
            self._sink.label = self.path
        elif self.append:
            self._sink = open_sink(self.path, "ab", truncatable=True)
        else:
            self._keep_previous()
            self._created = not os.path.exists(self.path)
            self._sink = open_sink(self.path, "wb", truncatable=True)
            if self._kept:
                _copymode(self._previous, self.path)
            # Truncate first, then describe: a kill in between leaves an empty output with
            # no description (resume refuses it), never old records under a new one.
            write_sidecar(self.path, self._identity)
        return self._sink

    def _keep_previous(self) -> None:
        try:
            if os.path.getsize(self.path) == 0:
                return
        except FileNotFoundError:
            return
        try:
            os.replace(self.path, self._previous)
            self._kept = True
            side = sidecar_path(self.path)
            if os.path.exists(side):
                os.replace(side, sidecar_path(self._previous))
        except OSError as exc:
            raise output_error(self.path, exc, "output") from None

    def commit(self) -> None:
        """The run ended: close the file, rename a temporary one into place, drop the earlier
        output that was kept aside."""
        assert self._sink is not None
        self._sink.close()
        if self.special:
            return
        if self._tmp is not None:
            try:
                fd = os.open(self._tmp, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
                _copymode(self.path, self._tmp)
                os.replace(self._tmp, self.path)
            except OSError as exc:
                raise output_error(self.path, exc, "output") from None
            self._tmp = None
            write_sidecar(self.path, self._identity)
        for stale in (self._previous, sidecar_path(self._previous)):  # also one left by a killed run
            _unlink(stale)
        self._kept = False

    def fail(self, exc: OutputError, written: int = 0) -> OutputError:
        """After *exc*: undo what can be undone; the returned error says what is where."""
        if self._sink is not None:
            self._sink.abort()
        where = display_path(self.path)
        if self.special:
            return exc
        if self._tmp is not None:
            _unlink(self._tmp)
            self._tmp = None
            kept = "was left as it was" if os.path.exists(self.path) else "was not written"
            return OutputError(f"{exc}; {where!r} {kept}")
        if self._kept:
            _unlink(sidecar_path(self.path))
            try:
                os.replace(self._previous, self.path)
                if os.path.exists(sidecar_path(self._previous)):
                    os.replace(sidecar_path(self._previous), sidecar_path(self.path))
            except OSError as undo:
                return OutputError(
                    f"{exc}; the earlier output could not be put back ({undo.strerror or undo}): "
                    f"it is in {display_path(self._previous)!r}"
                )
            self._kept = False
            return OutputError(f"{exc}; the earlier {where!r} was put back")
        total = written + len(self.done)
        if total:
            return OutputError(
                f"{exc}; the {total} record(s) written before it are in {where!r}: make room and continue with --resume"
            )
        if self._created:  # nothing in it, and no description: leave nothing behind
            _unlink(self.path)
            _unlink(sidecar_path(self.path))
        return exc

    def release(self) -> None:
        """Always, at the end: an unfinished temporary file is removed, the lock released. (A
        CSV/JSONL output interrupted by Ctrl-C stays as it is, for --resume.)"""
        if self._sink is not None and not self._sink.closed:
            self._sink.abort()
        if self._tmp is not None:
            _unlink(self._tmp)
            self._tmp = None
        if self._lock is not None:
            self._lock.release()
            self._lock = None


def _copymode(src: str, dst: str) -> None:
    try:
        if os.path.exists(src):
            shutil.copymode(src, dst)
    except OSError:
        pass


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


# -- resume: read what is done, drop a torn tail -------------------------------------------
def _read_text(path: str) -> str:
    with open(path, encoding="utf-8", errors="surrogateescape", newline="") as f:
        return f.read()


def _truncate(path: str, text_kept: str) -> None:
    """Cut *path* down to *text_kept*, its intact beginning. Never truncates past the end
    (that pads with NUL bytes): kept text longer than the file is written out instead."""
    size = len(text_kept.encode("utf-8", "surrogateescape"))
    on_disk = os.path.getsize(path)
    if size > on_disk:
        _rewrite(path, text_kept)
    elif size < on_disk:
        with open(path, "r+b") as f:
            f.truncate(size)


def _rewrite(path: str, text: str) -> None:
    with open(path, "wb") as f:
        f.write(text.encode("utf-8", "surrogateescape"))


def resume_jsonl(path: str) -> list[Record]:
    """Records already in a JSONL output. A last line with no newline is a torn write: dropped."""
    text = _read_text(path)
    keep = text[: text.rfind("\n") + 1]
    records = []
    for lineno, line in enumerate(keep.splitlines(), 1):
        if not line.strip():
            continue
        problem = _record_problem(line)
        if problem:
            raise InputError(
                f"cannot resume {display_path(path)!r}: line {lineno} is not a clip-rt record "
                f"({problem}); expected one JSON object per line as classify writes them, with a "
                '"path" string; run without --resume to start over'
            )
        records.append(Record.from_json(json.loads(line)))
    _truncate(path, keep)
    return records


def _record_problem(line: str) -> str:
    """Why a JSONL line is not one of our records ('' when it is one Record.from_json reads)."""
    try:
        data = json.loads(line)
    except (json.JSONDecodeError, RecursionError) as exc:
        return f"not valid JSON: {exc}"
    if not isinstance(data, dict):
        kind = {list: "an array", str: "a string", bool: "a boolean", int: "a number", float: "a number"}.get(
            type(data), "null"
        )
        return f"it is {kind}, not an object"
    if not isinstance(data.get("path"), str):
        return 'it has no "path" string'
    for key, expected, what in (("scores", dict, "an object"), ("top_k", list, "an array")):
        if data.get(key) is not None and not isinstance(data[key], expected):
            return f"its {key!r} is not {what}"
    top_k = data.get("top_k") or []
    if not all(isinstance(pair, list) and len(pair) == 2 for pair in top_k):
        return "its 'top_k' is not a list of [label, score] pairs"
    return ""


def resume_csv(path: str, labels: Sequence[str]) -> list[Record]:
    """Records already in a CSV output. Rows are re-serialised to find where the intact part
    ends (we wrote them, so the bytes match); a torn last row is dropped."""
    text = _read_text(path)
    bom = "\ufeff" if text.startswith("\ufeff") else ""
    header = csv_header(labels)
    header_line = csv_line(header)
    body = text[len(bom) :]
    if body and "\n" not in body and header_line.startswith(body):
        # Killed while the header was written (or just before its newline): complete it, so
        # the appended rows do not run on from it and nothing is padded.
        _rewrite(path, bom + header_line)
        return []
    kept = bom
    records: list[Record] = []
    rows = csv.reader(io.StringIO(body, newline=""), strict=True)
    try:
        first = next(rows, None)
        if first is None:
            _truncate(path, "")
            return []
        if first != header:
            raise InputError(f"cannot resume {display_path(path)!r}: its header {first!r} is not this run's {header!r}")
        if not text.startswith(header_line, len(kept)):  # same names, other quoting or line ending
            raise InputError(
                f"cannot resume {display_path(path)!r}: its header line is not as clip-rt "
                "writes it (edited and saved by another program?); run without --resume"
            )
        kept += header_line
        for row in rows:
            line = csv_line(row)
            if not text.startswith(line, len(kept)) or len(row) != len(header):
                break  # torn: not what we would have written
            kept += line
            records.append(_record_from_csv(row, labels))
    except csv.Error:
        pass  # an unterminated quote at the end: torn, keep what was intact
    if not kept.endswith("\n") and kept != bom:
        kept = kept[: kept.rfind("\n") + 1]
    _truncate(path, kept)
    return records


def _record_from_csv(row: list[str], labels: Sequence[str]) -> Record:
    def num(s: str) -> Optional[float]:
        return float(s) if s else None

    return Record(
        path=unneutralise(row[0]),
        label=unneutralise(row[1]) or None,
        score=num(row[2]),
        width=int(row[3]) if row[3] else None,
        height=int(row[4]) if row[4] else None,
        error=unneutralise(row[5]) or None,
        scores={lab: float(v) for lab, v in zip(labels, row[6:]) if v},
    )
