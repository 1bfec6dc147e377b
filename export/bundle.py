"""Writing a bundle atomically: a hidden staging folder beside the target, renamed into place
only once every graph has passed its parity check and the manifest is written.

SIGINT/SIGTERM while staging remove the staging folder and leave no trace. During the final
swap (``--force``: old bundle aside, new one in, old one deleted) they are held back until the
swap is done; should the swap still fail half-way, the old bundle is put back.
"""

from __future__ import annotations

import os
import shutil
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType, TracebackType
from typing import Optional

from clip_rt.bundle.manifest import FileEntry, Manifest, sha256_file
from clip_rt.bundle.store import MANIFEST_NAME
from clip_rt.errors import ExportError


class ExportInterrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM arrived during an export (a KeyboardInterrupt, so callers that stop on
    Ctrl-C stop on this too). ``exit_code`` is the shell's 128 + signal number."""

    def __init__(self, signum: int, written: Optional[Path] = None) -> None:
        self.signum = signum
        name = signal.Signals(signum).name
        super().__init__(
            f"export interrupted by {name}; nothing was written"
            if written is None
            else f"export interrupted by {name} just after the bundle was written to {written}"
        )

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


@contextmanager
def interrupt_handlers() -> Iterator[None]:
    """Turn SIGINT and SIGTERM into ExportInterrupted for the duration; restore the old handlers."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be set from the main thread
        return

    interrupted: list[int] = []

    def on_signal(signum: int, _frame: Optional[FrameType]) -> None:
        # A second signal while the first one's cleanup runs must not cut that cleanup short.
        if not interrupted:
            interrupted.append(signum)
            raise ExportInterrupted(signum)

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@contextmanager
def signals_deferred() -> Iterator[list[int]]:
    """Hold SIGINT/SIGTERM back for the duration: the yielded list receives the first one that
    arrived, for the caller to re-raise once it is safe. (A Python-level handler rather than
    pthread_sigmask: a signal delivered to another thread still runs its Python handler in the
    main thread.) Main thread only; elsewhere no handler can interrupt us anyway."""
    pending: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield pending
        return

    def record(signum: int, _frame: Optional[FrameType]) -> None:
        if not pending:
            pending.append(signum)

    previous = {sig: signal.signal(sig, record) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield pending
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def check_target(target: Path, force: bool) -> None:
    """Refuse an existing target unless *force*; never replace something that is not a bundle."""
    if not target.exists():
        return
    if not target.is_dir():
        raise ExportError(f"{target} exists and is not a directory; choose another output with -o")
    is_bundle = (target / MANIFEST_NAME).is_file()
    if not force:
        what = "a bundle" if is_bundle else "a directory"
        raise ExportError(f"{target} already exists ({what}); pass --force to replace it, or -o to write elsewhere")
    if not is_bundle and any(target.iterdir()):
        raise ExportError(
            f"{target} is a non-empty directory that is not a clip-rt bundle; refusing to replace it "
            f"even with --force. Choose another output with -o"
        )


class StagingDir:
    """``with StagingDir(target, force) as stage:`` build in ``stage.path``; ``stage.commit(manifest)``
    publishes it. Leaving the block any other way (error, signal) deletes the staging folder."""

    def __init__(self, target: Path, force: bool) -> None:
        self.target = Path(target).absolute()
        self.force = force
        self.path = self.target.parent / f".{self.target.name}.tmp-{os.getpid()}"
        self.committed = False
        self._aside: Optional[Path] = None  # the previous bundle while the swap is under way

    def __enter__(self) -> StagingDir:
        check_target(self.target, self.force)
        self.target.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists():  # left by an earlier process with our pid that was killed hard
            shutil.rmtree(self.path)
        self.path.mkdir()
        return self

    def __exit__(
        self, exc_type: Optional[type[BaseException]], exc: Optional[BaseException], tb: Optional[TracebackType]
    ) -> None:
        if self.committed:
            return
        if self._aside is not None and self._aside.exists() and not self.target.exists():
            try:
                os.replace(self._aside, self.target)  # the swap did not finish: put the old bundle back
            except OSError as err:
                raise ExportError(
                    f"the export failed while replacing {self.target}, and the previous bundle "
                    f"could not be put back ({err}); it is in {self._aside}"
                ) from err
        shutil.rmtree(self.path, ignore_errors=True)

    def file_entries(self) -> dict[str, FileEntry]:
        """sha256 and size of every file in the staging folder except the manifest."""
        entries = {}
        for path in sorted(self.path.iterdir()):
            if path.name == MANIFEST_NAME:
                continue
            if not path.is_file():
                raise ExportError(f"unexpected non-file {path.name!r} in the export staging folder")
            entries[path.name] = FileEntry(sha256=sha256_file(path), bytes=path.stat().st_size)
        return entries

    def commit(self, manifest: Manifest) -> Path:
        """Write the manifest last, flush everything to disk, and rename the folder into place."""
        check_target(self.target, self.force)
        manifest.write(self.path)
        mode = _plain_file_mode()
        for path in self.path.iterdir():
            # Some writers (onnx's external data of the fp16 and onnxruntime-int8 steps) create
            # their files 0600: every file of a bundle gets the mode a plain open() would give.
            path.chmod(mode)
            _fsync_file(path)
        _fsync_dir(self.path)
        with signals_deferred() as deferred:
            if self.target.exists():  # --force: move the old bundle aside, then swap
                self._aside = self.target.parent / f".{self.target.name}.old-{os.getpid()}"
                os.replace(self.target, self._aside)
            os.replace(self.path, self.target)
            self.committed = True
            _fsync_dir(self.target.parent)
            if self._aside is not None:
                shutil.rmtree(self._aside, ignore_errors=True)
        if deferred:  # the bundle is in place: now let the signal do what it would have done
            try:
                signal.raise_signal(deferred[0])
            except ExportInterrupted as exc:
                raise ExportInterrupted(exc.signum, written=self.target) from None
        return self.target


def _plain_file_mode() -> int:
    """0666 less the process's umask (read by setting it and putting it back at once)."""
    umask = os.umask(0o022)
    os.umask(umask)
    return 0o666 & ~umask


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
