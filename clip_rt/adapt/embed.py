"""The image embeddings of a labelled set, computed once for fitting or evaluating; an image
that cannot be read is reported with its reason and left out, and the rest goes on."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Union

import numpy as np

from .dataset import LabelledSet, read_labelled_set

SetArg = Union[str, "os.PathLike[str]", LabelledSet]


@dataclass
class EmbeddedSet:
    """The readable images of a labelled set: *paths*, their class (*truth*, an index into
    *labels*) and *embeddings* (N, D); *failed*: ``(path, reason)`` of every image or class
    folder that could not be read."""

    source: str
    labels: list[str]
    paths: list[str]
    truth: np.ndarray
    embeddings: np.ndarray
    failed: list[tuple[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        found = np.bincount(self.truth, minlength=len(self.labels))
        return {lab: int(n) for lab, n in zip(self.labels, found)}


def as_labelled_set(source: SetArg) -> LabelledSet:
    return source if isinstance(source, LabelledSet) else read_labelled_set(source)


def embed_set(
    model: Any,
    dataset: LabelledSet,
    *,
    labels: Optional[Sequence[str]] = None,
    batch_size: Optional[int] = None,
    progress: Optional[Callable[[int], None]] = None,
) -> EmbeddedSet:
    """Embed every image of *dataset* with *model* (``ClipModel.iter_images``). *labels*: the
    classes the truth indexes (default the set's own; a head's labels, which must hold every
    class of the set)."""
    labels = list(labels) if labels is not None else list(dataset.labels)
    where = {lab: i for i, lab in enumerate(labels)}
    paths = [item.path for item in dataset.items]
    truth_all = [where[item.label] for item in dataset.items]
    failed = list(dataset.unlisted)
    keep_paths: list[str] = []
    truth: list[int] = []
    rows: list[np.ndarray] = []
    for item in model.iter_images(paths, batch_size=batch_size):
        if progress is not None:
            progress(1)
        if item.embedding is None or item.error is not None:
            failed.append((paths[item.index], item.error or "no embedding"))
            continue
        keep_paths.append(paths[item.index])
        truth.append(truth_all[item.index])
        rows.append(np.asarray(item.embedding, dtype=np.float32))
    dim = int(getattr(model, "embed_dim", rows[0].shape[0] if rows else 0))
    embeddings = np.stack(rows) if rows else np.zeros((0, dim), dtype=np.float32)
    return EmbeddedSet(
        dataset.source, labels, keep_paths, np.array(truth, dtype=np.int64), embeddings, failed, list(dataset.notes)
    )
