"""Opening images: paths, bytes, file objects, PIL images and numpy arrays, with clear errors.

Every file is fully decoded here (``img.load()``) so that truncated or corrupt data fails
now, with the file's name, rather than later inside preprocessing. File handles are closed
before returning. Nothing is converted: the image keeps the mode it was stored in, because
open_clip resizes in that mode (see preprocess.py).
"""

from __future__ import annotations

import contextlib
import io
import os
import stat
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import IO, Any, Callable, Optional, TypeVar, Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..display import loader_label
from ..errors import ImageLoadError, InputError, load_error
from .budget import DecodeBudget, decode_budget, decoded_bytes

ImageSource = Union[str, "os.PathLike[str]", bytes, bytearray, memoryview, IO[bytes], Image.Image, np.ndarray]

# Called with the displayed (width, height); returns the smallest (width, height) the JPEG
# decoder may scale down to (PIL's Image.draft). See Preprocessor(draft=True).
DraftRule = Callable[[int, int], "tuple[int, int]"]
# Called with the opened (not yet decoded) image and its label, just before decoding: reserves the
# memory decoding will take (see opened()).
_Reserve = Optional[Callable[[Image.Image, str], None]]

EXIF_ORIENTATION = 0x0112
_SWAPS_AXES = (5, 6, 7, 8)  # orientations that rotate by 90 degrees
_PATH_MAX = 4096

# What PIL's decoders raise on corrupt data. The set is wide because each plugin has its own
# habits (SyntaxError for bad headers, struct.error / IndexError on short tables, TypeError
# "Missing dimensions" from a TIFF whose IFD is damaged, ZeroDivisionError on zero-sized
# tiles or resolutions, OverflowError on absurd sizes, AttributeError on a tag of the wrong
# type ...). MemoryError is deliberately absent: it is the process's problem, not the file's.
DECODE_ERRORS = (
    OSError,
    SyntaxError,
    ValueError,
    EOFError,
    struct.error,
    zlib.error,
    IndexError,
    KeyError,
    TypeError,
    ZeroDivisionError,
    OverflowError,
    AttributeError,
)


@dataclass
class LoadedImage:
    """An opened, fully decoded image, not yet converted or resized."""

    image: Image.Image  # in its stored mode (P, RGBA, I;16, CMYK ...), EXIF orientation applied
    width: int  # of the full image after EXIF orientation (before any draft reduction)
    height: int
    source: str  # printable label: the path (undecodable bytes as \\xNN), or "<bytes>" ...
    notes: list[str] = field(default_factory=list)
    format: Optional[str] = None  # PIL's format name for files and bytes ("JPEG", "PNG" ...)


def source_label(source: object) -> str:
    """The printable label :func:`open_image` uses for *source* in its error messages."""
    if isinstance(source, LoadedImage):
        return source.source
    if isinstance(source, Image.Image):
        return _pil_label(source)
    if isinstance(source, np.ndarray):
        return _array_label(source)
    if isinstance(source, bytes) and _looks_like_path(source):
        return loader_label(source)
    if isinstance(source, (bytes, bytearray, memoryview)):
        return "<bytes>"
    if isinstance(source, (str, os.PathLike)):
        return loader_label(source)
    if hasattr(source, "read"):
        name = getattr(source, "name", None)
        return loader_label(name) if isinstance(name, (str, bytes)) else "<file object>"
    return f"<{type(source).__name__}>"


def _pil_label(image: Image.Image) -> str:
    filename = getattr(image, "filename", "")  # set by Image.open (ImageFile) on a path
    return loader_label(filename) if filename else "<PIL image>"


def unexpected_load_error(source: object, exc: Exception) -> ImageLoadError:
    """An exception no decoder is known to raise, from one image, as that image's
    ImageLoadError: one odd file must not end a stream of thousands. The original exception
    stays available as ``__cause__`` and is named in the message."""
    err = load_error(source_label(source), f"unexpected error while reading the image ({_describe(exc)})")
    err.__cause__ = exc
    return err


