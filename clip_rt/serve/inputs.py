"""Request bodies: reading with a size limit, JSON, field validation, and image references.

Every failure is an :class:`ApiError` whose message says what was expected and what was
given, naming the field (``param``) as a JSON path such as ``input[3]``.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import io
import json
import os
import re
import stat
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any, Optional

from .errors import ApiError, bad_request, describe

JSON_TYPES = ("application/json",)
# data:[<mediatype>][;param=value]*;base64,<data>
_DATA_URL = re.compile(r"^data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?:;[\w.+-]+=[^;,]*)*(?P<b64>;base64)?,", re.IGNORECASE)


# -- body ------------------------------------------------------------------------------------------
class BodyBudget:
    """The request-body bytes the service holds at once, over every request (``--max-body-memory``):
    each request's :class:`BodyAccount` takes bytes as chunks arrive and gives them all back
    when the request ends. Event-loop only (no lock)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0

    def account(self) -> BodyAccount:
        return BodyAccount(self)


class BodyAccount:
    """One request's share of the :class:`BodyBudget`."""

    def __init__(self, budget: BodyBudget) -> None:
        self.budget, self.held = budget, 0

    def take(self, n: int) -> None:
        budget = self.budget
        if budget.used + n > budget.limit:
            raise ApiError(
                "overloaded",
                f"the service holds {budget.used} bytes of request bodies, its limit "
                f"(--max-body-memory {budget.limit}); retry shortly",
                headers={"Retry-After": "1"},
            )
        budget.used += n
        self.held += n

    def release(self) -> None:
        self.budget.used -= self.held
        self.held = 0


async def read_body(
    headers: dict[str, str],
    chunks: AsyncIterator[bytes],
    limit: int,
    *,
    timeout: Optional[float] = None,
    account: Optional[BodyAccount] = None,
) -> bytearray:
    """The whole body, refused with 413 as soon as it is known to pass *limit* bytes: from
    ``Content-Length`` before reading anything, else while the chunks arrive. With *timeout*,
    the whole body must arrive within that many seconds (408 otherwise: a client that sends a
    byte now and then cannot hold a request slot for long); with *account*, the bytes are
    taken from the service's body budget as they arrive (503 + Retry-After when it is full).
    With a ``Content-Length``, the body is read into one buffer of that size, taken from the
    budget up front: no copy is made as it grows (growing doubled the peak)."""
    declared = headers.get("content-length")
    size: Optional[int] = None
    if declared is not None:
        if not declared.isdigit():
            raise bad_request(f"Content-Length must be a number of bytes, got {declared!r}")
        size = int(declared)
        if size > limit:
            raise too_large(size, limit)
        if account is not None:
            account.take(size)
    loop = asyncio.get_running_loop()
    deadline = None if timeout is None else loop.time() + timeout
    if size:
        return await _read_sized(chunks, size, deadline, timeout)
    body = bytearray()  # chunked: grown as it comes, each chunk taken from the budget
    it = chunks.__aiter__()
    while True:
        chunk = await _next_chunk(it, deadline, timeout, len(body))
        if chunk is None:
            return body
        if len(body) + len(chunk) > limit:
            raise too_large(len(body) + len(chunk), limit, partial=True)
        if account is not None:
            account.take(len(chunk))
        body += chunk


async def _next_chunk(it: Any, deadline: Optional[float], timeout: Optional[float], received: int) -> Optional[bytes]:
    """The next chunk, None at the end; 408 past *deadline*."""
    try:
        if deadline is None:
            return await it.__anext__()
        remaining = max(0.0, deadline - asyncio.get_running_loop().time())
        return await asyncio.wait_for(it.__anext__(), remaining)
    except StopAsyncIteration:
        return None
    except asyncio.TimeoutError:
        raise ApiError(
            "request_timeout",
            f"the request body did not arrive within {timeout:g} s (--body-timeout; {received} bytes came)",
        ) from None


