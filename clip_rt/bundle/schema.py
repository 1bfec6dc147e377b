"""A small, declarative JSON validator for the bundle manifest (the schema itself is data, in
``manifest.py``, next to the dataclasses it fills).

A manifest comes from whoever made the bundle, so every value is checked for type *and*
bounds before the runtime uses it: no size, id or length can make it allocate hugely, no
NaN/infinity reaches arithmetic, ``true`` is not an integer, and a path is a plain relative
name. :func:`validate` returns a normalised copy (defaults filled in, unknown keys dropped,
lists turned into tuples where the spec says so, nested objects built into their dataclasses)
or raises :class:`SchemaError` naming the field: ``text.context_length: expected ...``.

Unknown keys are ignored: an optional field added by a newer clip-rt (same
``format_version``) must not stop an older one from loading the bundle. Changes an older
runtime must not ignore bump ``format_version`` instead.
"""

from __future__ import annotations

import math
import posixpath
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

_MISSING = object()
_SHOWN = 60  # characters of a bad value shown in a message


class SchemaError(ValueError):
    """A value does not match the schema; ``field`` is its dotted path (``image.size[0]``)."""

    def __init__(self, field_path: str, message: str) -> None:
        super().__init__(f"{field_path or '(top level)'}: {message}")
        self.field = field_path
        self.reason = message


