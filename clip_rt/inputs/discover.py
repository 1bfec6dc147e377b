"""Turning command-line PATH arguments into a deterministic list of image paths.

Paths are ``str`` as the OS gives them: on POSIX, bytes that are not UTF-8 are kept as lone
surrogates (``os.fsdecode``'s surrogateescape), so ``open(path)`` still works and the
writers in ``records.py`` can write the original name back.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import IO, Optional, TypeVar, Union

from ..display import display_path
from ..errors import InputError

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"})
VIDEO_EXTENSIONS = frozenset({".mp4", ".mov", ".mkv", ".avi", ".webm", ".m4v"})


def is_image_name(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def path_key(path: str) -> str:
    """*path* made absolute (against the current directory) and normalised, so that
    ``photos/a.jpg``, ``./photos/a.jpg`` and ``/home/me/photos/a.jpg`` compare equal. Symlinks are
    not resolved. Works on surrogate-escaped ``str`` (non-UTF-8 names) like any other."""
    return os.path.normpath(os.path.abspath(path))


def listing_error(exc: OSError) -> tuple[str, str]:
    """``(folder, reason)`` for a folder the walk could not list."""
    folder = exc.filename if isinstance(exc.filename, str) else os.fsdecode(exc.filename or "")
    return folder, f"cannot list folder: {exc.strerror or exc}"


def walk_images(folder: str, errors: Optional[list[tuple[str, str]]] = None) -> list[str]:
    """Every image under *folder* (recursive, extension case-insensitive), sorted by path.

    Sorting is on the encoded bytes so the order does not depend on the locale. A folder that
    cannot be listed (permissions, I/O error) is appended to *errors* as ``(folder, reason)``
    instead of vanishing silently; the rest of the tree is still walked.
    """

    def on_error(exc: OSError) -> None:
        if errors is not None:
            errors.append(listing_error(exc))

    found: list[str] = []
    for root, dirs, files in os.walk(folder, onerror=on_error):
        dirs.sort()
        found.extend(os.path.join(root, f) for f in files if is_image_name(f))
    return sorted(found, key=os.fsencode)


def no_images_found(paths: Sequence[str]) -> InputError:
    """The error of a command whose PATHS held no image at all (an empty folder, a folder of
    other files, an empty list on stdin): a mistake far more often than a request to do nothing
    (an unmounted drive, a typo in a folder name), so commands exit 1 on it."""
    shown = ", ".join("standard input" if p == "-" else repr(display_path(p)) for p in paths) or "nothing"
    kinds = ", ".join(sorted(IMAGE_EXTENSIONS))
    return InputError(f"no images found under {shown} (looked for {kinds} files, subfolders included)")


def read_path_list(stream: IO[bytes], limit: Optional[int] = None) -> list[str]:
    """Paths from a byte stream, one per line (``-`` on the command line). Blank lines are
    skipped. At most *limit* bytes are read (default: ``CLIP_RT_MAX_PATH_LIST_MB``, 256 MB);
    a longer or endless stream is an InputError that says how to raise the limit."""
    from .bounded import PATH_LIST_ENV, env_hint, path_list_limit, read_lines_limited

    lines = read_lines_limited(
        stream,
        what="the path list on standard input",
        limit=path_list_limit() if limit is None else limit,
        hint=env_hint(PATH_LIST_ENV),
    )
    out = []
    for raw in lines:
        raw = raw.rstrip(b"\r")
        if raw.strip():
            out.append(os.fsdecode(raw))
    return out


def discover(
    args: Iterable[str], stdin: Optional[IO[bytes]] = None, errors: Optional[list[tuple[str, str]]] = None
) -> list[str]:
    """Expand PATH arguments: a file is taken as given (whatever its extension, and even if it
    does not exist, so that it gets an error record instead of vanishing or stopping the run),
    a folder is walked, ``-`` reads paths from *stdin*. Duplicates (by :func:`path_key`, so
    ``a.jpg`` and ``./a.jpg`` are one) are dropped, first occurrence wins; argument order is
    kept. Folders that could not be listed are appended to *errors* as ``(folder, reason)``.
    """
    seen: set[str] = set()
    result: list[str] = []

    def add(path: str) -> None:
        key = path_key(path)
        if key not in seen:
            seen.add(key)
            result.append(path)

    def add_arg(path: str) -> None:
        if os.path.isdir(path):
            for q in walk_images(path, errors):
                add(q)
        else:
            add(path)  # a file, or a missing one: it gets a record with the loader's error

    for arg in args:
        if arg == "-":
            stream = stdin if stdin is not None else sys.stdin.buffer
            for p in read_path_list(stream):
                add_arg(p)
        else:
            add_arg(arg)
    return result


@dataclass(frozen=True)
class UnlistedFolder:
    """A folder :func:`expand_folders` could not list: the API reports it as a failed item."""

    path: str
    reason: str


Source = TypeVar("Source")


def expand_folders(sources: Iterable[Source]) -> Iterator[Union[Source, str, UnlistedFolder]]:
    """*sources* as given, except that a path (``str`` / ``os.PathLike``) naming a folder becomes
    the images under it (recursive, sorted as :func:`walk_images`), followed by an
    :class:`UnlistedFolder` for each folder in it that could not be listed. Lazy: a generator of
    sources is read as the caller consumes the result."""
    for source in sources:
        if isinstance(source, (str, os.PathLike)) and os.path.isdir(source):
            errors: list[tuple[str, str]] = []
            yield from walk_images(os.fsdecode(source), errors)  # str paths, as the module keeps them
            for folder, reason in errors:
                yield UnlistedFolder(folder, reason)
        else:
            yield source
