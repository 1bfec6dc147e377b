"""Zero-shot classification: labels x prompt templates -> class embeddings -> probabilities.

As in the CLIP paper: each class embedding is the mean of its L2-normalised prompt
embeddings, renormalised. How logits ``logit_scale * cos (+ logit_bias)`` become scores is the
bundle's ``scoring`` (SCORINGS):

- ``softmax`` (CLIP): probabilities over the classes, summing to 1 (a bias would shift every
  logit alike and change nothing);
- ``sigmoid`` (SigLIP, SigLIP2: models trained with a sigmoid loss and a logit bias): each
  label's own probability ``sigmoid(logit_scale * cos + logit_bias)``, independent of the
  other labels (they need not sum to 1; every label may score low), as open_clip computes it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Protocol, Union

import numpy as np

from .errors import InputError
from .inputs.texts import check_utf8

PLACEHOLDER = "{}"


@dataclass(frozen=True)
class Label:
    """A class name, and optionally its own prompts (used as given instead of the templates)."""

    name: str
    prompts: tuple[str, ...] = ()

    def texts(self, templates: Sequence[str]) -> list[str]:
        if self.prompts:
            return list(self.prompts)
        return [t.replace(PLACEHOLDER, self.name) for t in templates]


LabelsArg = Union[str, Label, Mapping[str, Union[None, str, Sequence[str]]], Iterable[Union[str, Label]]]


@dataclass(frozen=True)
class Classification:
    """One image's result: best label, its probability, all probabilities, the top k."""

    label: str
    score: float
    scores: dict[str, float]
    top_k: list[tuple[str, float]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "score": self.score,
            "scores": dict(self.scores),
            "top_k": [[name, score] for name, score in self.top_k],
        }


def _prompts(name: str, value: Union[None, str, Sequence[str]]) -> tuple[str, ...]:
    if value is None:
        return ()
    items = [value] if isinstance(value, str) else list(value)
    for p in items:
        if not isinstance(p, str) or not p.strip():
            raise InputError(f"label {name!r}: prompts must be non-empty strings, got {p!r}")
        check_utf8(p, f"label {name!r}: prompt")
    return tuple(items)


def parse_labels(labels: LabelsArg) -> list[Label]:
    """Labels from a list of names / :class:`Label`, a mapping ``{name: [prompts] | None}``, or a
    single name. Raises InputError for no labels, blank or duplicate names."""
    if isinstance(labels, (str, Label)):
        labels = [labels]
    parsed: list[Label] = []
    if isinstance(labels, Mapping):
        for name, value in labels.items():
            parsed.append(Label(_name(name), _prompts(str(name), value)))
    else:
        try:
            items = list(labels)
        except TypeError:
            raise InputError(
                f"labels must be a list of names, Labels or a mapping, got {type(labels).__name__}"
            ) from None
        for item in items:
            if isinstance(item, Label):
                parsed.append(Label(_name(item.name), _prompts(item.name, item.prompts)))
            else:
                parsed.append(Label(_name(item)))
    if not parsed:
        raise InputError("no labels given: expected at least one class label")
    seen: set[str] = set()
    dupes = [lab.name for lab in parsed if lab.name in seen or seen.add(lab.name)]  # type: ignore[func-returns-value]
    if dupes:
        raise InputError(f"duplicate labels: {', '.join(repr(d) for d in dict.fromkeys(dupes))}")
    return parsed


def _name(value: object) -> str:
    if not isinstance(value, str):
        raise InputError(f"a label must be a string, got {type(value).__name__}: {value!r}")
    name = value.strip()
    if not name:
        raise InputError(f"blank label {value!r}: expected a class name")
    return check_utf8(name, "label")


def check_templates(templates: Union[str, Sequence[str]]) -> tuple[str, ...]:
    if isinstance(templates, str):
        templates = [templates]
    out = tuple(templates)
    if not out:
        raise InputError("no prompt templates given: expected at least one, e.g. 'a photo of a {}.'")
    for t in out:
        if not isinstance(t, str):
            raise InputError(f"a template must be a string, got {type(t).__name__}: {t!r}")
        if PLACEHOLDER not in t:
            raise InputError(f"template {t!r} has no {{}} placeholder for the label")
        check_utf8(t, "template")
    return out


def normalize(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    norm = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.maximum(norm, 1e-12)


def softmax(logits: np.ndarray) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return (e / e.sum(axis=-1, keepdims=True)).astype(np.float32)


def sigmoid(logits: np.ndarray) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64)
    return (0.5 * (1.0 + np.tanh(0.5 * z))).astype(np.float32)  # overflow-free logistic


SCORINGS = ("softmax", "sigmoid")


