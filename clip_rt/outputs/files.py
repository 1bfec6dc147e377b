"""Writing output files so that a failed run never destroys what was there before.

- :func:`check_target` runs before anything is opened: the folder exists and is a folder, the
  target is not a folder. Special files (``/dev/null``, a FIFO) are written as they are.
- :func:`atomic_file` writes a whole file to a temporary name in the same folder and replaces
  the target only once everything was written (and synced): a full disk, a kill or an
  exception leaves the previous file as it was.
- :class:`StagedFiles` does the same for a set of files (a report folder): all of them are
  written first, then all replaced.
- :class:`RecordSink` is the stream for records written as they come (classify's CSV/JSONL):
  each batch goes out in one write loop, and after a failed write the file is cut back to
  the end of the last whole batch.
- :class:`OutputLock` keeps two runs from writing one output at the same time.

Every ``OSError`` of writing becomes one :class:`~clip_rt.errors.OutputError` naming the file
and the reason (``No space left on device``, ``Permission denied`` ...).
"""
from __future__ import annotations

import contextlib
import io
import os
import re
import secrets
import shutil
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO, Any, BinaryIO, Optional, TextIO, Union

from ..display import display_path
from ..errors import InputError, OutputError

TEMP_SUFFIX = ".tmp"
LOCK_SUFFIX = ".clip-rt.lock"


def reason(exc: OSError) -> str:
    """``No space left on device`` rather than ``[Errno 28] No space left on device: '/x'``."""
    return exc.strerror or str(exc) or type(exc).__name__


def output_error(path: str, exc: OSError, what: str = "") -> OutputError:
    err = OutputError(f"cannot write {what + ' ' if what else ''}{display_path(path)!r}: {reason(exc)}")
    err.__cause__ = exc
    return err


def file_kind(mode: int) -> str:
    for test, name in ((stat.S_ISREG, "regular file"), (stat.S_ISDIR, "folder"), (stat.S_ISFIFO, "FIFO"),
                       (stat.S_ISCHR, "character device"), (stat.S_ISBLK, "block device"),
                       (stat.S_ISSOCK, "socket")):
        if test(mode):
            return name
    return "special file"


def is_special(st: Optional[os.stat_result]) -> bool:
    """Whether an existing output is a device, FIFO or socket: written in place, no sidecar."""
    return st is not None and not stat.S_ISREG(st.st_mode) and not stat.S_ISDIR(st.st_mode)


def through_link(path: str) -> str:
    """The file a symbolic link points to, so that replacing the output replaces that file
    (as writing through the link did), not the link itself."""
    return os.path.realpath(path) if os.path.islink(path) else path


def check_target(path: str, what: str = "output") -> Optional[os.stat_result]:
    """Check that *path* can be an output file before anything is opened: its folder exists,
    and it is not itself a folder. Returns its ``stat`` (``None`` when it does not exist)."""
    folder = os.path.dirname(path) or "."
    try:
        st = os.stat(path)
    except FileNotFoundError:
        st = None
    except OSError as exc:  # ENOTDIR (a file used as a folder), ELOOP, EACCES on the way
        raise output_error(path, exc, what) from None
    if st is not None and stat.S_ISDIR(st.st_mode):
        raise OutputError(f"cannot write {what} {display_path(path)!r}: it is a folder; expected a file path")
    if not os.path.isdir(folder):
        kind = "is not a folder" if os.path.exists(folder) else "does not exist"
        raise OutputError(f"cannot write {what} {display_path(path)!r}: the folder {display_path(folder)!r} {kind}")
    return st


def check_regular_or_absent(path: str, what: str) -> None:
    """A file clip-rt replaces (a sidecar, a report file) must not be a folder or a device."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise output_error(path, exc, what) from None
    if not stat.S_ISREG(st.st_mode) and not stat.S_ISLNK(st.st_mode):
        raise OutputError(f"cannot write {what} {display_path(path)!r}: it is a {file_kind(st.st_mode)}, "
                          "expected a file (or nothing) there")


def temp_name(path: str) -> str:
    """A hidden name beside *path*, unique per process and call: ``.<name>.<pid>.<hex>.tmp``."""
    folder, base = os.path.split(path)
    return os.path.join(folder, f".{base}.{os.getpid()}.{secrets.token_hex(4)}{TEMP_SUFFIX}")


def remove_stale_temps(path: str) -> None:
    """Delete temporary files a killed writer of *path* left behind. Call it while holding the
    output's :class:`OutputLock` (no live writer then owns one)."""
    folder, base = os.path.split(path)
    # Ours only: `.<name>.<pid>.<8 hex>.tmp` and the sidecar's, not another output's whose
    # name merely starts with this one's.
    ours = re.compile(r"\." + re.escape(base) + r"(\.clip-rt\.json)?\.\d+\.[0-9a-f]{8}" + re.escape(TEMP_SUFFIX))
    try:
        names = os.listdir(folder or ".")
    except OSError:
        return
    for name in names:
        if ours.fullmatch(name):
            _unlink(os.path.join(folder, name))


