"""The ``clip-rt`` group the commands register on (apart from ``__init__``, which imports them all)."""

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
