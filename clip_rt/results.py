"""What the API returns per image: an embedding or a classification (or why there is none), and
one preprocessed image for callers that batch themselves."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np

from .zeroshot import Classification


class _SourceItem:
    """What every per-image item has: ``source`` (the preferred name: the image as given, or
    for a file found in a folder its path) and ``path`` (that source as a ``str`` path, or None
    for PIL images, arrays and bytes); ``ok`` when it has a result."""

    source: Any
    error: Optional[str]

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def path(self) -> Optional[str]:
        """The file path for a path source, else None (PIL images, arrays, bytes)."""
        return os.fspath(self.source) if isinstance(self.source, (str, os.PathLike)) else None


@dataclass
class ImageEmbedding(_SourceItem):
    """One item of :meth:`ClipModel.iter_images`: an embedding, or the reason there is none.
    ``source`` is the image as given (a path stays a path; for a file found in a folder, its
    path); ``path`` is the same as a ``str`` path, or None for in-memory images."""

    index: int
    source: Any
    embedding: Optional[np.ndarray]
    width: Optional[int] = None
    height: Optional[int] = None
    error: Optional[str] = None
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        src = self.source
        return {
            "index": self.index,
            "source": os.fspath(src) if isinstance(src, (str, os.PathLike)) else f"<{type(src).__name__}>",
            "embedding": None if self.embedding is None else self.embedding.tolist(),
            "width": self.width,
            "height": self.height,
            "error": self.error,
            "notes": list(self.notes),
        }


@dataclass
class ClassifiedImage(_SourceItem):
    """One item of :meth:`ClipModel.iter_classify`: an image's classification, or why there is
    none. ``source`` is the image as given, or for a file found in a folder its path; ``path``
    is the same as a ``str`` path, or None for in-memory images."""

    index: int  # position in the input stream, folders expanded
    source: Any
    result: Optional[Classification]
    width: Optional[int] = None
    height: Optional[int] = None
    error: Optional[str] = None
    notes: list[str] = field(default_factory=list)

    @property
    def label(self) -> Optional[str]:
        return self.result.label if self.result else None

    @property
    def score(self) -> Optional[float]:
        return self.result.score if self.result else None

    def to_dict(self) -> dict[str, Any]:
        """The fields of a `clip-rt classify` JSON record, plus ``index``, ``top_k`` and ``notes``."""
        res = self.result
        return {
            "index": self.index,
            "path": self.path if self.path is not None else f"<{type(self.source).__name__}>",
            "label": res.label if res else None,
            "score": res.score if res else None,
            "scores": dict(res.scores) if res else {},
            "width": self.width,
            "height": self.height,
            "error": self.error,
            "top_k": [[n, p] for n, p in res.top_k] if res else [],
            "notes": list(self.notes),
        }


@dataclass
class PreprocessedImage:
    """One image ready for :meth:`ClipModel.encode_pixels`: ``pixels`` float32 ``(3, H, W)``, and
    the image's size after EXIF orientation (before any resizing)."""

    pixels: np.ndarray
    width: int
    height: int
    notes: list[str] = field(default_factory=list)


def classified(items: Iterator[ImageEmbedding], classifier: Any, top_k: int) -> Iterator[ClassifiedImage]:
    """Each embedded image classified by *classifier* (its ``classify_embeddings``); an image
    without an embedding stays a failed item."""
    for item in items:
        result = None
        if item.embedding is not None and item.error is None:
            result = classifier.classify_embeddings(item.embedding[None, :], top_k=top_k)[0]
        yield ClassifiedImage(
            index=item.index,
            source=item.source,
            result=result,
            width=item.width,
            height=item.height,
            error=item.error or (None if result else "no embedding"),
            notes=item.notes,
        )
