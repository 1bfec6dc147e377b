"""Inputs that are read whole, bounded: a file-type check and a size limit before and while reading.

A labels file, a path list on standard input, the config file, a run description or an index's
``index.json`` is read into memory at once. An endless stream (``/dev/zero``, a FIFO nobody
closes) or a huge file must end in one clear error that names the limit and how to raise it,
never in the kernel's OOM killer or a ``MemoryError`` traceback. So:

- the file type is checked first, on the opened descriptor (``O_NONBLOCK``: opening a FIFO
  with no writer does not hang): a regular file, or a pipe where the caller documents that
  one works (``--labels-file <(...)``, ``-`` for standard input); a device, socket or folder
  is refused with what it is;
- a regular file's size is checked before anything is read, and every stream is read at most
  one byte past its limit.

Limits a user may need to raise come from the environment: :data:`LABELS_ENV` (labels files,
default 16 MB) and :data:`PATH_LIST_ENV` (path lists, default 256 MB). Files clip-rt writes
itself (a run description, ``index.json``) and the config file have fixed limits.
"""

from __future__ import annotations

import os
import re
import stat
from typing import IO, Callable, Optional

from ..errors import ClipRtError, InputError

LABELS_ENV = "CLIP_RT_MAX_LABELS_MB"
LABELS_DEFAULT_MB = 16  # ImageNet-21k's 21,841 class names are 0.3 MB
PATH_LIST_ENV = "CLIP_RT_MAX_PATH_LIST_MB"
PATH_LIST_DEFAULT_MB = 256  # about 3 million paths of 80 bytes
CONFIG_MAX_BYTES = 1 << 20
CHUNK = 1 << 20
MB = 1 << 20


def file_kind(mode: int) -> str:
    """``regular file``, ``folder``, ``FIFO``, ``character device`` ... for a message."""
    for test, name in (
        (stat.S_ISREG, "regular file"),
        (stat.S_ISDIR, "folder"),
        (stat.S_ISFIFO, "FIFO (pipe)"),
        (stat.S_ISCHR, "character device"),
        (stat.S_ISBLK, "block device"),
        (stat.S_ISSOCK, "socket"),
    ):
        if test(mode):
            return name
    return "special file"


def limit_from_env(env: str, default_mb: float) -> int:
    """The limit in bytes that *env* (megabytes) sets, else *default_mb*."""
    raw = os.environ.get(env, "").strip()
    if not raw:
        return int(default_mb * MB)
    try:
        mb = float(raw)
    except ValueError:
        mb = -1.0
    if not mb > 0 or mb != mb or mb == float("inf"):
        raise InputError(f"{env} must be a positive number of megabytes, got {raw!r}")
    return int(mb * MB)


def labels_limit() -> int:
    return limit_from_env(LABELS_ENV, LABELS_DEFAULT_MB)


def path_list_limit() -> int:
    return limit_from_env(PATH_LIST_ENV, PATH_LIST_DEFAULT_MB)


def size_text(nbytes: int) -> str:
    return f"{nbytes / MB:.1f} MB" if nbytes >= MB else f"{nbytes} bytes"


def too_large(what: str, limit: int, hint: Optional[str], size: Optional[int] = None) -> str:
    """``<what> is larger than the limit of 16.0 MB (...)``, with how to raise it."""
    got = f"{size_text(size)}, " if size is not None else ""
    how = f"; {hint}" if hint else ""
    return f"{what} is too large ({got}the limit is {size_text(limit)}{how})"


def env_hint(env: str) -> str:
    return f"set {env} (megabytes) to raise it"


def read_limited(
    path: str | os.PathLike[str],
    *,
    what: str,
    limit: int,
    hint: Optional[str] = None,
    pipes: bool = False,
    error: Callable[[str], ClipRtError] = InputError,
) -> bytes:
    """The bytes of *path*, refused with ``error(message)`` unless it is a regular file (or,
    with *pipes*, a FIFO) of at most *limit* bytes. *what* names the input in messages
    (``--labels-file 'x.txt'``); *hint* says how to raise the limit. A missing file is the
    caller's ``FileNotFoundError``; other ``OSError``s become ``error`` too."""
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise error(f"{what}: cannot read it ({exc.strerror or exc})") from None
    try:
        st = os.fstat(fd)
        if stat.S_ISREG(st.st_mode):
            if st.st_size > limit:
                raise error(too_large(what, limit, hint, st.st_size))
        elif stat.S_ISFIFO(st.st_mode) and pipes:
            return _read_pipe(fd, what=what, limit=limit, hint=hint, error=error)
        else:
            allowed = "a regular file or a pipe" if pipes else "a regular file"
            raise error(f"{what} is a {file_kind(st.st_mode)}; expected {allowed}")
        return _read_fd(fd, what=what, limit=limit, hint=hint, error=error)
    finally:
        os.close(fd)


