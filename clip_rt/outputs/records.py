"""Classification records and their writers (table, CSV, JSON, JSONL), with resume.

Records stream out as they are produced; CSV and JSONL are flushed after every batch, so a
run that is killed keeps what it finished. ``--resume`` reads an existing CSV/JSONL output,
drops a torn last line (a run killed mid-write), and returns the paths already done. The
run's identity (model fingerprint, precision, labels, templates) is kept in a sidecar
``<output>.clip-rt.json`` so that resuming with another model or other labels is refused.

Paths are written back byte-exact: undecodable bytes (lone surrogates from
``os.fsdecode``) go to CSV as the original bytes and to JSON as ``\\udcNN`` escapes, which
``json.loads`` turns back into the same ``str``.
"""
from __future__ import annotations

import csv
import io
import json
import os
import re
import sys
from dataclasses import dataclass, field
from typing import IO, Any, Optional, Sequence

from ..errors import InputError
from ..inputs.discover import display_path

FORMATS = ("table", "csv", "json", "jsonl")
RESUMABLE = ("csv", "jsonl")
FIXED_COLUMNS = ["path", "label", "score", "width", "height", "error"]
SIDECAR_SUFFIX = ".clip-rt.json"
_SURROGATE = re.compile("[\ud800-\udfff]")