def opened(
    source: ImageSource,
    *,
    exif_transpose: bool = True,
    draft: Optional[DraftRule] = None,
    budget: Optional[DecodeBudget] = None,
) -> contextlib.AbstractContextManager[LoadedImage]:
    """:func:`open_image` with the memory its decoding takes reserved from *budget* (default: the
    process-wide one, clip_rt.inputs.budget) until the ``with`` block ends: use the image inside
    the block. A file whose decoding does not fit the budget fails with its name."""
    return _opened(source, exif_transpose, draft, budget or decode_budget())


@contextlib.contextmanager
def _opened(
    source: ImageSource, exif_transpose: bool, draft: Optional[DraftRule], budget: DecodeBudget
) -> Iterator[LoadedImage]:
    with contextlib.ExitStack() as held:

        def reserve(img: Image.Image, label: str) -> None:
            what = f"a {img.size[0]}x{img.size[1]} {img.mode} image"
            held.enter_context(budget.reserve(decoded_bytes(img.size[0], img.size[1], img.mode), label, what))

        loaded = open_image(source, exif_transpose=exif_transpose, draft=draft, _reserve=reserve)
        try:
            yield loaded
        except BaseException:
            # Preprocessing failed: the pixels go before the reservation does (the caller's
            # traceback still refers to this image). A PIL image the caller gave is theirs.
            if loaded.image is not source:
                release_image(loaded.image)
            raise
        finally:
            del loaded  # this frame's reference: the image is freed when the caller drops theirs


def open_image(
    source: ImageSource, *, exif_transpose: bool = True, draft: Optional[DraftRule] = None, _reserve: _Reserve = None
) -> LoadedImage:
    """Open and fully decode *source*.

    *source* is a file name (``str``, ``os.PathLike``, or ``bytes`` without NUL/newline bytes),
    encoded image data (``bytes`` containing a NUL or newline byte -- every binary image format
    has one in its header -- ``bytearray``, ``memoryview``), a binary file object, a
    ``PIL.Image.Image`` or a numpy array (see :func:`array_to_pil`). Unreadable files raise
    :class:`ImageLoadError`, wrong types or bad arrays :class:`InputError`.
    """
    if isinstance(source, Image.Image):
        label = _pil_label(source)
        try:
            source.load()
        except DECODE_ERRORS as exc:
            raise load_error(label, f"cannot decode the image data ({_describe(exc)})") from exc
        return _finish(source, label, [], None, exif_transpose)
    if isinstance(source, np.ndarray):
        return _finish(array_to_pil(source), _array_label(source), [], None, exif_transpose=False)
    if isinstance(source, bytes) and _looks_like_path(source):
        return _open_path(source, exif_transpose, draft, _reserve)
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
        if not data:
            raise load_error("<bytes>", "empty data (0 bytes)")
        return _decode(io.BytesIO(data), "<bytes>", exif_transpose, draft, _reserve)
    if isinstance(source, (str, os.PathLike)):
        return _open_path(source, exif_transpose, draft, _reserve)
    if hasattr(source, "read"):
        return _open_file_object(source, exif_transpose, draft, _reserve)
    raise InputError(
        "expected an image: a path (str or os.PathLike), bytes, a binary file object, "
        f"a PIL.Image.Image or a numpy array; got {type(source).__name__}"
    )