def _read_pipe(fd: int, *, what: str, limit: int, hint: Optional[str], error: Callable[[str], ClipRtError]) -> bytes:
    """A pipe opened without blocking, read to its end: waits (poll) for its writer's data and
    for the writer to close it, as a blocking reader would -- but a named FIFO whose writer has
    not opened it yet does not look empty (a plain read would return end-of-file at once)."""
    import select

    if not hasattr(select, "poll"):  # no poll (Windows has no FIFOs anyway): read as it comes
        os.set_blocking(fd, True)
        return _read_fd(fd, what=what, limit=limit, hint=hint, error=error)
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    buf = bytearray()
    while True:
        poller.poll()
        try:
            block = os.read(fd, min(CHUNK, limit + 1 - len(buf)))
        except BlockingIOError:  # woken without data: the writer is still there
            continue
        except OSError as exc:
            raise error(f"{what}: cannot read it ({exc.strerror or exc})") from None
        if not block:
            return bytes(buf)
        buf += block
        if len(buf) > limit:
            raise error(too_large(what, limit, hint))


def _read_fd(fd: int, *, what: str, limit: int, hint: Optional[str], error: Callable[[str], ClipRtError]) -> bytes:
    buf = bytearray()
    while True:
        try:
            block = os.read(fd, min(CHUNK, limit + 1 - len(buf)))
        except OSError as exc:
            raise error(f"{what}: cannot read it ({exc.strerror or exc})") from None
        if not block:
            return bytes(buf)
        buf += block
        if len(buf) > limit:
            raise error(too_large(what, limit, hint))


def read_lines_limited(
    stream: IO[bytes],
    *,
    what: str,
    limit: int,
    hint: Optional[str] = None,
    error: Callable[[str], ClipRtError] = InputError,
) -> list[bytes]:
    """The lines of an open *stream* (standard input: a file, a pipe or a terminal), without
    their ``\\n``, read a chunk at a time and refused once more than *limit* bytes came: a
    path list of millions of lines is never held twice (raw and split), and an endless one
    ends at the limit."""
    lines: list[bytes] = []
    partial: list[bytes] = []  # the line being read, in pieces (no quadratic joining)
    size = 0
    while True:
        try:
            block = stream.read(CHUNK)
        except OSError as exc:
            raise error(f"{what}: cannot read it ({exc.strerror or exc})") from None
        if not block:
            break
        size += len(block)
        if size > limit:
            raise error(too_large(what, limit, hint))
        if b"\n" not in block:
            partial.append(block)
            continue
        pieces = block.split(b"\n")
        pieces[0] = b"".join(partial) + pieces[0]
        partial = [pieces.pop()]
        lines.extend(pieces)
    last = b"".join(partial)
    if last:
        lines.append(last)
    return lines


# A JSON string, escapes included (the unrolled form: no backtracking per character), or a bracket.
_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')
_STRING_OR_BRACKET = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{}]')
_STRUCTURE = (b"[", b"{", b",")


def json_shape_problem(data: bytes | bytearray, *, max_depth: int, max_items: int) -> Optional[tuple[str, str]]:
    """Why JSON *data* is too big in structure to parse, or None: ``("values", why)`` for more
    than *max_items* values (strings, containers and the items in them, counted by their quotes
    and commas), ``("depth", why)`` for nesting deeper than *max_depth*.

    Checked on the raw bytes before ``json.loads``, which builds a Python object of 50-60 bytes
    for each 2-3 byte ``[]``, ``{}`` or ``"a"`` (about 25 times the body). Nothing is copied:
    C-speed counts over the whole body first, then (only when those counts include text inside
    strings) one pass over at most *max_items* strings, counting in place."""
    too_many = f"it has more than {max_items} JSON values (strings, arrays, objects and the items in them)"
    # Escaped quotes are text (an escaped backslash before a quote only loosens the bound).
    quotes = data.count(b'"') - data.count(b'\\"')
    if quotes // 2 > max_items:
        return "values", too_many
    items = sum(data.count(c) for c in _STRUCTURE)
    if items > max_items and quotes:  # some of those may be text: take the strings' share out
        for m in _JSON_STRING.finditer(data):
            start, end = m.span()
            items -= sum(data.count(c, start, end) for c in _STRUCTURE)
    if items > max_items:
        return "values", too_many
    depth = deepest = 0
    for m in _STRING_OR_BRACKET.finditer(data):  # at most about 3 * max_items matches by now
        byte = data[m.start()]
        if byte in (0x5B, 0x7B):
            depth += 1
            deepest = max(deepest, depth)
        elif byte in (0x5D, 0x7D):
            depth -= 1
    if deepest > max_depth:
        return "depth", f"it nests arrays and objects {deepest} deep; the limit is {max_depth}"
    return None
