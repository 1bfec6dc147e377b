"""The ``clip-rt`` command line. Exit codes: 0 ok, 1 domain error (or, for classify, a file
that could not be read), 2 usage error."""
from __future__ import annotations

from typing import Any

import click

from ..errors import ClipRtError


class ClipRtGroup(click.Group):
    """Turns clip-rt's domain errors into a one-line message and exit code 1, warnings into one line."""

    def invoke(self, ctx: click.Context) -> Any:
        from .common import warnings_as_lines

        try:
            with warnings_as_lines():  # every command: a warning is one `warning: ...` line
                return super().invoke(ctx)
        except ClipRtError as exc:
            raise click.ClickException(str(exc)) from exc


@click.group(cls=ClipRtGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="clip-rt")
def main() -> None:
    """clip-rt: fast, torch-free CLIP inference (ONNX Runtime)."""


# Each command lives in its own module and registers itself on `main`.
from . import bundle_cmds  # noqa: E402,F401  export, info, models
from . import classify_cmd  # noqa: E402,F401
from . import index_cmd  # noqa: E402,F401
from . import video_cmd  # noqa: E402,F401
from . import similarity_cmd  # noqa: E402,F401
from . import serve_cmd  # noqa: E402,F401  (starlette/uvicorn imported only when it runs)
from . import ray_cmd  # noqa: E402,F401  ray embed, ray classify (Ray imported only when they run)
from . import eval_cmd  # noqa: E402,F401  eval: zero-shot and heads measured on labelled images
from . import fit_cmd  # noqa: E402,F401  fit: a few-shot head (clip_rt.adapt)
