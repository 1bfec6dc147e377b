"""The ``clip-rt`` command line. Exit codes: 0 ok, 1 domain error (or, for classify, a file
that could not be read), 2 usage error."""
from __future__ import annotations

from .group import ClipRtGroup, main

# Each command lives in its own module and registers itself on `main`.
from . import bundle_cmds  # noqa: F401  export, info, models
from . import classify_cmd  # noqa: F401
from . import index_cmd  # noqa: F401
from . import video_cmd  # noqa: F401
from . import similarity_cmd  # noqa: F401
from . import serve_cmd  # noqa: F401  (starlette/uvicorn imported only when it runs)
from . import ray_cmd  # noqa: F401  ray embed, ray classify (Ray imported only when they run)
from . import eval_cmd  # noqa: F401  eval: zero-shot and heads measured on labelled images
from . import fit_cmd  # noqa: F401  fit: a few-shot head (clip_rt.adapt)

__all__ = ["ClipRtGroup", "main"]
