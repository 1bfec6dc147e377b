"""Text for terminals and messages: file names and user text made printable, display widths.

Paths are ``str`` as the OS gives them (on POSIX, bytes that are not UTF-8 kept as lone
surrogates), ``bytes`` or ``os.PathLike``; what is shown has undecodable bytes as ``\\xNN``.
"""

from __future__ import annotations

import os
import re
import unicodedata
from typing import Any, Union

PathText = Union[str, bytes, "os.PathLike[Any]"]

# Characters a terminal acts on instead of showing: C0/C1 controls (escape sequences, CR,
# backspace), DEL, line/paragraph separators and the bidirectional overrides that can make a
# name read as another one.
_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
_NAMED_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(match: re.Match[str]) -> str:
    ch = match.group()
    code = ord(ch)
    return _NAMED_ESCAPES.get(ch) or (f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")


def printable(text: str) -> str:
    """*text* safe to print on a terminal: control characters (terminal escape sequences, CR,
    newlines, bidi overrides) shown as ``\\x1b``, ``\\r``, ``\\u202e`` ..., everything else kept."""
    return _UNPRINTABLE.sub(_escape, text)


def loader_label(path: PathText) -> str:
    """*path* as the image loader names it in its errors and records: undecodable bytes as
    ``\\xNN``, control characters kept (records hold the name as it is)."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def display_path(path: PathText) -> str:
    """*path* printable on any terminal: undecodable bytes shown as ``\\xNN``, control
    characters escaped (see :func:`printable`)."""
    return printable(loader_label(path))


def display_width(text: str) -> int:
    """Columns *text* takes on a terminal: East Asian wide and full-width characters count 2,
    combining marks and format characters 0, everything else 1."""
    width = 0
    for ch in text:
        if unicodedata.combining(ch) or unicodedata.category(ch) in ("Mn", "Me", "Cf"):
            continue
        width += 2 if unicodedata.east_asian_width(ch) in ("W", "F") else 1
    return width


def pad(text: str, width: int, align: str = "<") -> str:
    """*text* padded with spaces to *width* display columns (``<`` left, ``>`` right aligned)."""
    fill = " " * max(0, width - display_width(text))
    return text + fill if align == "<" else fill + text


def relative_to_cwd(path: str) -> str:
    """*path* relative to the current directory when it lies under it (``photos/a.jpg``, as
    ``clip-rt classify`` shows a path given that way), else unchanged. For paths an output holds
    in absolute form (a search index, a Ray job's Parquet), so every command shows them alike."""
    if not os.path.isabs(path):
        return path
    try:
        rel = os.path.relpath(path)
    except ValueError:  # another drive (Windows)
        return path
    return path if rel == os.pardir or rel.startswith(os.pardir + os.sep) else rel