async def _read_sized(
    chunks: AsyncIterator[bytes], size: int, deadline: Optional[float], timeout: Optional[float]
) -> bytearray:
    """A body of a known *size* (its budget already taken), read into one buffer of that size."""
    body = bytearray(size)
    view = memoryview(body)
    it = chunks.__aiter__()
    pos = 0
    try:
        while True:
            chunk = await _next_chunk(it, deadline, timeout, pos)
            if chunk is None:
                break
            if pos + len(chunk) > size:  # the HTTP layer stops this; never write past the buffer
                raise bad_request(f"the request body is longer than its Content-Length ({size} bytes)")
            view[pos : pos + len(chunk)] = chunk
            pos += len(chunk)
    finally:
        view.release()  # a buffer with a view on it could not be emptied after decoding
    if pos < size:
        del body[pos:]
    return body


def too_large(size: int, limit: int, partial: bool = False) -> ApiError:
    got = f"more than {limit} bytes (stopped reading at {size})" if partial else f"{size} bytes"
    return ApiError(
        "payload_too_large",
        f"request body too large: the limit is {limit} bytes "
        f"(--max-body-bytes), got {got}; send fewer or smaller images per request",
    )


def check_content_type(value: Optional[str]) -> None:
    """JSON bodies only; a missing Content-Type is taken as JSON (some clients omit it)."""
    if not value:
        return
    mime = value.split(";", 1)[0].strip().lower()
    if mime in JSON_TYPES or mime.endswith("+json"):
        return
    hint = " (curl: add -H 'Content-Type: application/json')" if mime == "application/x-www-form-urlencoded" else ""
    raise ApiError("unsupported_media_type", f"expected Content-Type: application/json, got {value!r}{hint}")


