"""User settings: the default model, set once instead of on every command.

Precedence, first found wins: an explicit ``--model`` / ``load(name)``, then the
``CLIP_RT_MODEL`` environment variable, then ``model = "..."`` in ``$CLIP_RT_HOME/config.toml``,
then the built-in default. The config file is TOML (``tomllib`` on Python 3.11+, the ``tomli``
backport, a dependency on 3.9/3.10, before that) and is read only when a default is needed.
"""

from __future__ import annotations

import os
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from .errors import InputError

BUILTIN_MODEL = "ViT-B-32-openai"
MODEL_ENV = "CLIP_RT_MODEL"
CONFIG_NAME = "config.toml"
# Every key the config file may hold, with what it means (unknown keys get a warning: a typo
# such as `modle = ...` must not be ignored silently).
CONFIG_KEYS = {"model": "the default model: a bundle name in the store, an alias, or a bundle directory"}


@dataclass(frozen=True)
class Setting:
    """A value and where it came from (``--model``, ``CLIP_RT_MODEL``, a config file path, or
    ``built-in default``)."""

    value: str
    source: str

    def describe(self) -> str:
        return f"{self.value} (from {self.source})"


def config_path() -> Path:
    from .bundle.store import home

    return home() / CONFIG_NAME


def read_config(path: Optional[Path] = None) -> dict[str, Any]:
    """The settings in the config file (``{}`` when there is none). A file that is not valid
    TOML, or a known key with a wrong value, is an InputError naming the file."""
    from .inputs.bounded import CONFIG_MAX_BYTES, read_limited

    path = config_path() if path is None else Path(path)
    try:  # a regular file of at most 1 MB (a FIFO or a device there would hang or fill memory)
        raw = read_limited(
            path,
            what=f"the clip-rt config file {path}",
            limit=CONFIG_MAX_BYTES,
            hint="a config file holds a few settings",
        )
    except FileNotFoundError:
        return {}
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - exercised on Python 3.9/3.10 only
        import tomli as tomllib
    try:
        data = tomllib.loads(raw.decode("utf-8-sig"))
    except UnicodeDecodeError as exc:
        raise InputError(f'{path}: not UTF-8 text ({exc}); expected TOML such as: model = "ViT-B-32-openai"') from exc
    except tomllib.TOMLDecodeError as exc:
        raise InputError(f'{path}: not valid TOML ({exc}); expected lines such as: model = "ViT-B-32-openai"') from exc
    unknown = sorted(set(data) - set(CONFIG_KEYS))
    if unknown:
        warnings.warn(
            f"{path}: unknown setting(s) {', '.join(unknown)} ignored; known: {', '.join(CONFIG_KEYS)}",
            UserWarning,
            stacklevel=2,
        )
    model = data.get("model")
    if model is not None and (not isinstance(model, str) or not model.strip()):
        raise InputError(f'{path}: `model` must be a non-empty string such as "ViT-B-32-openai", got {model!r}')
    return {k: v for k, v in data.items() if k in CONFIG_KEYS}


def default_model(explicit: Optional[str] = None, explicit_source: str = "--model") -> Setting:
    """The model to use and where that choice came from: *explicit* (a flag or argument), then
    ``$CLIP_RT_MODEL``, then ``model`` in the config file, then :data:`BUILTIN_MODEL`."""
    if explicit:
        return Setting(os.fspath(explicit), explicit_source)
    env = os.environ.get(MODEL_ENV, "").strip()
    if env:
        return Setting(env, MODEL_ENV)
    path = config_path()
    configured = read_config(path).get("model")
    if configured:
        return Setting(configured.strip(), str(path))
    return Setting(BUILTIN_MODEL, "built-in default")
