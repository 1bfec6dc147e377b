"""Classification records and their writers (table, CSV, JSON, JSONL).

Records stream out as they are produced; CSV and JSONL are flushed after every batch, so a
run that is killed keeps what it finished. The output file itself (sidecar, resume, lock,
what happens on a full disk) is ``record_output.py``.

Paths are written back byte-exact: undecodable bytes (lone surrogates from
``os.fsdecode``) go to CSV as the original bytes and to JSON as ``\\udcNN`` escapes, which
``json.loads`` turns back into the same ``str``.

CSV is written by :func:`csv_line`, not :mod:`csv`: a cell holding a comma, a quote, a CR or
an LF is quoted (``csv.writer`` with ``lineterminator="\\n"`` leaves a lone CR unquoted, which
readers take for a line break). Text cells (path, label, error) that a spreadsheet would run
as a formula (starting with ``= + - @``, a tab or a CR) get a ``'`` in front, and so does a
cell that starts with ``'``, so that :func:`unneutralise` gives back the exact text (resume
matches paths through it).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Optional, Protocol

from ..display import display_path, display_width, loader_label, pad, printable
from ..errors import InputError

FORMATS = ("table", "csv", "json", "jsonl")
RESUMABLE = ("csv", "jsonl")
FIXED_COLUMNS = ["path", "label", "score", "width", "height", "error"]
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
    def from_json(cls, d: dict[str, Any]) -> Record:
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
    for prefix in (path, loader_label(path), display_path(path)):
        if error.startswith(prefix + ": "):
            return error[len(prefix) + 2 :]
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


_CSV_QUOTE = re.compile('[,"\r\n]')
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def csv_cell(text: str) -> str:
    """One CSV cell: quoted (quotes doubled) when it holds a comma, quote, CR or LF."""
    return '"' + text.replace('"', '""') + '"' if _CSV_QUOTE.search(text) else text


def csv_line(row: Sequence[str]) -> str:
    """One CSV record, ``\\n``-terminated. Same bytes as ``csv.writer`` (QUOTE_MINIMAL) for every
    row without a lone CR, so files written before stay resumable."""
    if len(row) == 1 and row[0] == "":
        return '""\n'  # a lone empty cell would read back as a blank line
    return ",".join(csv_cell(c) for c in row) + "\n"


def neutralise(text: str) -> str:
    """*text* with a ``'`` in front when a spreadsheet would take it for a formula (or when it
    already starts with ``'``, so the mark is unambiguous); :func:`unneutralise` reverses it."""
    return "'" + text if text.startswith(FORMULA_START + ("'",)) else text


def unneutralise(text: str) -> str:
    return text[1:] if text.startswith("'") else text


def _fmt(x: Optional[float]) -> str:
    return "" if x is None else f"{x:.6f}"


def csv_row(rec: Record, labels: Sequence[str]) -> list[str]:
    return [
        neutralise(rec.path),
        neutralise(rec.label or ""),
        _fmt(rec.score),
        "" if rec.width is None else str(rec.width),
        "" if rec.height is None else str(rec.height),
        neutralise(rec.error or ""),
    ] + [_fmt(rec.scores.get(lab)) for lab in labels]


class TextSink(Protocol):
    """Where a :class:`RecordWriter` writes: a text file, stdout, or a ``files.RecordSink``."""

    def write(self, text: str, /) -> int: ...

    def flush(self) -> None: ...


class RecordWriter:
    """Writes records in one format to a text stream; ``write_batch`` flushes."""

    def __init__(
        self,
        fmt: str,
        stream: TextSink,
        labels: Sequence[str],
        *,
        top_k: int = 1,
        write_header: bool = True,
        bom: bool = False,
    ) -> None:
        if fmt not in FORMATS:
            raise InputError(f"unknown format {fmt!r}; expected one of: {', '.join(FORMATS)}")
        self.fmt, self.stream, self.labels, self.top_k = fmt, stream, list(labels), top_k
        self._first = True
        self._label_width = max([display_width(printable(lab)) for lab in self.labels] + [5])
        if fmt == "csv" and write_header:
            stream.write(("\ufeff" if bom else "") + csv_line(csv_header(self.labels)))
        elif fmt == "json":
            stream.write("[")
        elif fmt == "table" and write_header:
            stream.write(f"{'score':>6}  {pad('label', self._label_width)}  {'size':>11}  path\n")

    def write_batch(self, records: Sequence[Record]) -> None:
        for rec in records:
            self._write_one(rec)
        self.stream.flush()

    def _write_one(self, rec: Record) -> None:
        if self.fmt == "csv":
            self.stream.write(csv_line(csv_row(rec, self.labels)))
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
            reason = printable(error_reason(rec.path, rec.error or ""))
            return f"{'-':>6}  {pad('ERROR', self._label_width)}  {size:>11}  {path}  ({reason})\n"
        line = f"{rec.score:6.3f}  {pad(printable(rec.label or ''), self._label_width)}  {size:>11}  {path}"
        if self.top_k > 1:
            line += "  [" + ", ".join(f"{printable(lab)} {s:.3f}" for lab, s in rec.top_k) + "]"
        return line + "\n"

    def close(self) -> None:
        if self.fmt == "json":
            self.stream.write("\n]\n" if not self._first else "]\n")
        self.stream.flush()
