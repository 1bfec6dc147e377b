"""A labelled image set: one subfolder per class (the folder's name is the label), or a CSV of
``path,label`` rows.

Folder layout::

    pets/
      cat/  a.jpg b.png sub/c.jpg      <- every image under the folder, recursively
      dog/  ...

Hidden folders (``.name``) are not classes. Images lying directly in the top folder have no
class: they are left out, and a note says how many. A class folder that cannot be listed, or a
listed file that cannot be read later, is reported as that file's error; the rest goes on.

CSV: UTF-8 (a BOM is allowed), two columns ``path,label``, an optional header row naming
exactly those two columns; relative paths are relative to the CSV file's folder. A missing file
is kept (it becomes that image's error, as in ``classify``); a malformed row is an error naming
its line, since the set it describes would otherwise be silently smaller.
"""

from __future__ import annotations

import csv
import io
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Union

import numpy as np

from ..display import display_path
from ..errors import InputError
from ..inputs.discover import is_image_name, path_key, walk_images
from ..inputs.texts import check_utf8, decode_utf8

MAX_CSV_BYTES = 256 * 1024 * 1024  # a path list, not a data set: larger is a mistake


@dataclass(frozen=True)
class LabelledImage:
    path: str
    label: str


@dataclass
class LabelledSet:
    """The images of a labelled set and their classes. *labels*: every class, in order (folder
    names sorted, or first appearance in the CSV); *unlisted*: ``(folder, reason)`` for class
    folders that could not be listed; *notes*: things the user should know (ignored images)."""

    source: str
    items: list[LabelledImage]
    labels: list[str]
    unlisted: list[tuple[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        """Images per class, every class present (0 for an empty one)."""
        found = Counter(item.label for item in self.items)
        return {lab: found.get(lab, 0) for lab in self.labels}

    def index_of(self, labels: Sequence[str]) -> np.ndarray:
        """Each image's class as its position in *labels* (which must hold all of them)."""
        where = {lab: i for i, lab in enumerate(labels)}
        return np.array([where[item.label] for item in self.items], dtype=np.int64)


def read_labelled_set(source: Union[str, os.PathLike[str]]) -> LabelledSet:
    """The labelled set at *source*: a folder of class folders, or a ``.csv`` file."""
    path = os.fspath(source)
    if os.path.isdir(path):
        found = _from_folders(path)
    elif os.path.isfile(path) and path.lower().endswith(".csv"):
        found = _from_csv(path)
    elif not os.path.exists(path):
        raise InputError(
            f"{display_path(path)!r} does not exist: expected a folder with one subfolder per "
            "class, or a CSV file of path,label rows"
        )
    else:
        raise InputError(
            f"{display_path(path)!r} is neither a folder nor a .csv file: expected a folder with one "
            "subfolder per class (its name is the label), or a CSV file of path,label rows"
        )
    if len(found.labels) < 2:
        have = f"only the class {found.labels[0]!r}" if found.labels else "no class"
        raise InputError(
            f"{display_path(path)!r} has {have}: a labelled set needs at least two classes "
            "(one subfolder per class, or two labels in the CSV)"
        )
    return found


def _label(name: str, where: str) -> str:
    label = check_utf8(name, where).strip()
    if not label:
        raise InputError(f"{where} {name!r} is blank: expected a class name")
    return label


def _from_folders(root: str) -> LabelledSet:
    try:
        with os.scandir(root) as entries:
            listed = sorted(entries, key=lambda e: os.fsencode(e.name))
    except OSError as exc:
        raise InputError(f"cannot list {display_path(root)!r}: {exc.strerror or exc}") from None
    loose = [e.name for e in listed if not e.is_dir() and is_image_name(e.name)]
    classes = [e for e in listed if e.is_dir() and not e.name.startswith(".")]
    if not classes:
        raise InputError(
            f"{display_path(root)!r} has no class folders: expected one subfolder per class (its name "
            "is the label) holding that class's images"
        )
    items: list[LabelledImage] = []
    labels: list[str] = []
    by_label: dict[str, str] = {}
    unlisted: list[tuple[str, str]] = []
    for entry in classes:
        label = _label(entry.name, "class folder name")
        if label in by_label:
            raise InputError(
                f"class folders {by_label[label]!r} and {entry.name!r} are the same label once spaces "
                "are stripped: rename one"
            )
        by_label[label] = entry.name
        labels.append(label)
        items.extend(LabelledImage(p, label) for p in walk_images(os.path.join(root, entry.name), unlisted))
    notes = []
    if loose:
        notes.append(
            f"{len(loose)} image(s) directly in {display_path(root)!r} are in no class folder and were left "
            f"out (e.g. {display_path(loose[0])!r})"
        )
    empty = [lab for lab in labels if not any(it.label == lab for it in items)]
    if empty:
        notes.append(f"class folder(s) with no images: {', '.join(map(repr, empty))}")
    return LabelledSet(root, items, labels, unlisted, notes)


def _from_csv(path: str) -> LabelledSet:
    try:
        size = os.path.getsize(path)
        if size > MAX_CSV_BYTES:
            raise InputError(
                f"{display_path(path)!r} is {size} bytes: a path,label list larger than "
                f"{MAX_CSV_BYTES // 2**20} MiB is not supported"
            )
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as exc:
        raise InputError(f"cannot read {display_path(path)!r}: {exc.strerror or exc}") from None
    text = decode_utf8(raw, display_path(path))
    base = os.path.dirname(path)
    items: list[LabelledImage] = []
    labels: dict[str, None] = {}
    seen: dict[str, tuple[str, int]] = {}  # path_key -> (label, line)
    try:
        rows = list(csv.reader(io.StringIO(text, newline=""), strict=True))
    except csv.Error as exc:
        raise InputError(f"{display_path(path)}: not a valid CSV file ({exc})") from None
    for number, row in enumerate(rows, 1):
        if not row or all(not cell.strip() for cell in row):
            continue
        if number == 1 and [c.strip().lower() for c in row] == ["path", "label"]:
            continue
        if len(row) != 2:
            raise InputError(
                f"{display_path(path)}: line {number} has {len(row)} column(s); expected 2: path,label "
                "(quote a path or label that holds a comma)"
            )
        image, label = row[0].strip(), _label(row[1], f"{display_path(path)}: line {number}: label")
        if not image:
            raise InputError(f"{display_path(path)}: line {number} has no path")
        full = image if os.path.isabs(image) else os.path.join(base, image)
        key = path_key(full)
        if key in seen:
            before, line = seen[key]
            if before != label:
                raise InputError(
                    f"{display_path(path)}: {display_path(image)!r} is labelled {before!r} on line {line} "
                    f"and {label!r} on line {number}; expected one label per image"
                )
            continue
        seen[key] = (label, number)
        labels.setdefault(label, None)
        items.append(LabelledImage(full, label))
    if not items:
        raise InputError(f"{display_path(path)} lists no images: expected path,label rows")
    return LabelledSet(path, items, list(labels))
