"""Zero-shot or adapted? Measuring zero-shot classification on the user's labelled images, and
fitting a few-shot head on them (numpy only, no torch): ``clip-rt eval`` and ``clip-rt fit``.

>>> import clip_rt
>>> from clip_rt import adapt
>>> model = clip_rt.load("ViT-B-32-openai")
>>> result = adapt.fit(model, "pets/")           # one subfolder per class
>>> result.head.save("pets.head"); print(result.head.advice())
>>> model.classify(["new.jpg"], head="pets.head")
>>> print("\\n".join(adapt.evaluate(model, "pets-test/", head="pets.head").lines()))

Modules: ``dataset`` (labelled sets: class folders or a ``path,label`` CSV), ``embed`` (their
embeddings, unreadable images reported), ``probe`` (the logistic-regression probe, its
optimiser and the cross-validation), ``head`` (the :class:`Head` and its file), ``fitting``,
``evaluation``, ``metrics`` (accuracy, confusion, the advice), ``report`` (``eval --report``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = [
    "Head",
    "HeadError",
    "fit",
    "evaluate",
    "read_labelled_set",
    "TemplateSet",
    "builtin_sets",
    "FitResult",
    "Evaluation",
]

if TYPE_CHECKING:
    from .dataset import read_labelled_set
    from .evaluation import Evaluation, TemplateSet, builtin_sets, evaluate
    from .fitting import FitResult, fit
    from .head import Head, HeadError

_WHERE = {
    "Head": "head",
    "HeadError": "head",
    "fit": "fitting",
    "FitResult": "fitting",
    "evaluate": "evaluation",
    "Evaluation": "evaluation",
    "TemplateSet": "evaluation",
    "builtin_sets": "evaluation",
    "read_labelled_set": "dataset",
}


def __getattr__(name: str) -> Any:
    # Lazy, as clip_rt's own names: importing the package costs nothing.
    if name in _WHERE:
        import importlib

        return getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
    raise AttributeError(f"module 'clip_rt.adapt' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
