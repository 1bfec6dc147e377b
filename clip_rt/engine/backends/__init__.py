"""Backends: what runs an encoder's graph (onnxruntime, OpenVINO), and the per-CPU choice.

- ``base.py``: the contract (``run`` one batch, ``submit`` to a throughput queue, ``describe``);
- ``ort.py``: onnxruntime (the project's OrtSession; also the GPU path);
- ``openvino.py``: OpenVINO's CPU plugin (optional extra, imported on first use);
- ``choose.py`` + ``choices.json``: which backend/precision/mode per encoder, from measurements;
- ``evidence.py``: parity evidence for modes without a graph of their own (bf16 hint).

Nothing here imports onnxruntime or openvino at import time.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Optional

from .base import Backend, Pending
from .choose import (
    BACKENDS,
    EncoderChoice,
    RuntimePlan,
    installed_backends,
    normalise_backend,
    parse_precision,
    plan_runtime,
)

__all__ = [
    "BACKENDS",
    "Backend",
    "EncoderChoice",
    "Pending",
    "RuntimePlan",
    "installed_backends",
    "normalise_backend",
    "open_backend",
    "parse_precision",
    "plan_runtime",
]


def open_backend(
    choice: EncoderChoice,
    path: Path,
    *,
    native_bf16: bool,
    providers: Optional[Sequence[str]] = None,
    threads: Optional[int] = None,
    session_options: Any = None,
    allow_fallback: bool = False,
    provider_options: Optional[Mapping[str, Mapping[str, Any]]] = None,
    streams: Optional[int] = None,
    cache_dir: Optional[Path] = None,
    first: str = "latency",
) -> Backend:
    """The backend *choice* names, on the graph at *path*. *first*: the mode a backend with
    several (OpenVINO: latency, throughput) compiles at creation; the other on first use."""
    if choice.backend == "openvino":
        from .openvino import OpenVinoBackend

        compute = "bf16" if choice.compute == "bf16" else "f32"
        return OpenVinoBackend(
            path,
            compute=compute,
            threads=threads,
            streams=streams,
            native_bf16=native_bf16,
            cache_dir=cache_dir,
            first=first,
        )
    from .ort import OrtBackend

    return OrtBackend(
        path,
        providers,
        intra_op_threads=threads,
        session_options=session_options,
        allow_fallback=allow_fallback,
        options=provider_options,
    )
