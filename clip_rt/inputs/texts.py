"""Text given by the user must be Unicode that encodes to UTF-8.

A command-line argument or a file name that is not UTF-8 reaches Python as a ``str`` with lone
surrogates (``surrogateescape``); SQLite, the tokenizer and JSON cannot take those. They are
refused here with the offending bytes shown, instead of failing deep inside the prompt cache.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from ..errors import InputError


def utf8_problem(raw: bytes) -> str:
    """The first undecodable bytes of *raw* and where they are, for a message."""
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return f"{raw[exc.start : exc.end]!r} at byte {exc.start}"
    return "no undecodable bytes"


def shown(raw: bytes, limit: int = 80) -> str:
    """*raw* quoted for a message: undecodable bytes as \\xNN, control characters escaped."""
    text = raw.decode("utf-8", "backslashreplace")[:limit]
    return "'" + "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text) + "'"


def check_utf8(text: str, what: str) -> str:
    """*text* unchanged if it encodes to UTF-8, else InputError naming *what* (``label``,
    ``text #3``...) and showing the bytes it came from."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        try:
            raw = text.encode("utf-8", "surrogateescape")  # the bytes a command line or file name had
        except UnicodeEncodeError:
            raw = text.encode("utf-8", "surrogatepass")  # a lone surrogate made in Python
        raise InputError(f"{what} {shown(raw)} is not valid UTF-8: {utf8_problem(raw)}; expected UTF-8 text") from None
    return text


def decode_utf8(raw: bytes, source: str) -> str:
    """A UTF-8 text file's contents (an initial BOM dropped); InputError naming the first line
    that is not UTF-8 and showing its bytes."""
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        start = raw.rfind(b"\n", 0, exc.start) + 1
        end = raw.find(b"\n", exc.start)
        line = raw[start : end if end >= 0 else len(raw)].rstrip(b"\r")
        number = raw.count(b"\n", 0, start) + 1
        raise InputError(
            f"{source}: line {number} {shown(line)} is not valid UTF-8: {utf8_problem(line)}; "
            "expected a UTF-8 text file"
        ) from None


def decode_utf8_lines(raw: bytes, source: str) -> list[str]:
    """:func:`decode_utf8`, split into lines."""
    return decode_utf8(raw, source).splitlines()


def as_text_list(texts: Any) -> list[str]:
    """*texts* (one string or an iterable of strings) as a list, each checked to be UTF-8; an
    InputError names what was given otherwise."""
    if not isinstance(texts, str) and (
        isinstance(texts, (bytes, bytearray, Mapping)) or not isinstance(texts, Iterable)
    ):
        raise InputError(f"texts must be a string or a sequence of strings, got {type(texts).__name__}: {texts!r:.80}")
    items = [texts] if isinstance(texts, str) else list(texts)
    for i, t in enumerate(items):
        if not isinstance(t, str):
            raise InputError(f"texts must be strings, got {type(t).__name__}: {t!r:.80}")
        check_utf8(t, f"text #{i}")
    return items
