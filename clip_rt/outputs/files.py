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
- :func:`refuse_inputs_as_outputs` runs first of all: an output that is (the same file as,
  through a symbolic or hard link) one of the command's inputs is refused, so ``-o photo.jpg``
  never truncates or replaces the photo it was about to read.

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
from collections.abc import Iterable, Iterator
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
    for test, name in (
        (stat.S_ISREG, "regular file"),
        (stat.S_ISDIR, "folder"),
        (stat.S_ISFIFO, "FIFO"),
        (stat.S_ISCHR, "character device"),
        (stat.S_ISBLK, "block device"),
        (stat.S_ISSOCK, "socket"),
    ):
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
        raise OutputError(
            f"cannot write {what} {display_path(path)!r}: it is a {file_kind(st.st_mode)}, "
            "expected a file (or nothing) there"
        )


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
def atomic_file(
    path: str,
    mode: str = "w",
    what: str = "",
    *,
    encoding: Optional[str] = "utf-8",
    errors: Optional[str] = None,
    newline: Optional[str] = None,
) -> Iterator[IO[Any]]:
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
    so the folder keeps its previous files. :meth:`folder` stages a whole sub-folder the same way
    (a report's thumbnails): it replaces the previous one on commit."""

    def __init__(self, folder: str, what: str = "") -> None:
        self.folder, self.what = folder, what
        self._staged: list[tuple[str, str]] = []  # (temp, final)
        self._folders: list[tuple[str, str]] = []  # (temp folder, final folder)

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

    def folder_path(self, name: str, marker: str) -> str:
        """A temporary folder to fill in place of the sub-folder *name*. That folder must be absent
        or one clip-rt made (it holds the file *marker*, which the new one gets too): a folder of
        the user's is never replaced. Temporary folders a killed run left are removed here."""
        final = os.path.join(self.folder, name)
        check_owned_folder(final, marker, self.what)
        remove_dead_temp_folders(final, marker)
        tmp = temp_name(final)
        try:
            os.mkdir(tmp)
            os.close(_create(os.path.join(tmp, marker)))
        except OSError as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            raise output_error(final, exc, self.what) from None
        self._folders.append((tmp, final))
        return tmp

    def commit(self) -> None:
        moved: list[tuple[str, str, Optional[str]]] = []  # (temp, final, the previous folder's temp name)
        try:
            for tmp, _ in self._staged:
                fd = os.open(tmp, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
            for tmp, final in self._folders:
                old = None
                if os.path.lexists(final):
                    old = temp_name(final)
                    os.rename(final, old)
                try:
                    os.rename(tmp, final)
                except OSError:
                    if old is not None:
                        os.rename(old, final)
                    raise
                moved.append((tmp, final, old))
            for tmp, final in self._staged:
                _sync_and_replace(tmp, final)
        except OSError as exc:
            for tmp, final, old in reversed(moved):  # the previous folders back in place
                with contextlib.suppress(OSError):
                    os.rename(final, tmp)
                    if old is not None:
                        os.rename(old, final)
            self.discard()
            raise OutputError(
                f"cannot write {self.what + ' ' if self.what else ''}in {display_path(self.folder)!r}: {reason(exc)}"
            ) from None
        for _, _, old in moved:
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
        self._staged = []
        self._folders = []

    def discard(self) -> None:
        for tmp, _ in self._staged:
            _unlink(tmp)
        for tmp, _ in self._folders:
            shutil.rmtree(tmp, ignore_errors=True)
        self._staged = []
        self._folders = []

    def __enter__(self) -> StagedFiles:
        return self

    def __exit__(self, exc_type: Any, *rest: Any) -> None:
        if exc_type is not None:
            self.discard()


def check_owned_folder(path: str, marker: str, what: str) -> None:
    """A sub-folder clip-rt replaces as a whole must be absent, or a folder holding *marker*."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise output_error(path, exc, what) from None
    if not stat.S_ISDIR(st.st_mode):
        kind = "symbolic link" if stat.S_ISLNK(st.st_mode) else file_kind(st.st_mode)
        raise OutputError(
            f"cannot write {what} {display_path(path)!r}: it is a {kind}; expected a folder "
            "made by clip-rt, or nothing, there"
        )
    if not os.path.isfile(os.path.join(path, marker)):
        raise OutputError(
            f"cannot write {what} {display_path(path)!r}: that folder was not made by clip-rt (it "
            f"has no {marker} file) and would be replaced; move it away or choose another folder"
        )


def remove_dead_temp_folders(path: str, marker: str) -> None:
    """Remove ``.<name>.<pid>.<hex>.tmp`` folders beside *path* (with *marker* in them) whose
    process is gone: what a killed run left while staging *path*."""
    folder, base = os.path.split(path)
    ours = re.compile(r"\." + re.escape(base) + r"\.(\d+)\.[0-9a-f]{8}" + re.escape(TEMP_SUFFIX))
    try:
        names = os.listdir(folder or ".")
    except OSError:
        return
    for name in names:
        m = ours.fullmatch(name)
        full = os.path.join(folder, name)
        if (
            m
            and not _alive(int(m.group(1)))
            and os.path.isfile(os.path.join(full, marker))
            and not os.path.islink(full)
        ):
            shutil.rmtree(full, ignore_errors=True)


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: another user's live process
        return True
    return True


class RecordSink:
    """A text stream over a binary file for records written as they come.

    ``write`` collects text; ``flush`` encodes it (UTF-8, surrogateescape: non-UTF-8 file names
    go out byte-exact) and writes it in one loop. When a write fails, the error is an
    :class:`OutputError`; :meth:`abort` then cuts a regular file back to the end of the last
    whole batch, so a later ``--resume`` finds no torn record.
    """

    def __init__(
        self,
        raw: BinaryIO,
        label: str,
        *,
        owned: bool = True,
        truncatable: bool = False,
        offset: int = 0,
        what: str = "output",
    ) -> None:
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
                view = view[n if n is not None else 0 :]
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
    folder can be written. The lock file is removed when the lock is released, so no file is
    left beside the output. On a platform without ``fcntl`` it locks (and creates) nothing.

    Removing a lock file safely: the holder unlinks it while still holding the ``flock``, and a
    run that takes the lock checks afterwards that the name still leads to the file it locked
    (a run that opened the file just before the holder removed it would otherwise hold a lock
    on a file nobody else can find, beside a second run that made a new one)."""

    # Tries at taking the lock when other runs keep removing the file under it: each failed
    # try means another run finished in between, so a handful is plenty.
    ATTEMPTS = 20

    def __init__(self, path: str, what: str = "output") -> None:
        folder, base = os.path.split(path)
        self.path, self.what = path, what
        self.lock_path = os.path.join(folder, f".{base}{LOCK_SUFFIX}")
        self._fd: Optional[int] = None

    def acquire(self) -> OutputLock:
        try:
            import fcntl
        except ImportError:  # Windows: no flock; concurrent runs are not detected there
            return self
        for _ in range(self.ATTEMPTS):
            fd = self._open()
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                holder = _read_pid(fd)
                os.close(fd)
                who = f" (process {holder})" if holder else ""
                raise InputError(
                    f"{display_path(self.path)!r} is being written by another clip-rt run{who}; "
                    "wait for it to end, or write to another file"
                ) from None
            if self._still_named(fd):
                break
            os.close(fd)  # the run that held it removed the file meanwhile: lock the current one
        else:
            raise OutputError(
                f"cannot lock {self.what} {display_path(self.path)!r}: its lock file "
                f"{display_path(self.lock_path)!r} kept being replaced; try again"
            )
        try:  # whose lock it is, for the message above (best effort)
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
        except OSError:
            pass
        self._fd = fd
        return self

    def _open(self) -> int:
        try:
            return os.open(self.lock_path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o666)
        except OSError as exc:
            folder = os.path.dirname(self.lock_path) or "."
            raise OutputError(
                f"cannot write {self.what} {display_path(self.path)!r}: cannot create files in "
                f"{display_path(folder)!r} ({reason(exc)})"
            ) from None

    def _still_named(self, fd: int) -> bool:
        """Whether :attr:`lock_path` is still the file open as *fd*."""
        try:
            named, held = os.stat(self.lock_path), os.fstat(fd)
        except OSError:
            return False
        return (named.st_dev, named.st_ino) == (held.st_dev, held.st_ino)

    def release(self) -> None:
        """Remove the lock file (only while this run holds it, and only if the name still leads
        to the file this run locked), then release the lock."""
        if self._fd is None:
            return
        try:
            if self._still_named(self._fd):
                _unlink(self.lock_path)
        finally:
            os.close(self._fd)  # closing the descriptor releases the flock
            self._fd = None

    def __enter__(self) -> OutputLock:
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()


def _read_pid(fd: int) -> str:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return ""
    return text if text.isdigit() else ""


# -- outputs that are inputs ---------------------------------------------------------------
def _file_id(path: str) -> Optional[tuple[int, int]]:
    try:
        st = os.stat(path)
    except (OSError, ValueError):  # missing, unreadable, a NUL in the name: not a file it could be
        return None
    return st.st_dev, st.st_ino


def _same_place(a: str, b: str) -> bool:
    """Whether two output paths name one file (existing or not: links resolved)."""
    ida, idb = _file_id(a), _file_id(b)
    if ida is not None and idb is not None:
        return ida == idb
    return os.path.normcase(os.path.realpath(a)) == os.path.normcase(os.path.realpath(b))


def refuse_inputs_as_outputs(
    outputs: list[tuple[str, str]], inputs: Iterable[str] = (), *, stdin: bool = False, stdout: bool = False
) -> None:
    """Refuse, before anything is opened for writing, an output that is one of the inputs.

    *outputs*: ``(path, what)`` of every file the command may write (``what`` names it in the
    message: ``output``, ``report file`` ...). *inputs*: the paths it reads. *stdin*: it reads
    standard input (a path list); *stdout*: it writes its records to standard output, which
    must not be one of the inputs either (``clip-rt classify a.jpg >> a.jpg``, refused like
    ``cat``). "The same" is the same file: the same device and inode, so symbolic and hard links
    are seen through. Only existing regular files are compared (a new file cannot be an input;
    writing ``/dev/null`` destroys nothing); two outputs naming one file are refused too.
    Costs one ``stat`` per input, and only when an output already exists.
    """
    for i, (a, what_a) in enumerate(outputs):
        for b, what_b in outputs[i + 1 :]:
            if _same_place(a, b):
                raise OutputError(
                    f"the {what_a} {display_path(a)!r} and the {what_b} {display_path(b)!r} are "
                    "the same file; give them different paths"
                )
    targets: dict[tuple[int, int], tuple[str, str]] = {}
    for path, what in outputs:
        try:
            st = os.stat(path)
        except (OSError, ValueError):
            continue
        if stat.S_ISREG(st.st_mode):
            targets[(st.st_dev, st.st_ino)] = (display_path(path), what)
    out_st = _stdout_stat() if stdout else None
    out_id = (out_st.st_dev, out_st.st_ino) if out_st is not None and stat.S_ISREG(out_st.st_mode) else None
    if not targets and out_id is None:
        return
    if stdin and targets:
        in_st = _fd_stat(0)
        hit = targets.get((in_st.st_dev, in_st.st_ino)) if in_st is not None else None
        if hit is not None:
            raise OutputError(
                f"cannot write {hit[1]} {hit[0]!r}: it is the path list this command reads on "
                "standard input; write to another file"
            )
    for path in inputs:
        fid = _file_id(path)
        if fid is None:
            continue
        hit = targets.get(fid)
        if hit is not None:
            same = "" if display_path(path) == hit[0] else " (the same file, through a link)"
            raise OutputError(
                f"cannot write {hit[1]} {hit[0]!r}: it is the input {display_path(path)!r}{same}; "
                "nothing was written: choose another output path"
            )
        if fid == out_id:
            raise OutputError(
                f"standard output is the input {display_path(path)!r}: writing there would "
                "change the file being read; redirect the output to another file"
            )


def _fd_stat(fd: int) -> Optional[os.stat_result]:
    try:
        return os.fstat(fd)
    except OSError:  # closed
        return None


def _stdout_stat() -> Optional[os.stat_result]:
    """What the records written to ``sys.stdout`` land in (None: not a real file descriptor,
    e.g. a test runner's captured stream)."""
    import sys

    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        return None
    return _fd_stat(fd)