def parse_json(body: bytes | bytearray, *, max_depth: int = 32, max_values: int = 100_000) -> Any:
    """UTF-8 JSON (no NaN/Infinity). The body must be an object. Its structure is checked on
    the raw bytes first (:func:`clip_rt.inputs.bounded.json_shape_problem`): more than
    *max_values* values is a 413, nesting deeper than *max_depth* a 400, so that what
    ``json.loads`` builds stays within a small multiple of the body (docs/reliability.md). A
    bytearray body is emptied once decoded to text: its bytes are not held while it is parsed."""
    from ..inputs.bounded import json_shape_problem

    if not body or body.isspace():  # (not body.strip(): that copies a 32 MB body to look at it)
        raise ApiError("invalid_json", "empty request body: expected a JSON object")
    problem = json_shape_problem(body, max_depth=max_depth, max_items=max_values)
    if problem is not None:
        what, why = problem
        raise ApiError(
            "invalid_json" if what == "depth" else "payload_too_large",
            f"request body refused before parsing: {why}; no request this service answers needs that "
            "many (the limit follows --max-items, --max-labels and --max-prompts)",
        )
    bom = 3 if body[:3] == b"\xef\xbb\xbf" else 0  # tolerated, and dropped while decoding (no copy)
    try:
        text = body.decode("utf-8-sig" if bom else "utf-8")
    except UnicodeDecodeError as exc:
        at = exc.start + bom
        raise ApiError(
            "invalid_json",
            f"request body is not valid UTF-8: byte 0x{body[at]:02x} at "
            f"position {at} ({exc.reason}); JSON must be UTF-8",
        ) from None
    if isinstance(body, bytearray):
        body.clear()  # the text is what is parsed: the raw bytes go now (peak: text + parsed, not 3 copies)

    def no_constants(name: str) -> Any:
        raise ValueError(f"{name} is not valid JSON")

    try:
        data = json.loads(text, parse_constant=no_constants)
    except (ValueError, RecursionError) as exc:
        raise ApiError("invalid_json", f"request body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ApiError("invalid_json", f"expected a JSON object, got {describe(data)}")
    return data


# -- fields ----------------------------------------------------------------------------------------
def check_fields(body: dict[str, Any], allowed: Sequence[str]) -> None:
    unknown = [k for k in body if k not in allowed]
    if unknown:
        raise bad_request(
            f"unknown field(s) {', '.join(map(repr, unknown))}; expected only {', '.join(allowed)}", param=unknown[0]
        )


def required(body: dict[str, Any], name: str) -> Any:
    if name not in body or body[name] is None:
        raise bad_request(f"missing field {name!r}", param=name)
    return body[name]


def optional_str(body: dict[str, Any], name: str) -> Optional[str]:
    value = body.get(name)
    if value is not None and not isinstance(value, str):
        raise bad_request(f"{name} must be a string, got {describe(value)}", param=name)
    return value


def positive_int(body: dict[str, Any], name: str, default: int, maximum: int) -> int:
    value = body.get(name, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise bad_request(f"{name} must be a positive integer, got {describe(value)}", param=name)
    if value > maximum:
        raise bad_request(f"{name} must be at most {maximum}, got {value}", param=name)
    return value


def text_value(value: Any, param: str, max_chars: int) -> str:
    if not isinstance(value, str):
        raise bad_request(f"{param} must be a string, got {describe(value)}", param=param)
    if not value.strip():
        raise bad_request(f"{param} is empty: expected a non-empty text", param=param)
    if len(value) > max_chars:
        raise bad_request(
            f"{param} has {len(value)} characters; the limit is {max_chars} (--max-text-chars; "
            "CLIP reads only the first 77 tokens anyway)",
            param=param,
        )
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:  # a lone surrogate escape such as "\ud800"
        raise bad_request(
            f"{param} is not valid Unicode: unpaired surrogate {value[exc.start]!r} at character {exc.start}",
            param=param,
        ) from None
    return value


def item_list(value: Any, param: str, max_items: int, what: str) -> list[Any]:
    """A non-empty JSON array of at most *max_items*."""
    if not isinstance(value, list):
        raise bad_request(f"{param} must be an array of {what}, got {describe(value)}", param=param)
    if not value:
        raise bad_request(f"{param} is empty: expected at least one of {what}", param=param)
    if len(value) > max_items:
        raise bad_request(
            f"{param} has {len(value)} items; the limit is {max_items} per request (--max-items)", param=param
        )
    return value


# -- images ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ImageRef:
    """An image named in a request: base64 data, or a file path (read only under --allow-dir)."""

    param: str
    data: Optional[str] = None  # base64 (a data URL's payload)
    path: Optional[str] = None


def is_image_data_url(text: str) -> bool:
    m = _DATA_URL.match(text[:256])
    if not m or not m.group("b64"):
        return False
    mime = (m.group("mime") or "").lower()
    return not mime or mime.startswith("image/") or mime == "application/octet-stream"


def image_ref(value: Any, param: str) -> ImageRef:
    """``"data:image/...;base64,..."``, a bare base64 string, ``{"image": <either>}`` or
    ``{"path": "file"}``."""
    if isinstance(value, dict):
        keys = set(value)
        if keys == {"image"}:
            return image_ref(value["image"], f"{param}.image")
        if keys == {"path"}:
            path = value["path"]
            if not isinstance(path, str) or not path:
                raise bad_request(f"{param}.path must be a non-empty string, got {describe(path)}", param=param)
            return ImageRef(param, path=path)
        raise bad_request(
            f'{param} must be an image: a base64 string, a data URL, {{"image": base64}} or '
            f'{{"path": file}}; got an object with keys {sorted(keys)}',
            param=param,
        )
    if not isinstance(value, str):
        raise bad_request(
            f"{param} must be an image as a base64 string or data URL, got {describe(value)}", param=param
        )
    if not value:
        raise bad_request(f"{param} is empty: expected base64 image data", param=param)
    lowered = value[:16].lower()
    if lowered.startswith(("http://", "https://", "file:", "ftp://")):
        raise bad_request(
            f"{param} is a URL ({value[:40]!r}); this service never fetches URLs: send the image "
            "as base64 or a data URL",
            param=param,
        )
    if lowered.startswith("data:"):
        m = _DATA_URL.match(value[:256])
        if not m or not m.group("b64"):
            raise bad_request(
                f"{param}: expected a base64 data URL such as 'data:image/png;base64,...', got {value[:40]!r}",
                param=param,
            )
        return ImageRef(param, data=value[m.end() :])
    return ImageRef(param, data=value)


def decode_base64(ref: ImageRef) -> bytes:
    assert ref.data is not None  # only called for data references
    text = ref.data
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        compact = "".join(text.split())  # wrapped at 76 columns, as `base64` writes it
        try:
            if "-" in compact or "_" in compact:
                data = base64.urlsafe_b64decode(compact + "=" * (-len(compact) % 4))
            else:
                data = base64.b64decode(compact + "=" * (-len(compact) % 4), validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ApiError(
                "invalid_image",
                f"{ref.param}: not valid base64 ({exc}); expected the image file's bytes in base64, or a data URL",
                param=ref.param,
            ) from None
    if not data:
        raise ApiError("invalid_image", f"{ref.param}: the base64 data decodes to 0 bytes", param=ref.param)
    return data


def read_allowed_file(ref: ImageRef, allowed: Sequence[str], max_bytes: int) -> bytes:
    """The bytes of ``ref.path`` if it lies (symbolic links resolved) inside one of the
    *allowed* folders (already resolved); else 403. Relative paths are taken from the first."""
    assert ref.path is not None  # only called for path references
    param = ref.param
    if not allowed:
        raise ApiError(
            "forbidden_path",
            f"{param}: this service reads no files named in requests (start it "
            "with --allow-dir DIR to allow one folder); send the image as base64 instead",
            param=param,
        )
    if "\0" in ref.path:
        raise bad_request(f"{param}.path contains a NUL character", param=param)
    candidate = ref.path if os.path.isabs(ref.path) else os.path.join(allowed[0], ref.path)
    real = os.path.realpath(candidate)
    if not _inside(real, allowed):
        raise ApiError(
            "forbidden_path",
            f"{param}: {ref.path!r} is outside the folder(s) this service may read (--allow-dir)",
            param=param,
        )
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(real, flags)
    except FileNotFoundError:
        raise ApiError("invalid_image", f"{param}: no such file {ref.path!r}", param=param) from None
    except OSError as exc:
        raise ApiError(
            "invalid_image", f"{param}: cannot open {ref.path!r}: {exc.strerror or exc}", param=param
        ) from None
    # The descriptor is closed on every path out (a folder opens fine, then os.fdopen refuses it
    # without closing it: one leaked descriptor per such request, until none were left).
    try:
        data = _read_checked(fd, ref, allowed, max_bytes)
    finally:
        os.close(fd)
    if len(data) > max_bytes:
        raise ApiError("payload_too_large", f"{param}: {ref.path!r} is over {max_bytes} bytes", param=param)
    if not data:
        raise ApiError("invalid_image", f"{param}: {ref.path!r} is empty (0 bytes)", param=param)
    return data


def _read_checked(fd: int, ref: ImageRef, allowed: Sequence[str], max_bytes: int) -> bytes:
    """What *fd* (opened for ``ref.path``) holds, once it is known to be a regular file inside
    the allowed folders and not over *max_bytes*."""
    param = ref.param
    # What was opened, not what the name pointed to a moment earlier (a swapped symlink).
    opened = _fd_path(fd)
    if opened is not None and not _inside(opened, allowed):
        raise ApiError(
            "forbidden_path",
            f"{param}: {ref.path!r} is outside the folder(s) this service may read (--allow-dir)",
            param=param,
        )
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        from ..inputs.bounded import file_kind

        raise ApiError(
            "invalid_image", f"{param}: {ref.path!r} is a {file_kind(info.st_mode)}, not an image file", param=param
        )
    if info.st_size > max_bytes:
        raise ApiError(
            "payload_too_large",
            f"{param}: {ref.path!r} has {info.st_size} bytes; the limit is {max_bytes} (--max-body-bytes)",
            param=param,
        )
    os.set_blocking(fd, True)
    parts: list[bytes] = []
    size = 0
    while size <= max_bytes:
        try:
            block = os.read(fd, min(1 << 20, max_bytes + 1 - size))
        except OSError as exc:  # an I/O error on the disk: this image's error, not the service's
            raise ApiError(
                "invalid_image", f"{param}: cannot read {ref.path!r}: {exc.strerror or exc}", param=param
            ) from None
        if not block:
            break
        parts.append(block)
        size += len(block)
    return b"".join(parts)


def image_stream(ref: ImageRef, allowed: Sequence[str], max_bytes: int) -> io.BytesIO:
    """The image's bytes as a file object: the loader never takes them for a file name."""
    data = decode_base64(ref) if ref.data is not None else read_allowed_file(ref, allowed, max_bytes)
    return io.BytesIO(data)


def _inside(path: str, folders: Sequence[str]) -> bool:
    for folder in folders:
        try:
            if os.path.commonpath([path, folder]) == folder:
                return True
        except ValueError:  # different drives (Windows)
            continue
    return False


def _fd_path(fd: int) -> Optional[str]:
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:  # no /proc (macOS): the realpath check above stands
        return None
