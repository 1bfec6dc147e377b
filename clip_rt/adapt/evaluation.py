"""Evaluating zero-shot template sets and a fitted head on a labelled set: ``clip-rt eval`` and
:func:`clip_rt.adapt.evaluate`. The images are embedded once; every classifier ("run") is
scored on the same embeddings, so their figures compare image for image."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import numpy as np

from .. import templates as _templates
from ..display import display_path, display_width, pad, printable
from ..errors import InputError
from ..zeroshot import check_templates
from .embed import EmbeddedSet, SetArg, as_labelled_set, embed_set
from .head import Head, HeadArg, as_head, head_for_model
from .metrics import Comparison, Scores, compare, score

HEAD_RUN = "head"
HEAD_ZERO_SHOT_RUN = "zero-shot:head"


@dataclass(frozen=True)
class TemplateSet:
    """A named set of prompt templates, evaluated as one zero-shot run (``zero-shot:NAME``)."""

    name: str
    templates: tuple[str, ...]


def builtin_sets(names: Sequence[str]) -> list[TemplateSet]:
    return [TemplateSet(n.lower(), _templates.by_name(n)) for n in names]


@dataclass
class Evaluation:
    """Every run's :class:`~clip_rt.adapt.metrics.Scores` on one labelled set; the first run is
    the primary one (the head when there is one). *comparison*: the head against its own
    zero-shot part, image for image (None without a head)."""

    source: str
    labels: list[str]
    embedded: EmbeddedSet
    runs: list[Scores]
    comparison: Optional[Comparison]
    model: dict[str, Any]
    head: Optional[dict[str, Any]] = None
    notes: list[str] = field(default_factory=list)

    @property
    def primary(self) -> Scores:
        return self.runs[0]

    @property
    def failed(self) -> list[tuple[str, str]]:
        return self.embedded.failed

    def advice(self) -> str:
        """One line: what the figures mean for the choice between zero-shot and a head."""
        n = len(self.embedded.paths)
        if self.comparison is not None:
            return self.comparison.advice()
        zero = [r for r in self.runs if r.name.startswith("zero-shot:")]
        best = max(zero, key=lambda r: r.accuracy)
        others = ", ".join(f"{r.name.split(':', 1)[1]} {r.accuracy:.2f}" for r in zero if r is not best)
        return (
            f"zero-shot {best.accuracy:.2f} ({best.name.split(':', 1)[1]} templates"
            f"{'; ' + others if others else ''}) on {n} images: to see whether a head does better, fit one "
            "(`clip-rt fit`) and evaluate it here with --head on images it was not fitted on"
        )

    def to_json(self) -> dict[str, Any]:
        p = self.primary
        e = self.embedded
        names = [r.name for r in self.runs]
        predictions = [
            {
                "path": path,
                "label": self.labels[int(t)],
                "predicted": {name: self.labels[int(r.predicted[i])] for name, r in zip(names, self.runs)},
            }
            for i, (path, t) in enumerate(zip(e.paths, e.truth))
        ]
        return {
            "accuracy": p.accuracy,
            "labels": list(p.labels),
            "confusion": p.confusion.astype(int).tolist(),
            "top_k": p.top_k,
            "top_k_accuracy": p.top_k_accuracy,
            "run": p.name,
            "images": p.images,
            "classes": e.counts(),
            "source": self.source,
            "model": self.model,
            "head": self.head,
            "runs": [r.to_json() for r in self.runs],
            "comparison": self.comparison.to_json() if self.comparison else None,
            "advice": self.advice(),
            "failed": [{"path": path, "error": reason} for path, reason in e.failed],
            "notes": list(self.notes),
            "predictions": predictions,
        }

    def lines(self) -> list[str]:
        """The text report ``clip-rt eval`` prints."""
        e, p = self.embedded, self.primary
        counts = ", ".join(f"{printable(lab)} {n}" for lab, n in e.counts().items())
        out = [
            f"{len(e.paths)} images in {len(self.labels)} classes ({counts})"
            + (f"; {len(e.failed)} could not be read" if e.failed else "")
        ]
        width = max(display_width(r.name) for r in self.runs) + 2
        out.append(f"{pad('run', width)}top-1   top-{p.top_k}")
        for r in self.runs:
            out.append(f"{pad(r.name, width)}{r.accuracy:.3f}   {r.top_k_accuracy:.3f}")
        shown = {lab: printable(lab) for lab in self.labels}
        lw = max([display_width(v) for v in shown.values()] + [5]) + 2
        for r in self.runs:
            out += ["", f"{r.name}: per class"]
            out.append(f"{pad('class', lw)}precision  recall  images  predicted")
            for c in r.per_class():
                prec = "-" if c.precision is None else f"{c.precision:.3f}"
                rec = "-" if c.recall is None else f"{c.recall:.3f}"
                out.append(f"{pad(shown[c.label], lw)}{prec:>9}  {rec:>6}  {c.support:>6}  {c.predicted:>9}")
            pairs = r.confused_pairs(5)
            if pairs:
                out.append(
                    "most confused (true -> predicted): "
                    + ", ".join(f"{shown[t]} -> {shown[q]} {n}" for t, q, n in pairs)
                )
            else:
                out.append("most confused: none (no mistakes)")
        out += ["", self.advice()]
        return out


Run = tuple[str, Callable[[np.ndarray], np.ndarray]]


def evaluate(
    model: Any,
    source: SetArg,
    *,
    head: Optional[HeadArg] = None,
    template_sets: Optional[Sequence[TemplateSet]] = None,
    batch_size: Optional[int] = None,
    progress: Optional[Callable[[int], None]] = None,
) -> Evaluation:
    """Score zero-shot classification with each of *template_sets* (default: the built-in
    ``simple`` set, or none when a head is given) and, with *head*, the head and its own
    zero-shot part, on the labelled set *source*. With a head, the classes are the head's and
    every class of the set must be one of them. Unreadable images are left out and listed in
    ``result.failed``."""
    dataset = as_labelled_set(source)
    found = as_head(head) if head is not None else None
    labels = list(found.labels) if found is not None else list(dataset.labels)
    if found is not None:
        extra = [lab for lab in dataset.labels if lab not in found.labels]
        if extra:
            raise InputError(
                f"class(es) {', '.join(map(repr, extra[:5]))} of {display_path(dataset.source)!r} are "
                f"not among the head's labels {list(found.labels)}; a head only predicts its own labels"
            )
        head_for_model(model, found)  # another bundle: refused before any image is read
    sets = list(template_sets) if template_sets is not None else ([] if found else builtin_sets(["simple"]))
    names = [f"zero-shot:{t.name}" for t in sets]
    if len(set(names)) != len(names):
        raise InputError(f"template sets must have different names, got {[t.name for t in sets]}")
    runs: list[Run] = []
    if found is not None:
        runs += [(HEAD_RUN, found.probabilities), (HEAD_ZERO_SHOT_RUN, found.zero_shot_probabilities)]
    for t, name in zip(sets, names):
        clf = model.classifier(labels, check_templates(t.templates))  # text first: bad templates fail now
        runs.append((name, clf.probabilities))
    if not runs:
        raise InputError("nothing to evaluate: give template sets, a head, or both")
    if sets and getattr(model, "release", None) is not None:
        model.release("text")
    embedded = embed_set(model, dataset, labels=labels, batch_size=batch_size, progress=progress)
    if not embedded.paths:
        raise InputError(
            f"no image of {display_path(dataset.source)!r} could be read "
            f"({len(embedded.failed)} failed); nothing to evaluate"
        )
    scores = [score(name, labels, fn(embedded.embeddings), embedded.truth) for name, fn in runs]
    comparison = None
    if found is not None:
        comparison = compare(scores[1].correct, scores[0].correct, f"{len(embedded.paths)} images", found.blend)
    manifest = model.manifest
    ident = {"name": manifest.name, "fingerprint": manifest.fingerprint, "precision": str(model.precision)}
    head_info = _head_info(found) if found is not None else None
    return Evaluation(dataset.source, labels, embedded, scores, comparison, ident, head_info, list(embedded.notes))


def _head_info(head: Head) -> dict[str, Any]:
    return {
        "digest": head.digest,
        "blend": head.blend,
        "templates": list(head.templates),
        "fitted_on": {"images": head.training.images, "precision": head.model.precision},
        "cross_validation": {
            "zero_shot_accuracy": head.cv.zero_shot_accuracy,
            "head_accuracy": head.cv.head_accuracy,
            "folds": head.cv.folds,
        },
    }
