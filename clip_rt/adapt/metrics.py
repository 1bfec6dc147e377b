"""Accuracy, confusion, per-class precision/recall, the most confused pairs, and the one-line
advice that says what the numbers mean for the choice between zero-shot and a head.

The advice compares two classifiers on the *same* images with McNemar's exact test: only the
images one gets right and the other wrong say anything about which is better. "Use the head"
needs the head ahead at the 5 % level (two-sided); a smaller lead on few images is called
within chance, which is the honest answer for a handful of labelled photos.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np

SIGNIFICANCE = 0.05


@dataclass(frozen=True)
class ClassMetrics:
    label: str
    support: int  # images of this class
    predicted: int  # images predicted as this class
    correct: int
    precision: Optional[float]  # None: never predicted
    recall: Optional[float]  # None: no images of this class

    def to_json(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "support": self.support,
            "predicted": self.predicted,
            "correct": self.correct,
            "precision": self.precision,
            "recall": self.recall,
        }


@dataclass(frozen=True)
class Scores:
    """How one classifier did on a labelled set. ``confusion[i][j]``: images of class *i*
    predicted as class *j* (rows true, columns predicted)."""

    name: str
    labels: list[str]
    accuracy: float
    top_k: int  # 5, or the number of classes when there are 5 or fewer
    top_k_accuracy: float
    confusion: np.ndarray
    correct: np.ndarray  # per image: top-1 right
    predicted: np.ndarray  # per image: the top-1 class index
    confidence: Optional[np.ndarray] = None  # per image: the top-1 class's probability

    @property
    def images(self) -> int:
        return int(self.confusion.sum())

    def per_class(self) -> list[ClassMetrics]:
        out = []
        for i, label in enumerate(self.labels):
            support = int(self.confusion[i].sum())
            predicted = int(self.confusion[:, i].sum())
            correct = int(self.confusion[i, i])
            out.append(
                ClassMetrics(
                    label,
                    support,
                    predicted,
                    correct,
                    correct / predicted if predicted else None,
                    correct / support if support else None,
                )
            )
        return out

    def confused_pairs(self, limit: int = 10) -> list[tuple[str, str, int]]:
        """(true, predicted, images) for the largest off-diagonal cells, largest first."""
        off = self.confusion.copy()
        np.fill_diagonal(off, 0)
        flat = np.argsort(-off, axis=None, kind="stable")[:limit]
        pairs = []
        for cell in flat:
            i, j = np.unravel_index(cell, off.shape)
            if off[i, j] <= 0:
                break
            pairs.append((self.labels[i], self.labels[j], int(off[i, j])))
        return pairs

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "accuracy": self.accuracy,
            "images": self.images,
            "top_k": self.top_k,
            "top_k_accuracy": self.top_k_accuracy,
            **({"top5_accuracy": self.top_k_accuracy} if self.top_k == 5 else {}),
            "labels": list(self.labels),
            "confusion": self.confusion.astype(int).tolist(),
            "per_class": [c.to_json() for c in self.per_class()],
            "confused_pairs": [{"true": t, "predicted": p, "images": n} for t, p, n in self.confused_pairs()],
        }


def top_k_for(n_classes: int) -> int:
    """Top-5 where there are more than 5 classes, else top-k with k = the number of classes."""
    return 5 if n_classes > 5 else n_classes


def score(name: str, labels: Sequence[str], probabilities: np.ndarray, truth: np.ndarray) -> Scores:
    """*probabilities* (N, C) over *labels*, *truth* (N,) class indices."""
    probs = np.asarray(probabilities, dtype=np.float64)
    truth = np.asarray(truth, dtype=np.int64)
    n_classes = len(labels)
    if probs.ndim != 2 or probs.shape != (len(truth), n_classes):
        raise ValueError(f"probabilities of shape {probs.shape} for {len(truth)} images and {n_classes} labels")
    if len(truth) == 0:
        raise ValueError("no images to score")
    # Stable order: of equal probabilities the first label wins, as classify's top-k does.
    order = np.argsort(-probs, axis=1, kind="stable")
    predicted = order[:, 0]
    k = top_k_for(n_classes)
    in_top_k = (order[:, :k] == truth[:, None]).any(axis=1)
    confusion = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(confusion, (truth, predicted), 1)
    correct = predicted == truth
    confidence = probs[np.arange(len(truth)), predicted]
    return Scores(
        name, list(labels), float(correct.mean()), k, float(in_top_k.mean()), confusion, correct, predicted, confidence
    )


# -- comparing two classifiers on the same images -------------------------------------------------
def mcnemar_p(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value for *b* images only the first got right and *c* only the
    second did: the probability of a split at least this uneven if both were equally good."""
    n = b + c
    if n == 0:
        return 1.0
    low = min(b, c)
    tail = sum(math.comb(n, i) for i in range(low + 1)) / 2.0**n
    return min(1.0, 2.0 * tail)


@dataclass(frozen=True)
class Comparison:
    """The head against zero-shot on the same images."""

    zero_shot: float
    head: float
    images: int
    head_only: int  # images only the head got right
    zero_shot_only: int
    p_value: float
    how: str  # "5-fold cross-validation of 80 images", "120 held-out images"
    blend: Optional[float] = None  # the head's blend weight, when it is known

    @property
    def verdict(self) -> str:
        """``head`` (clearly better), ``zero-shot`` (as good or better), or ``unclear`` (ahead,
        within chance)."""
        if self.blend == 0.0:
            return "zero-shot"  # the head *is* zero-shot
        if self.head_only <= self.zero_shot_only:
            return "zero-shot"
        return "head" if self.p_value < SIGNIFICANCE else "unclear"

    def advice(self) -> str:
        figures = f"zero-shot {self.zero_shot:.2f}, head {self.head:.2f} on {self.how}"
        verdict = self.verdict
        if self.blend == 0.0:
            return f"{figures}: the fitted head is zero-shot itself (blend weight 0): keep zero-shot, no head needed"
        if verdict == "head":
            return f"{figures}: use the head"
        if verdict == "unclear":
            return (
                f"{figures}: the head is ahead ({self.head_only} images right that zero-shot missed, "
                f"{self.zero_shot_only} the other way) but on this few images that is within chance "
                f"(p={self.p_value:.2f}); label more images before choosing"
            )
        if self.head_only == self.zero_shot_only:
            return f"{figures}: zero-shot is as good: keep zero-shot, no head needed"
        return f"{figures}: zero-shot is better: keep zero-shot, no head needed"

    def to_json(self) -> dict[str, Any]:
        return {
            "zero_shot_accuracy": self.zero_shot,
            "head_accuracy": self.head,
            "images": self.images,
            "head_only_right": self.head_only,
            "zero_shot_only_right": self.zero_shot_only,
            "mcnemar_p": self.p_value,
            "verdict": self.verdict,
            "advice": self.advice(),
        }


def compare(
    zero_shot_correct: np.ndarray, head_correct: np.ndarray, how: str, blend: Optional[float] = None
) -> Comparison:
    """Per-image right/wrong of zero-shot and of the head, on the same images in the same order."""
    z = np.asarray(zero_shot_correct, dtype=bool)
    h = np.asarray(head_correct, dtype=bool)
    if z.shape != h.shape or z.ndim != 1 or len(z) == 0:
        raise ValueError(f"expected two equal, non-empty per-image vectors, got {z.shape} and {h.shape}")
    b, c = int((h & ~z).sum()), int((z & ~h).sum())
    return Comparison(float(z.mean()), float(h.mean()), len(z), b, c, mcnemar_p(b, c), how, blend)
