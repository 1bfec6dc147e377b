"""Writing a bundle atomically: a hidden staging folder beside the target, renamed into place
only once every graph has passed its parity check and the manifest is written.

SIGINT/SIGTERM while staging remove the staging folder and leave no trace.
"""
from __future__ import annotations

import os
import shutil
import signal
import threading
from contextlib import contextmanager
from pathlib import Path
from types import FrameType, TracebackType
from typing import Iterator, Optional

from clip_rt.errors import ExportError
from clip_rt.manifest import FileEntry, Manifest, sha256_file
from clip_rt.store import MANIFEST_NAME


class ExportInterrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM arrived during an export (a KeyboardInterrupt, so callers that stop on
    Ctrl-C stop on this too). ``exit_code`` is the shell's 128 + signal number."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        super().__init__(f"export interrupted by {signal.Signals(signum).name}; nothing was written")

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

    def __enter__(self) -> "StagingDir":
        check_target(self.target, self.force)
        self.target.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists():  # left by an earlier process with our pid that was killed hard
            shutil.rmtree(self.path)
        self.path.mkdir()
        return self

    def __exit__(
        self,
        exc_type: Optional[type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        if not self.committed:
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
        for path in self.path.iterdir():
            _fsync_file(path)
        _fsync_dir(self.path)
        old: Optional[Path] = None
        if self.target.exists():  # --force: move the old bundle aside, then swap
            old = self.target.parent / f".{self.target.name}.old-{os.getpid()}"
            os.replace(self.target, old)
        os.replace(self.path, self.target)
        self.committed = True
        _fsync_dir(self.target.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return self.target


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