def describe(value: Any) -> str:
    """A short, safe description of a JSON value for an error message."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        shown = value if len(value) <= _SHOWN else value[:_SHOWN] + "..."
        return f"{shown!r} (a string)"
    if isinstance(value, int):
        text = str(value) if value.bit_length() < 200 else f"an integer of {value.bit_length()} bits"
        return text
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return f"a list of {len(value)} item(s)"
    if isinstance(value, dict):
        return f"an object with {len(value)} key(s)"
    return type(value).__name__


def _join(path: str, key: str) -> str:
    if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
        return f"{path}.{key}" if path else key
    return f"{path}[{key!r}]"


class Spec:
    """One kind of value. ``check(value, path)`` returns the normalised value or raises."""

    def check(self, value: Any, path: str) -> Any:  # pragma: no cover - interface
        raise NotImplementedError


@dataclass(frozen=True)
class Int(Spec):
    lo: int
    hi: int

    def check(self, value: Any, path: str) -> Any:
        if type(value) is not int or not self.lo <= value <= self.hi:  # bool is not an int here
            raise SchemaError(path, f"expected an integer from {self.lo} to {self.hi}, got {describe(value)}")
        return value


@dataclass(frozen=True)
class Float(Spec):
    """A finite number (an integer is accepted) in ``[lo, hi]``, or ``(lo, hi]`` if *lo_open*."""

    lo: float
    hi: float
    lo_open: bool = False

    def check(self, value: Any, path: str) -> Any:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if ok:
            try:
                number = float(value)
            except OverflowError:  # an integer too large for a float
                ok = False
            else:
                ok = (
                    math.isfinite(number)
                    and (self.lo < number if self.lo_open else self.lo <= number)
                    and number <= self.hi
                )
        if not ok:
            low = f"above {self.lo:g}" if self.lo_open else f"from {self.lo:g}"
            raise SchemaError(path, f"expected a finite number {low} to {self.hi:g}, got {describe(value)}")
        return float(value)


@dataclass(frozen=True)
class Bool(Spec):
    def check(self, value: Any, path: str) -> Any:
        if not isinstance(value, bool):
            raise SchemaError(path, f"expected true or false, got {describe(value)}")
        return value


@dataclass(frozen=True)
class Str(Spec):
    max_len: int
    min_len: int = 0
    pattern: Optional[str] = None  # full match
    choices: Optional[tuple[str, ...]] = None
    what: str = "a string"

    def check(self, value: Any, path: str) -> Any:
        if not isinstance(value, str):
            raise SchemaError(path, f"expected {self.what}, got {describe(value)}")
        if self.choices is not None and value not in self.choices:
            raise SchemaError(path, f"expected one of {', '.join(self.choices)}, got {describe(value)}")
        if not self.min_len <= len(value) <= self.max_len:
            size = f"{self.max_len}" if self.min_len == self.max_len else f"{self.min_len} to {self.max_len}"
            raise SchemaError(path, f"expected {self.what} ({size} characters), got {len(value)} characters")
        if self.pattern is not None and not re.fullmatch(self.pattern, value):
            raise SchemaError(path, f"expected {self.what}, got {describe(value)}")
        return value


# A bundle file name: relative, '/' between folders, no '.' or '..' component, a conservative
# character set (no backslash, NUL, '*', spaces or control characters), bounded length.
_COMPONENT = r"[A-Za-z0-9_+-][A-Za-z0-9._+-]{0,254}"
PATH_WHAT = "a relative file name inside the bundle (letters, digits, '._+-', '/' between folders)"


@dataclass(frozen=True)
class RelPath(Spec):
    """A file name relative to the bundle directory that cannot leave it lexically (symbolic
    links are checked against the disk separately, see ``manifest.check_confined``)."""

    def check(self, value: Any, path: str) -> Any:
        if not isinstance(value, str):
            raise SchemaError(path, f"expected {PATH_WHAT}, got {describe(value)}")
        parts = value.split("/")
        ok = 0 < len(value) <= 1024 and len(parts) <= 16 and all(re.fullmatch(_COMPONENT, p) for p in parts)
        if not ok or posixpath.normpath(value) != value:
            raise SchemaError(path, f"expected {PATH_WHAT}, got {describe(value)}")
        return value


@dataclass(frozen=True)
class Nullable(Spec):
    inner: Spec

    def check(self, value: Any, path: str) -> Any:
        return None if value is None else self.inner.check(value, path)


@dataclass(frozen=True)
class ListOf(Spec):
    item: Spec
    max_len: int
    min_len: int = 0
    as_tuple: bool = False

    def check(self, value: Any, path: str) -> Any:
        if not isinstance(value, list):
            raise SchemaError(path, f"expected a list, got {describe(value)}")
        if not self.min_len <= len(value) <= self.max_len:
            count = f"{self.min_len}" if self.min_len == self.max_len else f"{self.min_len} to {self.max_len}"
            raise SchemaError(path, f"expected a list of {count} item(s), got {len(value)}")
        out = [self.item.check(v, f"{path}[{i}]") for i, v in enumerate(value)]
        return tuple(out) if self.as_tuple else out


@dataclass(frozen=True)
class MapOf(Spec):
    key: Spec
    value: Spec
    max_len: int
    min_len: int = 0

    def check(self, value: Any, path: str) -> Any:
        if not isinstance(value, dict):
            raise SchemaError(path, f"expected an object, got {describe(value)}")
        if not self.min_len <= len(value) <= self.max_len:
            raise SchemaError(path, f"expected an object with {self.min_len} to {self.max_len} keys, got {len(value)}")
        out = {}
        for k, v in value.items():
            self.key.check(k, _join(path, str(k)) + " (key)")
            out[k] = self.value.check(v, _join(path, k))
        return out


@dataclass(frozen=True)
class Field:
    spec: Spec
    default: Any = _MISSING  # _MISSING: required

    @property
    def required(self) -> bool:
        return self.default is _MISSING


def req(spec: Spec) -> Field:
    """A required field."""
    return Field(spec)


def opt(spec: Spec, default: Any = None) -> Field:
    """An optional field and the value it takes when absent (a list default is copied)."""
    return Field(spec, default)


@dataclass(frozen=True)
class Obj(Spec):
    """A JSON object with known fields; *build* (e.g. a dataclass) is called with them."""

    fields: Mapping[str, Field]
    build: Optional[Callable[..., Any]] = None
    checks: Sequence[Callable[[dict[str, Any], str], None]] = field(default_factory=tuple)

    def check(self, value: Any, path: str) -> Any:
        if not isinstance(value, dict):
            raise SchemaError(path, f"expected an object, got {describe(value)}")
        out: dict[str, Any] = {}
        for name, spec in self.fields.items():
            where = _join(path, name)
            if name in value:
                out[name] = spec.spec.check(value[name], where)
            elif spec.required:
                raise SchemaError(where, "required field is missing")
            else:
                default = spec.default
                out[name] = (
                    list(default)
                    if isinstance(default, list)
                    else (dict(default) if isinstance(default, dict) else default)
                )
        for rule in self.checks:
            rule(out, path)
        return self.build(**out) if self.build is not None else out


def validate(spec: Spec, value: Any) -> Any:
    return spec.check(value, "")
