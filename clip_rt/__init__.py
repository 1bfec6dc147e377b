"""clip-rt: torch-free CLIP inference on ONNX Runtime.

>>> import clip_rt
>>> model = clip_rt.load("ViT-B-32-openai")
>>> model.classify(["cat.jpg"], labels=["cat", "dog"], templates=clip_rt.templates.SIMPLE)

Importing this package is cheap: onnxruntime is imported when a model is loaded.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

# onnxruntime 1.29+ (POSIX builds from PyPI) collects telemetry by default: at import it writes
# a device id under $XDG_CACHE_HOME/Microsoft/DeveloperTools and queues events for upload, and on
# a read-only home it prints a warning to stderr. An offline runtime opts out unless the user
# has set the variable (ORT_DISABLE_TELEMETRY=0 keeps onnxruntime's default). It must be set
# before onnxruntime is imported, which clip_rt does only when a model loads.
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")

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
from .version import __version__

__all__ = [
    "load",
    "ClipModel",
    "Head",
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
    from .adapt.head import Head
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
    if name == "Head":  # a fitted few-shot head (clip_rt.adapt; numpy only)
        from .adapt.head import Head

        return Head
    if name == "write_report":  # numpy at import, matplotlib when called (the [report] extra)
        from .outputs.report import write_report

        return write_report
    if name == "plot_similarity":
        from .outputs.charts import plot_similarity

        return plot_similarity
    raise AttributeError(f"module 'clip_rt' has no attribute {name!r}")
