"""What the libraries the export drives print that tells a user nothing: filtered for the
duration of an export, everything else left as it was.

Filtered (each by its exact message or category, never a whole logger):
- torch's "No CUDA runtime is found, using CUDA_HOME=..." (logged when nncf imports
  ``torch.utils.cpp_extension``; the export runs on the CPU and needs no CUDA),
- open_clip's "No pretrained weights loaded ... initialized randomly" (the export says "random
  weights" itself, and the manifest records it),
- onnxruntime.quantization's "Please consider to run pre-processing before quantization" (the
  export does its own graph preparation),
- torch's TracerWarning (the export traces on purpose, and the parity check catches a trace that
  went wrong).
Real problems (errors, other warnings) still reach the user.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

# logger name -> message prefixes dropped from it ("" is the root logger)
DROPPED_LOG_MESSAGES: dict[str, tuple[str, ...]] = {
    "torch.utils.cpp_extension": ("No CUDA runtime is found",),
    "": ("No pretrained weights loaded", "Please consider to run pre-processing before quantization"),
}


class _DropMessages(logging.Filter):
    def __init__(self, prefixes: tuple[str, ...]) -> None:
        super().__init__()
        self.prefixes = prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.prefixes)


@contextmanager
def library_noise_filtered() -> Iterator[None]:
    """Drop the messages above while the block runs (a logger's filters see the records logged
    on that logger, so each filter sits on the logger that emits its message)."""
    installed = []
    for name, prefixes in DROPPED_LOG_MESSAGES.items():
        logger = logging.getLogger(name or None)
        drop = _DropMessages(prefixes)
        logger.addFilter(drop)
        installed.append((logger, drop))
    try:
        with warnings.catch_warnings():
            _ignore_tracer_warnings()
            yield
    finally:
        for logger, drop in installed:
            logger.removeFilter(drop)


def _ignore_tracer_warnings() -> None:
    try:
        from torch.jit import TracerWarning  # type: ignore[attr-defined]
    except ImportError:  # no torch: nothing to filter (the export then stops with its own message)
        return
    warnings.filterwarnings("ignore", category=TracerWarning)
