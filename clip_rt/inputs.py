"""Turning command-line PATH arguments into a deterministic list of image paths.

Paths are ``str`` as the OS gives them: on POSIX, bytes that are not UTF-8 are kept as lone
surrogates (``os.fsdecode``'s surrogateescape), so ``open(path)`` still works and the
writers in ``records.py`` can write the original name back.
"""
from __future__ import annotations

import os
import sys
from typing import IO, Iterable, Optional


IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"})
VIDEO_EXTENSIONS = frozenset({".mp4", ".mov", ".mkv", ".avi", ".webm", ".m4v"})


def is_image_name(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def walk_images(folder: str) -> list[str]:
    """Every image under *folder* (recursive, extension case-insensitive), sorted by path.

    Sorting is on the encoded bytes so the order does not depend on the locale.
    """
    found: list[str] = []
    for root, dirs, files in os.walk(folder, onerror=None):
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


def discover(args: Iterable[str], stdin: Optional[IO[bytes]] = None) -> list[str]:
    """Expand PATH arguments: a file is taken as given (whatever its extension, and even if it
    does not exist, so that it gets an error record instead of vanishing or stopping the run),
    a folder is walked, ``-`` reads paths from *stdin*. Duplicates are dropped, first
    occurrence wins; argument order is kept.
    """
    seen: set[str] = set()
    result: list[str] = []

    def add(path: str) -> None:
        if path not in seen:
            seen.add(path)
            result.append(path)

    for arg in args:
        if arg == "-":
            stream = stdin if stdin is not None else sys.stdin.buffer
            for p in read_path_list(stream):
                if os.path.isdir(p):
                    for q in walk_images(p):
                        add(q)
                else:
                    add(p)
        elif os.path.isdir(arg):
            for q in walk_images(arg):
                add(q)
        else:
            add(arg)  # a file, or a missing one: it gets a record with the loader's error
    return result


def display_path(path: str) -> str:
    """*path* printable on any terminal: undecodable bytes shown as ``\\xNN``."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")

