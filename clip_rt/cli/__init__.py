"""The ``clip-rt`` command line. Exit codes: 0 ok, 1 domain error (or, for classify, a file
that could not be read), 2 usage error."""

from __future__ import annotations

# Each command lives in its own module and registers itself on `main`.
from . import (
    bundle_cmds,  # noqa: F401  export, info, models
    classify_cmd,  # noqa: F401
    eval_cmd,  # noqa: F401  eval: zero-shot and heads measured on labelled images
    fit_cmd,  # noqa: F401  fit: a few-shot head (clip_rt.adapt)
    index_cmd,  # noqa: F401
    ray_cmd,  # noqa: F401  ray embed, ray classify (Ray imported only when they run)
    serve_cmd,  # noqa: F401  (starlette/uvicorn imported only when it runs)
    similarity_cmd,  # noqa: F401
    video_cmd,  # noqa: F401
)
from .group import ClipRtGroup, main

__all__ = ["ClipRtGroup", "main"]