def probe_folder(folder: str, what: str = "folder") -> None:
    """Create and delete a file in *folder*: the one reliable test that it can be written
    (permissions, read-only mounts, ACLs; ``os.access`` answers yes to root on a read-only fs)."""
    probe = os.path.join(folder, f".clip-rt-probe.{os.getpid()}.{secrets.token_hex(4)}{TEMP_SUFFIX}")
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as exc:
        raise OutputError(f"cannot write in {what} {display_path(folder)!r}: {reason(exc)}") from None
    os.close(fd)
    _unlink(probe)


def _create(tmp: str) -> int:
    # 0o666 minus the umask, as open() gives a new file (mkstemp would make it 0600).
    return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666)


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def _sync_and_replace(tmp: str, path: str) -> None:
    """Give *tmp* the mode of the file it replaces, then rename it over *path*."""
    if os.path.exists(path):
        try:
            shutil.copymode(path, tmp)
        except OSError:
            pass
    os.replace(tmp, path)


@contextmanager
def atomic_file(path: str, mode: str = "w", what: str = "", *, encoding: Optional[str] = "utf-8",
                errors: Optional[str] = None, newline: Optional[str] = None) -> Iterator[IO[Any]]:
    """``with atomic_file(path) as f:`` writes *path* whole or not at all. A special file
    (``/dev/null``, a FIFO) is opened and written directly; a symbolic link is written through."""
    path = through_link(path)
    st = check_target(path, what or "output")
    binary = "b" in mode
    kw: dict[str, Any] = {} if binary else {"encoding": encoding, "errors": errors, "newline": newline}
    if is_special(st):
        try:
            with open(path, mode, **kw) as f:
                yield f
        except OSError as exc:
            raise output_error(path, exc, what) from None
        return
    tmp = temp_name(path)
    try:
        fd = _create(tmp)
    except OSError as exc:
        raise output_error(path, exc, what) from None
    try:
        with os.fdopen(fd, "wb" if binary else "w", **kw) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        _sync_and_replace(tmp, path)
    except OSError as exc:
        _unlink(tmp)
        raise output_error(path, exc, what) from None
    except BaseException:
        _unlink(tmp)
        raise


