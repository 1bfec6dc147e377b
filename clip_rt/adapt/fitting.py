"""Fitting a head on a labelled set: ``clip-rt fit`` and :func:`clip_rt.adapt.fit`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Callable, Optional, Union

import numpy as np

from .. import templates as _templates
from ..errors import InputError
from ..zeroshot import check_templates
from .embed import EmbeddedSet, SetArg, as_labelled_set, embed_set
from .head import CrossValidated, Head, HeadModel, Training, image_precision
from .probe import (
    BLEND_GRID,
    C_GRID,
    DEFAULT_FOLDS,
    check_trainable,
    cross_validate,
    fit_final,
    normalise,
    zero_shot_probabilities,
)


@dataclass
class FitResult:
    """The fitted :attr:`head` and the embedded set it was fitted on (its ``failed`` images
    and ``notes``)."""

    head: Head
    embedded: EmbeddedSet

    @property
    def failed(self) -> list[tuple[str, str]]:
        return self.embedded.failed


def fit(
    model: Any,
    source: SetArg,
    *,
    templates: Union[str, Sequence[str]] = _templates.SIMPLE,
    label_prompts: Optional[Mapping[str, Sequence[str]]] = None,
    folds: int = DEFAULT_FOLDS,
    seed: int = 0,
    blend: bool = True,
    batch_size: Optional[int] = None,
    progress: Optional[Callable[[int], None]] = None,
) -> FitResult:
    """Fit a head for *model* on the labelled set *source* (a folder of class folders, a
    ``path,label`` CSV, or a :class:`~clip_rt.adapt.dataset.LabelledSet`).

    *templates* make the zero-shot part (*label_prompts*: a label's own prompts instead);
    *folds*: stratified cross-validation folds (fewer when a class has fewer images; at least
    2 images per class are needed); *seed* shuffles the folds; *blend*: choose the blend with
    zero-shot by cross-validation (False: the probe alone). Unreadable images are left out and
    listed in ``result.failed``."""
    dataset = as_labelled_set(source)
    temps = check_templates(templates)
    prompts = {k: list(v) for k, v in (label_prompts or {}).items()}
    unknown = sorted(set(prompts) - set(dataset.labels))
    if unknown:
        raise InputError(f"label_prompts name label(s) the set does not have: {unknown[:5]}")
    # The text encoder runs first: bad templates or a damaged text graph fail before the images.
    spec = {lab: prompts.get(lab) for lab in dataset.labels}
    classifier = model.classifier(spec, temps)
    class_embeddings = np.asarray(classifier.embeddings, dtype=np.float32)
    if getattr(model, "release", None) is not None:
        model.release("text")
    folds_used = check_trainable(dataset.counts(), folds)  # before the images: a class of 1 image fails now
    embedded = embed_set(model, dataset, batch_size=batch_size, progress=progress)
    counts = embedded.counts()
    folds_used = check_trainable(counts, folds)  # again: unreadable images may have left a class too small
    return FitResult(
        fit_embedded(
            embedded,
            class_embeddings,
            float(model.logit_scale),
            model=model,
            templates=temps,
            label_prompts=prompts,
            folds=folds_used,
            seed=seed,
            blend=blend,
        ),
        embedded,
    )


def fit_embedded(
    embedded: EmbeddedSet,
    class_embeddings: np.ndarray,
    logit_scale: float,
    *,
    model: Any,
    templates: Sequence[str],
    label_prompts: Mapping[str, Sequence[str]],
    folds: int,
    seed: int,
    blend: bool = True,
    c_grid: Sequence[float] = C_GRID,
) -> Head:
    """The head for already computed embeddings (*folds* already checked)."""
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise InputError(f"seed must be a non-negative integer, got {seed!r}")
    x = normalise(embedded.embeddings)
    y = embedded.truth
    n_classes = len(embedded.labels)
    zero_shot = zero_shot_probabilities(x, class_embeddings, logit_scale)
    blend_grid = BLEND_GRID if blend else (1.0,)
    cv = cross_validate(x, y, zero_shot, n_classes, folds=folds, seed=seed, c_grid=c_grid, blend_grid=blend_grid)
    final = fit_final(x, y, n_classes, cv.chosen.c)
    manifest = model.manifest
    from ..version import __version__

    return Head(
        labels=tuple(embedded.labels),
        weight=final.weight,
        bias=final.bias,
        zero_shot=class_embeddings,
        logit_scale=logit_scale,
        blend=cv.chosen.blend,
        templates=tuple(templates),
        model=HeadModel(manifest.name, manifest.fingerprint, image_precision(model), int(class_embeddings.shape[1])),
        training=Training(
            len(y),
            embedded.counts(),
            len(embedded.failed),
            folds,
            seed,
            cv.chosen.c,
            [float(c) for c in c_grid],
            [float(b) for b in blend_grid],
        ),
        cv=CrossValidated(
            cv.zero_shot_accuracy,
            cv.best_probe.accuracy,
            cv.chosen.accuracy,
            len(y),
            folds,
            int((cv.head_correct & ~cv.zero_shot_correct).sum()),
            int((cv.zero_shot_correct & ~cv.head_correct).sum()),
        ),
        label_prompts={k: tuple(v) for k, v in label_prompts.items() if v},
        clip_rt_version=__version__,
    )