def check_scoring(scoring: str) -> str:
    if scoring not in SCORINGS:
        raise InputError(f"scoring must be one of {', '.join(SCORINGS)}, got {scoring!r}")
    return scoring


def scores_from_logits(logits: np.ndarray, scoring: str = "softmax") -> np.ndarray:
    """Softmax over the last axis, or an independent sigmoid per entry (see the module doc)."""
    return sigmoid(logits) if check_scoring(scoring) == "sigmoid" else softmax(logits)


def describe_scoring(scoring: str) -> str:
    """One line for people: what the scores are."""
    if scoring == "sigmoid":
        return (
            "sigmoid per label: sigmoid(logit_scale * cos + logit_bias), independent probabilities (need not sum to 1)"
        )
    return "softmax over the labels: logit_scale * cos, probabilities summing to 1"


def class_embeddings(
    labels: Sequence[Label], templates: Sequence[str], encode_text: Callable[[list[str]], np.ndarray]
) -> np.ndarray:
    """(C, D): per class, the renormalised mean of its normalised prompt embeddings. All
    prompts go through *encode_text* in one call (it batches and caches)."""
    per_label = [lab.texts(templates) for lab in labels]
    flat = [t for texts in per_label for t in texts]
    embs = normalize(encode_text(flat))
    if embs.shape[0] != len(flat):
        raise ValueError(f"encode_text returned {embs.shape[0]} embeddings for {len(flat)} prompts")
    out = np.empty((len(labels), embs.shape[1]), dtype=np.float32)
    start = 0
    for i, texts in enumerate(per_label):
        out[i] = embs[start : start + len(texts)].mean(axis=0)
        start += len(texts)
    return normalize(out)


class ZeroShotClassifier:
    """Precomputed class embeddings; classifies image embeddings."""

    def __init__(
        self,
        labels: Sequence[Label],
        embeddings: np.ndarray,
        logit_scale: float,
        logit_bias: Optional[float] = None,
        templates: Sequence[str] = (),
        scoring: str = "softmax",
    ) -> None:
        if embeddings.shape[0] != len(labels):
            raise ValueError(f"{embeddings.shape[0]} class embeddings for {len(labels)} labels")
        self.labels = list(labels)
        self.names = [lab.name for lab in self.labels]
        self.templates = tuple(templates)
        self.embeddings = normalize(embeddings)
        self.logit_scale = float(logit_scale)
        self.logit_bias = logit_bias
        self.scoring = check_scoring(scoring)

    def logits(self, image_embeddings: np.ndarray) -> np.ndarray:
        """(N, C): ``logit_scale * cos (+ logit_bias)``."""
        img = np.asarray(image_embeddings, dtype=np.float32)
        if img.ndim == 1:
            img = img[None, :]
        if img.ndim != 2 or img.shape[1] != self.embeddings.shape[1]:
            raise InputError(f"image embeddings must have shape (N, {self.embeddings.shape[1]}), got {img.shape}")
        out = self.logit_scale * (normalize(img) @ self.embeddings.T)
        if self.logit_bias is not None:
            out = out + np.float32(self.logit_bias)
        return out

    def probabilities(self, image_embeddings: np.ndarray) -> np.ndarray:
        """(N, C): softmax over the classes (CLIP), or each class's sigmoid (SigLIP); see
        :attr:`scoring`."""
        return scores_from_logits(self.logits(image_embeddings), self.scoring)

    def classify_embeddings(self, image_embeddings: np.ndarray, top_k: int = 5) -> list[Classification]:
        return classifications(self.probabilities(image_embeddings), self.names, top_k)


class EmbeddingClassifier(Protocol):
    """What classifies image embeddings: a :class:`ZeroShotClassifier`, or a fitted head
    (:class:`clip_rt.adapt.Head`)."""

    @property
    def names(self) -> list[str]: ...

    @property
    def templates(self) -> tuple[str, ...]: ...

    @property
    def scoring(self) -> str: ...

    def probabilities(self, image_embeddings: np.ndarray) -> np.ndarray: ...

    def classify_embeddings(self, image_embeddings: np.ndarray, top_k: int = 5) -> list[Classification]: ...


def classifications(probs: np.ndarray, names: Sequence[str], top_k: int) -> list[Classification]:
    """One :class:`Classification` per row of *probs* (N, C) over *names*."""
    if isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)) or top_k < 1:
        raise InputError(f"top_k must be a positive integer, got {top_k!r}")
    k = min(int(top_k), len(names))
    results = []
    for row in probs:
        order = np.argsort(-row, kind="stable")[:k]  # ties keep label order
        scores = {name: float(p) for name, p in zip(names, row)}
        top = [(names[j], float(row[j])) for j in order]
        results.append(Classification(label=top[0][0], score=top[0][1], scores=scores, top_k=top))
    return results
