"""clip-rt: torch-free CLIP inference on ONNX Runtime.

>>> import clip_rt
>>> model = clip_rt.load("ViT-B-32-openai")
>>> model.classify(["cat.jpg"], labels=["cat", "dog"], templates=clip_rt.templates.SIMPLE)

Importing this package is cheap: onnxruntime is imported when a model is loaded.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from . import templates
from .errors import (
    BundleError,
    ChecksumError,
    ClipRtError,
    ImageLoadError,
    InputError,
    ModelNotFoundError,
    OutputError,
    ProviderError,
)

__version__ = "0.1.0"

__all__ = [
    "load",
    "ClipModel",
    "write_report",
    "plot_similarity",
    "templates",
    "ClipRtError",
    "BundleError",
    "ChecksumError",
    "ImageLoadError",
    "InputError",
    "ModelNotFoundError",
    "OutputError",
    "ProviderError",
    "__version__",
]

if TYPE_CHECKING:
    from .model import ClipModel, load
    from .outputs.charts import plot_similarity
    from .outputs.report import write_report


def __dir__() -> list[str]:
    # The lazy names are attributes too: dir(clip_rt) and tab completion list them.
    return sorted(set(globals()) | set(__all__))


def __getattr__(name: str) -> Any:
    # Lazy so that `import clip_rt` does not pay for onnxruntime.
    if name in ("load", "ClipModel"):
        from . import model

        return getattr(model, name)
    if name == "write_report":  # numpy at import, matplotlib when called (the [report] extra)
        from .outputs.report import write_report

        return write_report
    if name == "plot_similarity":
        from .outputs.charts import plot_similarity

        return plot_similarity
    raise AttributeError(f"module 'clip_rt' has no attribute {name!r}")