def array_to_pil(arr: np.ndarray) -> Image.Image:
    """The PIL image a numpy array stands for.

    Accepted: shape ``(H, W)`` -> mode L, ``(H, W, 1)`` -> L, ``(H, W, 3)`` -> RGB,
    ``(H, W, 4)`` -> RGBA; dtype ``uint8`` (used as is) or float16/32/64 with every value
    finite and in [0, 1] (scaled by 255 and rounded to the nearest integer).
    """
    shape = "x".join(str(n) for n in arr.shape)
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (1, 3, 4)):
        raise InputError(
            f"expected a numpy image of shape (H, W), (H, W, 1), (H, W, 3) or (H, W, 4); got shape ({shape})"
        )
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise InputError(f"expected a numpy image with at least 1x1 pixels; got shape ({shape})")
    if arr.dtype == np.uint8:
        pixels = arr
    elif arr.dtype in (np.float16, np.float32, np.float64):
        if not np.all(np.isfinite(arr)):
            raise InputError("expected a float numpy image with finite values in [0, 1]; it contains NaN or infinity")
        lo, hi = float(arr.min()), float(arr.max())
        if lo < 0.0 or hi > 1.0:
            raise InputError(f"expected a float numpy image with values in [0, 1]; got values in [{lo:g}, {hi:g}]")
        pixels = np.rint(arr.astype(np.float64) * 255.0).astype(np.uint8)
    else:
        raise InputError(
            f"expected a numpy image of dtype uint8, or float with values in [0, 1]; got dtype {arr.dtype}"
        )
    if pixels.ndim == 3 and pixels.shape[2] == 1:
        pixels = pixels[:, :, 0]
    mode = "L" if pixels.ndim == 2 else {3: "RGB", 4: "RGBA"}[pixels.shape[2]]
    return Image.fromarray(np.ascontiguousarray(pixels), mode=mode)


# -- files ---------------------------------------------------------------------------------


def _looks_like_path(data: bytes) -> bool:
    return len(data) <= _PATH_MAX and b"\0" not in data and b"\n" not in data and len(data) > 0


def _open_path(
    path: Union[str, bytes, os.PathLike[Any]],
    exif_transpose: bool,
    draft: Optional[DraftRule],
    reserve: _Reserve = None,
) -> LoadedImage:
    label = loader_label(path)
    try:
        info = os.stat(path)
    except FileNotFoundError:
        if os.path.islink(path):
            target = loader_label(os.readlink(os.fsdecode(path)))
            raise load_error(label, f"broken symbolic link (points to {target}, which does not exist)") from None
        raise load_error(label, "no such file") from None
    except PermissionError:
        raise load_error(label, "permission denied (cannot reach the file)") from None
    except OSError as exc:  # ENAMETOOLONG, ELOOP, ENOTDIR ...
        raise load_error(label, f"cannot open: {exc.strerror or exc}") from None
    if stat.S_ISDIR(info.st_mode):
        raise load_error(label, "is a directory, not an image file")
    if not stat.S_ISREG(info.st_mode):
        raise load_error(label, "not a regular file (device, FIFO or socket)")
    if info.st_size == 0:
        raise load_error(label, "empty file (0 bytes)")
    try:
        with open(path, "rb") as fp:
            return _decode(fp, label, exif_transpose, draft, reserve)
    except PermissionError:
        raise load_error(label, "permission denied (cannot read the file)") from None


def _open_file_object(
    fp: IO[bytes], exif_transpose: bool, draft: Optional[DraftRule], reserve: _Reserve = None
) -> LoadedImage:
    name = getattr(fp, "name", None)
    label = loader_label(name) if isinstance(name, (str, bytes)) else "<file object>"
    seekable = getattr(fp, "seekable", None)
    if seekable is None or not seekable():  # PIL needs to seek: read a pipe or socket whole
        try:
            data = fp.read()
        except OSError as exc:
            raise load_error(label, f"cannot read: {exc}") from exc
        if not isinstance(data, bytes):
            raise InputError(f"expected a binary file object (opened with 'rb'); {label} gave {type(data).__name__}")
        if not data:
            raise load_error(label, "empty data (0 bytes)")
        return _decode(io.BytesIO(data), label, exif_transpose, draft, reserve)
    return _decode(fp, label, exif_transpose, draft, reserve)