class StagedFiles:
    """Several files written to temporary names first and put in place together by
    :meth:`commit`; :meth:`discard` (or an exception in ``with``) removes the temporary ones,
    so the folder keeps its previous files."""

    def __init__(self, folder: str, what: str = "") -> None:
        self.folder, self.what = folder, what
        self._staged: list[tuple[str, str]] = []  # (temp, final)

    def path(self, name: str) -> str:
        """A temporary path to write *name* to (created empty, so the name is ours)."""
        final = through_link(os.path.join(self.folder, name))
        check_regular_or_absent(final, self.what)
        tmp = temp_name(final)
        try:
            os.close(_create(tmp))
        except OSError as exc:
            raise output_error(final, exc, self.what) from None
        self._staged.append((tmp, final))
        return tmp

    def commit(self) -> None:
        try:
            for tmp, _ in self._staged:
                fd = os.open(tmp, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
            for tmp, final in self._staged:
                _sync_and_replace(tmp, final)
        except OSError as exc:
            self.discard()
            raise OutputError(f"cannot write {self.what + ' ' if self.what else ''}in "
                              f"{display_path(self.folder)!r}: {reason(exc)}") from None
        self._staged = []

    def discard(self) -> None:
        for tmp, _ in self._staged:
            _unlink(tmp)
        self._staged = []

    def __enter__(self) -> "StagedFiles":
        return self

    def __exit__(self, exc_type: Any, *rest: Any) -> None:
        if exc_type is not None:
            self.discard()


class RecordSink:
    """A text stream over a binary file for records written as they come.

    ``write`` collects text; ``flush`` encodes it (UTF-8, surrogateescape: non-UTF-8 file names
    go out byte-exact) and writes it in one loop. When a write fails, the error is an
    :class:`OutputError`; :meth:`abort` then cuts a regular file back to the end of the last
    whole batch, so a later ``--resume`` finds no torn record.
    """

    def __init__(self, raw: BinaryIO, label: str, *, owned: bool = True, truncatable: bool = False,
                 offset: int = 0, what: str = "output") -> None:
        self.raw, self.label, self.owned, self.truncatable, self.what = raw, label, owned, truncatable, what
        self.good = offset  # bytes of the file known to be whole
        self._pending: list[str] = []
        self.closed = False

    def write(self, text: str) -> int:
        self._pending.append(text)
        return len(text)

    def flush(self) -> None:
        data = "".join(self._pending).encode("utf-8", "surrogateescape")
        self._pending.clear()
        try:
            view = memoryview(data)
            while view:
                n = self.raw.write(view)
                view = view[n if n is not None else 0:]
            self.raw.flush()
        except BrokenPipeError:
            if not self.owned:  # stdout piped into `head`: the reader's choice, not our error
                raise
            raise self._error(BrokenPipeError(32, "Broken pipe")) from None
        except OSError as exc:
            raise self._error(exc) from None
        self.good += len(data)

    def _error(self, exc: OSError) -> OutputError:
        if self.label == "<stdout>":
            # What stayed in stdout's buffer would fail again when Python exits, with a second
            # message: send it to /dev/null instead.
            with contextlib.suppress(OSError, ValueError, AttributeError, io.UnsupportedOperation):
                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, self.raw.fileno())
                os.close(devnull)
            return OutputError(f"cannot write to standard output: {reason(exc)}")
        return output_error(self.label, exc, self.what)

    def abort(self) -> None:
        """After a failed write: drop what is pending, cut a torn batch, close without flushing."""
        self._pending.clear()
        if self.closed:
            return
        if self.truncatable:
            try:
                self.raw.truncate(self.good)
            except OSError:
                pass
        if self.owned:
            try:
                self.raw.close()
            except OSError:
                pass
        self.closed = True

    def close(self) -> None:
        if self.closed:
            return
        self.flush()
        self.closed = True
        if self.owned:
            try:
                self.raw.close()
            except OSError as exc:
                raise self._error(exc) from None

    def fileno(self) -> int:
        return self.raw.fileno()


def open_sink(path: str, mode: str, *, truncatable: bool, what: str = "output") -> RecordSink:
    """A :class:`RecordSink` on *path* (``wb`` or ``ab``), unbuffered: each batch is one write."""
    try:
        raw = open(path, mode, buffering=0)
    except OSError as exc:
        raise output_error(path, exc, what) from None
    offset = raw.seek(0, os.SEEK_END) if "a" in mode and truncatable else 0
    return RecordSink(raw, path, truncatable=truncatable, offset=offset, what=what)  # type: ignore[arg-type]


def stdout_sink() -> Union[RecordSink, TextIO]:
    """Records to stdout, as UTF-8 with surrogateescape (non-UTF-8 file names byte-exact)."""
    import sys

    buffer = getattr(sys.stdout, "buffer", None)
    if buffer is None:  # replaced by a pure text stream: write through it as it is
        return sys.stdout
    sys.stdout.flush()
    return RecordSink(buffer, "<stdout>", owned=False)


class OutputLock:
    """An exclusive, non-blocking lock on an output (``flock`` on a hidden
    ``.<name>.clip-rt.lock`` beside it): a second run on the same output is refused at once,
    instead of interleaving its records with the first one's. Taking it also proves that the
    folder can be written. On a platform without ``fcntl`` it locks nothing."""

    def __init__(self, path: str, what: str = "output") -> None:
        folder, base = os.path.split(path)
        self.path, self.what = path, what
        self.lock_path = os.path.join(folder, f".{base}{LOCK_SUFFIX}")
        self._fd: Optional[int] = None

    def acquire(self) -> "OutputLock":
        try:
            import fcntl
        except ImportError:  # Windows: no flock; concurrent runs are not detected there
            return self
        try:
            fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o666)
        except OSError as exc:
            folder = os.path.dirname(self.lock_path) or "."
            raise OutputError(f"cannot write {self.what} {display_path(self.path)!r}: cannot create files in "
                              f"{display_path(folder)!r} ({reason(exc)})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = _read_pid(fd)
            os.close(fd)
            who = f" (process {holder})" if holder else ""
            raise InputError(f"{display_path(self.path)!r} is being written by another clip-rt run{who}; "
                             "wait for it to end, or write to another file") from None
        try:  # whose lock it is, for the message above (best effort)
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
        except OSError:
            pass
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor releases the flock
            self._fd = None

    def __enter__(self) -> "OutputLock":
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()


def _read_pid(fd: int) -> str:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return ""
    return text if text.isdigit() else ""