@dataclass
class Record:
    path: str
    label: Optional[str] = None
    score: Optional[float] = None
    scores: dict[str, float] = field(default_factory=dict)
    width: Optional[int] = None
    height: Optional[int] = None
    error: Optional[str] = None
    top_k: list[tuple[str, float]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_json(self, with_top_k: bool = False) -> dict[str, Any]:
        d: dict[str, Any] = {
            "path": self.path,
            "label": self.label,
            "score": self.score,
            "scores": self.scores,
            "width": self.width,
            "height": self.height,
            "error": self.error,
        }
        if with_top_k:
            d["top_k"] = [[lab, s] for lab, s in self.top_k]
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "Record":
        return cls(
            path=d["path"],
            label=d.get("label"),
            score=d.get("score"),
            scores=dict(d.get("scores") or {}),
            width=d.get("width"),
            height=d.get("height"),
            error=d.get("error"),
            top_k=[(lab, s) for lab, s in d.get("top_k") or []],
        )


def error_reason(path: str, error: str) -> str:
    """*error* without a leading ``"<path>: "`` (the loader's messages name the file; the
    table and the summary already show it)."""
    for prefix in (path, display_path(path)):
        if error.startswith(prefix + ": "):
            return error[len(prefix) + 2:]
    return error


def infer_format(output: Optional[str], fmt: Optional[str]) -> str:
    """``--format`` if given, else from the output's extension, else ``table``."""
    if fmt:
        return fmt
    if output:
        ext = os.path.splitext(output)[1].lower().lstrip(".")
        if ext in ("csv", "json", "jsonl"):
            return ext
        if ext == "ndjson":
            return "jsonl"
    return "table"


def dumps_json(obj: Any, indent: Optional[int] = None) -> str:
    """JSON text, non-ASCII kept readable, lone surrogates escaped (valid UTF-8, round-trips)."""
    text = json.dumps(obj, ensure_ascii=False, indent=indent)
    return _SURROGATE.sub(lambda m: "\\u%04x" % ord(m.group()), text)


def csv_header(labels: Sequence[str]) -> list[str]:
    return FIXED_COLUMNS + [f"score_{lab}" for lab in labels]


def _csv_line(row: Sequence[Any]) -> str:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerow(row)
    return buf.getvalue()


def _fmt(x: Optional[float]) -> str:
    return "" if x is None else f"{x:.6f}"


def csv_row(rec: Record, labels: Sequence[str]) -> list[str]:
    return [
        rec.path,
        rec.label or "",
        _fmt(rec.score),
        "" if rec.width is None else str(rec.width),
        "" if rec.height is None else str(rec.height),
        rec.error or "",
    ] + [_fmt(rec.scores.get(lab)) for lab in labels]


class RecordWriter:
    """Writes records in one format to a text stream; ``write_batch`` flushes."""

    def __init__(self, fmt: str, stream: IO[str], labels: Sequence[str], *, top_k: int = 1,
                 write_header: bool = True, bom: bool = False) -> None:
        if fmt not in FORMATS:
            raise InputError(f"unknown format {fmt!r}; expected one of: {', '.join(FORMATS)}")
        self.fmt, self.stream, self.labels, self.top_k = fmt, stream, list(labels), top_k
        self._first = True
        self._label_width = max([len(lab) for lab in self.labels] + [5])
        if fmt == "csv" and write_header:
            stream.write(("\ufeff" if bom else "") + _csv_line(csv_header(self.labels)))
        elif fmt == "json":
            stream.write("[")
        elif fmt == "table" and write_header:
            stream.write(f"{'score':>6}  {'label':<{self._label_width}}  {'size':>11}  path\n")

    def write_batch(self, records: Sequence[Record]) -> None:
        for rec in records:
            self._write_one(rec)
        self.stream.flush()

    def _write_one(self, rec: Record) -> None:
        if self.fmt == "csv":
            self.stream.write(_csv_line(csv_row(rec, self.labels)))
        elif self.fmt == "jsonl":
            self.stream.write(dumps_json(rec.to_json(self.top_k > 1)) + "\n")
        elif self.fmt == "json":
            self.stream.write(("\n  " if self._first else ",\n  ") + dumps_json(rec.to_json(self.top_k > 1)))
        else:
            self.stream.write(self._table_line(rec))
        self._first = False

    def _table_line(self, rec: Record) -> str:
        path = display_path(rec.path)
        size = "" if rec.width is None else f"{rec.width}x{rec.height}"
        if not rec.ok:
            reason = error_reason(rec.path, rec.error or "")
            return f"{'-':>6}  {'ERROR':<{self._label_width}}  {size:>11}  {path}  ({reason})\n"
        line = f"{rec.score:6.3f}  {rec.label:<{self._label_width}}  {size:>11}  {path}"
        if self.top_k > 1:
            line += "  [" + ", ".join(f"{lab} {s:.3f}" for lab, s in rec.top_k) + "]"
        return line + "\n"

    def close(self) -> None:
        if self.fmt == "json":
            self.stream.write("\n]\n" if not self._first else "]\n")
        self.stream.flush()


def open_output(path: str, append: bool) -> IO[str]:
    # surrogateescape: a non-UTF-8 file name goes to CSV/table as its original bytes.
    return open(path, "a" if append else "w", encoding="utf-8", errors="surrogateescape", newline="")


def stdout_stream() -> IO[str]:
    """stdout as UTF-8 with surrogateescape, so CSV rows carry non-UTF-8 names byte-exact
    (the default stdout would raise UnicodeEncodeError on them)."""
    buffer = getattr(sys.stdout, "buffer", None)
    if buffer is None:  # replaced by a pure text stream: write through it as it is
        return sys.stdout
    sys.stdout.flush()
    return io.TextIOWrapper(buffer, encoding="utf-8", errors="surrogateescape", newline="", write_through=True)


def release_stdout(stream: IO[str]) -> None:
    """Flush a stream from stdout_stream() without closing the real stdout."""
    stream.flush()
    if stream is not sys.stdout and isinstance(stream, io.TextIOWrapper):
        stream.detach()


# -- run identity (sidecar) ------------------------------------------------------------
def sidecar_path(output: str) -> str:
    return output + SIDECAR_SUFFIX


def write_sidecar(output: str, identity: dict[str, Any]) -> None:
    tmp = sidecar_path(output) + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(dumps_json(identity) + "\n")
    os.replace(tmp, sidecar_path(output))


def recorded_precision(output: str) -> Optional[str]:
    """The precision *output*'s run description records; None when it has none (a missing or
    unreadable description is reported by :func:`check_sidecar`)."""
    try:
        with open(sidecar_path(output), encoding="utf-8") as f:
            stored = json.load(f)
    except (OSError, ValueError):
        return None
    value = stored.get("precision") if isinstance(stored, dict) else None
    return value if isinstance(value, str) else None


def check_sidecar(output: str, identity: dict[str, Any]) -> None:
    """Refuse to resume *output* if it was written by another model, precision, labels or templates."""
    side = sidecar_path(output)
    try:
        with open(side, encoding="utf-8") as f:
            stored = json.load(f)
    except FileNotFoundError:
        raise InputError(
            f"cannot resume {display_path(output)!r}: its run description {display_path(side)!r} is missing, "
            "so it is unknown which model and labels wrote it; run without --resume to start over"
        ) from None
    except json.JSONDecodeError as exc:
        raise InputError(f"cannot resume: {display_path(side)!r} is not valid JSON ({exc})") from exc
    diffs = [k for k in identity if stored.get(k) != identity[k]]
    if diffs:
        detail = "; ".join(f"{k}: output has {stored.get(k)!r}, this run has {identity[k]!r}" for k in diffs)
        raise InputError(f"cannot resume {display_path(output)!r}: it was written by a different run ({detail})")


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
        try:
            records.append(Record.from_json(json.loads(line)))
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
            raise InputError(
                f"cannot resume {display_path(path)!r}: line {lineno} is not a clip-rt record ({exc})"
            ) from exc
    _truncate(path, keep)
    return records


def resume_csv(path: str, labels: Sequence[str]) -> list[Record]:
    """Records already in a CSV output. Rows are re-serialised to find where the intact part
    ends (we wrote them, so the bytes match); a torn last row is dropped."""
    text = _read_text(path)
    bom = "\ufeff" if text.startswith("\ufeff") else ""
    header = csv_header(labels)
    header_line = _csv_line(header)
    body = text[len(bom):]
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
            raise InputError(
                f"cannot resume {display_path(path)!r}: its header {first!r} is not this run's {header!r}"
            )
        if not text.startswith(header_line, len(kept)):  # same names, other quoting or line ending
            raise InputError(f"cannot resume {display_path(path)!r}: its header line is not as clip-rt "
                             "writes it (edited and saved by another program?); run without --resume")
        kept += header_line
        for row in rows:
            line = _csv_line(row)
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
        path=row[0],
        label=row[1] or None,
        score=num(row[2]),
        width=int(row[3]) if row[3] else None,
        height=int(row[4]) if row[4] else None,
        error=row[5] or None,
        scores={lab: float(v) for lab, v in zip(labels, row[6:]) if v},
    )
