"""Errors raised by clip-rt. Every one says what was expected and what was given."""

from __future__ import annotations


class ClipRtError(Exception):
    """Base class: a domain error (the CLI maps it to exit code 1)."""


class BundleError(ClipRtError):
    """A bundle is missing, incomplete, corrupt, or from an unsupported format version."""


class ModelNotFoundError(BundleError):
    """No bundle of that name in the store and no such directory."""


class ChecksumError(BundleError):
    """A bundle file does not match the sha256 recorded in its manifest."""


class ProviderError(ClipRtError):
    """An execution provider was asked for and is not available or did not come up."""


class ImageLoadError(ClipRtError):
    """An image could not be opened or decoded."""


def load_error(source: str, reason: str) -> ImageLoadError:
    """ImageLoadError("<source>: <reason>") with ``.source`` and ``.reason`` attributes."""
    err = ImageLoadError(f"{source}: {reason}")
    err.source = source  # type: ignore[attr-defined]
    err.reason = reason  # type: ignore[attr-defined]
    return err


class InputError(ClipRtError, ValueError):
    """Bad user input: labels, templates, texts, arguments."""


class OutputError(ClipRtError):
    """An output (file, folder, report, index) could not be written: full disk, no permission,
    a folder where a file should be. Raised before anything was truncated, or after the
    previous output was put back (the message says which)."""


class ExportError(ClipRtError):
    """The export stage failed (weights unavailable, parity check failed, ...)."""


class ParityError(ExportError):
    """An exported graph disagrees with the torch model beyond its tolerance."""