def _decode(
    fp: IO[bytes], label: str, exif_transpose: bool, draft: Optional[DraftRule], reserve: _Reserve = None
) -> LoadedImage:
    """Identify, optionally draft, and fully decode; the caller closes *fp*.

    A failure is raised from outside the ``except`` clause that caught it, after the image is
    closed: the decoder's exception and its traceback (whose frames hold the partly decoded
    image) are gone before the caller's decode budget reservation is given back, so a folder of
    truncated huge files never holds more pixels than the budget allows (tests/test_hostile.py)."""
    start = fp.tell()
    failure: Optional[str] = None
    try:
        img: Image.Image = Image.open(fp)  # past 2x MAX_IMAGE_PIXELS this raises DecompressionBombError
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        failure = _too_large(exc)
    except UnidentifiedImageError:
        fp.seek(start)
        failure = _sniff(fp.read(512))
    except DECODE_ERRORS as exc:
        failure = f"corrupt image header ({_describe(exc)})"
    if failure is not None:
        raise load_error(label, failure)
    # Past MAX_IMAGE_PIXELS (but under 2x) PIL only warns. Refuse here as well: a multi-gigabyte
    # allocation is worse than a clear error. (Not warnings.catch_warnings: it is process-wide
    # and racy in the decoding threads.) Under `-W error` PIL raises the warning: caught above.
    _check_pixel_limit(img, label)
    notes: list[str] = []
    fmt = img.format
    full_size = img.size
    try:
        frames = getattr(img, "n_frames", 1)
        if frames > 1:
            img.seek(0)
            notes.append(f"animated image: first frame of {frames} used")
        if draft is not None and fmt == "JPEG":
            _apply_draft(img, draft, exif_transpose, notes)
        if reserve is not None:
            reserve(img, label)  # may wait for other threads' images, or refuse this one
        img.load()
        if frames > 1:
            img = img.copy()  # detach the frame from the (about to be closed) file
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        failure = _too_large(exc)
    except DECODE_ERRORS as exc:
        failure = f"truncated or corrupt {fmt or 'image'} data ({_describe(exc)})"
    except MemoryError:
        failure = OUT_OF_MEMORY
    except BaseException:
        release_image(img)  # an ImageLoadError from the budget, KeyboardInterrupt ...
        raise
    if failure is not None:
        release_image(img)  # the partly decoded pixels go now, not when the error is collected
        del img
        raise load_error(label, failure)
    return _finish(img, label, notes, fmt, exif_transpose, full_size)


def release_image(img: Image.Image) -> None:
    """Free *img*'s pixels now (PIL's ``close`` drops the image core), whoever still refers to it."""
    try:
        img.close()
    except Exception:  # noqa: BLE001 - closing a half-built image must not hide why it failed
        pass


_E = TypeVar("_E", bound=BaseException)


def without_frames(exc: _E) -> _E:
    """*exc* with no traceback in it or in the exceptions it chains to (``__cause__``,
    ``__context__``): the frames a traceback keeps alive may hold a decoded image or encoded
    data. What the message says, and the chained exceptions themselves, are kept."""
    seen: set[int] = set()
    stack: list[Optional[BaseException]] = [exc]
    while stack:
        e = stack.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        e.__traceback__ = None
        stack.extend((e.__cause__, e.__context__))
    return exc


OUT_OF_MEMORY = (
    "out of memory while decoding or preprocessing it (MemoryError); lower the decode memory budget "
    "(CLIP_RT_DECODE_MEMORY_MB) or the batch size, or give the process more memory"
)


def out_of_memory(label: str) -> ImageLoadError:
    """This image's error when decoding or preprocessing it ran out of memory: the file is
    reported (and skipped by --resume) rather than ending the run, every time it is retried."""
    return load_error(label, OUT_OF_MEMORY)


