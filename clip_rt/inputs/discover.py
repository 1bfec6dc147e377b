"""Turning command-line PATH arguments into a deterministic list of image paths.

Paths are ``str`` as the OS gives them: on POSIX, bytes that are not UTF-8 are kept as lone
surrogates (``os.fsdecode``'s surrogateescape), so ``open(path)`` still works and the
writers in ``records.py`` can write the original name back.
"""
from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import IO, Optional, TypeVar, Union

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


def read_path_list(stream: IO[bytes]) -> list[str]:
    """Paths from a byte stream, one per line (``-`` on the command line). Blank lines are skipped."""
    out = []
    for raw in stream.read().split(b"\n"):
        raw = raw.rstrip(b"\r")
        if raw.strip():
            out.append(os.fsdecode(raw))
    return out


def discover(args: Iterable[str], stdin: Optional[IO[bytes]] = None,
             errors: Optional[list[tuple[str, str]]] = None) -> list[str]:
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