def _apply_draft(img: Image.Image, rule: DraftRule, exif_transpose: bool, notes: list[str]) -> None:
    orientation = _orientation(img) if exif_transpose else 1
    w, h = img.size
    swap = orientation in _SWAPS_AXES
    want_w, want_h = rule(h, w) if swap else rule(w, h)
    if swap:
        want_w, want_h = want_h, want_w
    img.draft(None, (max(1, want_w), max(1, want_h)))
    if img.size != (w, h):
        notes.append(f"JPEG decoded at reduced scale (draft): {w}x{h} -> {img.size[0]}x{img.size[1]}")


def _finish(
    img: Image.Image,
    label: str,
    notes: list[str],
    fmt: Optional[str],
    exif_transpose: bool,
    full_size: Optional[tuple[int, int]] = None,
) -> LoadedImage:
    full_w, full_h = full_size or img.size  # full_size: the header's size when draft reduced it
    if exif_transpose:
        orientation = _orientation(img, notes)
        if orientation in range(2, 9):
            img = ImageOps.exif_transpose(img)
            notes.append(f"EXIF orientation {orientation} applied")
            if orientation in _SWAPS_AXES:
                full_w, full_h = full_h, full_w
    return LoadedImage(image=img, width=full_w, height=full_h, source=label, notes=notes, format=fmt)


def _orientation(img: Image.Image, notes: Optional[list[str]] = None) -> int:
    try:
        value = img.getexif().get(EXIF_ORIENTATION, 1)
    except DECODE_ERRORS:
        if notes is not None:
            notes.append("EXIF data unreadable: orientation not applied")
        return 1
    return value if isinstance(value, int) else 1


def _check_pixel_limit(img: Image.Image, label: str) -> None:
    limit = Image.MAX_IMAGE_PIXELS
    if limit is not None and img.size[0] * img.size[1] > limit:
        raise load_error(
            label,
            f"image too large: {img.size[0]}x{img.size[1]} = {img.size[0] * img.size[1]} pixels is over "
            f"PIL's limit of {limit} (PIL.Image.MAX_IMAGE_PIXELS; raise it only for files you trust)",
        )


def _too_large(exc: Exception) -> str:
    return (
        f"image too large: {exc} (PIL.Image.MAX_IMAGE_PIXELS is {Image.MAX_IMAGE_PIXELS}; "
        "raise it only for files you trust)"
    )


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _sniff(head: bytes) -> str:
    """Why Pillow could not identify a file, from its first bytes."""
    if not head:
        return "empty data (0 bytes)"
    lowered = head.lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if b"<svg" in lowered:
        return "not a raster image: SVG (vector graphics) is not supported; convert it to PNG first"
    if lowered.startswith((b"<!doctype", b"<html", b"<head", b"<body", b"<?xml", b"<")):
        return f"not an image: looks like text/HTML (starts with {_preview(head)})"
    if head.startswith(b"%PDF"):
        return "not an image: a PDF document"
    if head[4:8] == b"ftyp" and head[8:12] in (b"heic", b"heix", b"hevc", b"heim", b"heis", b"mif1", b"msf1"):
        return "HEIC/HEIF image: this Pillow build cannot read it (install pillow-heif, or convert to JPEG)"
    if _is_text(head):
        return f"not an image: looks like text/HTML (starts with {_preview(head)})"
    return f"not an image, or a format Pillow cannot read (first bytes: {head[:12].hex(' ')})"


def _is_text(head: bytes) -> bool:
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        # a multi-byte character cut at the 512th byte is still text
        try:
            text = head[:-3].decode("utf-8")
        except UnicodeDecodeError:
            return False
    return all(ch.isprintable() or ch in "\t\r\n\f" for ch in text)


def _preview(head: bytes) -> str:
    text = head.decode("utf-8", "replace").strip().splitlines()[0] if head.strip() else ""
    return repr(text[:40] + ("..." if len(text) > 40 else ""))


def _array_label(arr: np.ndarray) -> str:
    return f"<numpy array {'x'.join(str(n) for n in arr.shape)} {arr.dtype}>"
