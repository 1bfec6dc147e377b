"""open_clip's inference transform in numpy + PIL, to max abs diff <= 1e-6.

open_clip (``image_transform(..., is_train=False)``) does, on a PIL image in its stored mode:
Resize -> CenterCrop (or pad) -> ``convert('RGB')`` -> ToTensor (/255) -> Normalize. The
geometry below repeats torchvision's integer size rules and calls the same PIL functions in
the same order, so the 8-bit pixels are identical; the float steps use a per-channel lookup
table computed with torch's float32 operations, so the output is bit-identical.

Where open_clip is plainly broken the default (``strict=False``) departs from it; see
``docs/images.md`` for what changes and by how much. ``strict=True`` reproduces open_clip.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Optional, cast

import numpy as np
from PIL import Image, ImageOps

from ..bundle.manifest import ImageConfig
from ..errors import ClipRtError, ImageLoadError, InputError, load_error
from .budget import decode_budget
from .images import (
    ImageSource,
    LoadedImage,
    open_image,
    opened,
    out_of_memory,
    source_label,
    unexpected_load_error,
    without_frames,
)

RESIZE_MODES = ("shortest", "longest", "squash")
# open_clip accepts bicubic, bilinear and 'random' (bicubic at inference); no nearest.
_RESAMPLE = {
    "bicubic": Image.Resampling.BICUBIC,
    "bilinear": Image.Resampling.BILINEAR,
    "random": Image.Resampling.BICUBIC,
}
# Modes whose convert('RGB') clips at 255: 16-bit, 32-bit integer and float images.
HIGH_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")
# Above this many pixels the full resize that CenterCrop then mostly discards (extreme aspect
# ratios: 20000x10 -> 448000x224) is replaced by resizing only the cropped region (strict=False).
HUGE_RESIZE_PIXELS = 1 << 24


@dataclass
class Converted:
    """One image preprocessed by :meth:`Preprocessor.convert`; the decoded image is not kept."""

    pixels: np.ndarray  # float32 (3, H, W)
    width: int  # of the full image (after EXIF orientation)
    height: int
    notes: list[str]


@dataclass
class PreprocessedBatch:
    """What :meth:`Preprocessor.try_batch` returns: the good images and the failures."""

    pixels: np.ndarray  # float32 (M, 3, H, W), C-contiguous; M = len(indices)
    indices: list[int]  # input position of each row of pixels
    failures: list[tuple[int, ClipRtError]]  # (input position, error) for each bad input
    notes: dict[int, list[str]] = field(default_factory=dict)  # input position -> notes


class Preprocessor:
    """Image -> normalised float32 ``(3, H, W)``, as open_clip's transform for *cfg*."""

    def __init__(
        self, cfg: ImageConfig, *, exif_transpose: bool = True, strict: bool = False, draft: bool = False
    ) -> None:
        _check_config(cfg)
        self.cfg = cfg
        self.exif_transpose = exif_transpose
        self.strict = strict
        self.draft = draft
        self.height, self.width = int(cfg.size[0]), int(cfg.size[1])
        self._lut = _normalise_table(cfg.mean, cfg.std)
        self._budget = decode_budget()  # process-wide; a bad CLIP_RT_DECODE_MEMORY_MB fails here

    # -- public API ----------------------------------------------------------------------
    def load(self, source: ImageSource | LoadedImage) -> LoadedImage:
        """Open *source* with this preprocessor's EXIF and draft settings."""
        if isinstance(source, LoadedImage):
            return source
        return open_image(source, exif_transpose=self.exif_transpose, draft=self._draft_rule if self.draft else None)

    def __call__(self, image: ImageSource | LoadedImage) -> np.ndarray:
        """One image -> float32 ``(3, H, W)``."""
        out = np.empty((3, self.height, self.width), dtype=np.float32)
        self._convert_into(image, out)
        return out

    def convert(self, image: ImageSource | LoadedImage) -> Converted:
        """One image -> :class:`Converted`: the pixels, its size and notes. Decoding a file holds
        memory from the process-wide decode budget (clip_rt.inputs.budget) until it is
        preprocessed; running out of memory on a file is that file's ImageLoadError."""
        out = np.empty((3, self.height, self.width), dtype=np.float32)
        width, height, notes = self._convert_into(image, out)
        return Converted(out, width, height, notes)

    def _convert_into(self, image: ImageSource | LoadedImage, out: np.ndarray) -> tuple[int, int, list[str]]:
        if isinstance(image, LoadedImage):  # already decoded by the caller: nothing to reserve
            self._into(image, out)
            return image.width, image.height, list(image.notes)
        draft = self._draft_rule if self.draft else None
        try:
            with opened(image, exif_transpose=self.exif_transpose, draft=draft, budget=self._budget) as loaded:
                self._into(loaded, out)
                result = loaded.width, loaded.height, list(loaded.notes)
                del loaded  # the decoded image goes before its reservation does
            return result
        except MemoryError:  # this file's failure: recorded, and skipped by --resume
            pass
        # Raised here, not inside the except clause: the MemoryError's traceback (and the
        # buffers its frames hold) is gone by now.
        raise out_of_memory(source_label(image))

    def batch(self, images: Iterable[ImageSource | LoadedImage]) -> np.ndarray:
        """Images -> contiguous float32 ``(N, 3, H, W)``.

        Every image is attempted; if any fails, one ImageLoadError lists all failures. Use
        :meth:`try_batch` to keep the good ones.
        """
        result = self.try_batch(images)
        if result.failures:
            lines = [f"  [{i}] {err}" for i, err in result.failures]
            total = len(result.indices) + len(result.failures)
            raise ImageLoadError(f"{len(result.failures)} of {total} images failed:\n" + "\n".join(lines))
        return result.pixels

    def try_batch(self, images: Iterable[ImageSource | LoadedImage]) -> PreprocessedBatch:
        """Like :meth:`batch`, but a bad image is reported and skipped, never fatal to the rest."""
        items = list(images)
        out = np.empty((len(items), 3, self.height, self.width), dtype=np.float32)
        indices: list[int] = []
        failures: list[tuple[int, ClipRtError]] = []
        notes: dict[int, list[str]] = {}
        for i, item in enumerate(items):
            try:
                _, _, item_notes = self._convert_into(item, out[len(indices)])
            except ClipRtError as err:  # ImageLoadError / InputError: this item only
                failures.append((i, without_frames(err)))  # no traceback holding its pixels
                continue
            except Exception as exc:  # noqa: BLE001 - a decoder quirk no one listed: still this item's failure only
                failures.append((i, without_frames(unexpected_load_error(item, exc))))
                continue
            if item_notes:
                notes[i] = item_notes
            indices.append(i)
        pixels = out[: len(indices)] if len(indices) < len(items) else out
        return PreprocessedBatch(np.ascontiguousarray(pixels), indices, failures, notes)

    def to_rgb(self, image: ImageSource | LoadedImage) -> Image.Image:
        """The (H, W) RGB PIL image that ToTensor would see (for inspection and tests)."""
        loaded = self.load(image)
        return self._geometry(loaded.image, loaded.source)

    # -- steps ---------------------------------------------------------------------------
    def _into(self, loaded: LoadedImage, out: np.ndarray) -> None:
        rgb = self._geometry(loaded.image, loaded.source)
        pixels = np.asarray(rgb, dtype=np.uint8)
        for c in range(3):  # ToTensor + Normalize as one table lookup per channel
            np.take(self._lut[c], pixels[:, :, c], out=out[c])

    def _geometry(self, img: Image.Image, source: str) -> Image.Image:
        """Resize, crop/pad and convert to RGB, as open_clip does, in the image's own mode."""
        to_8bit = None if self.strict else _high_bit_mapping(img)
        mode = self.cfg.resize_mode
        resample = _RESAMPLE[self.cfg.interpolation]
        th, tw = self.height, self.width
        h, w = img.height, img.width
        try:
            if mode == "squash":
                img = _resize(img, (th, tw), resample)
            elif mode == "longest":
                img = _resize(img, self._keep_ratio(h, w, longest=True, source=source), resample)
            elif th == tw:  # shortest, square: torchvision Resize(int)
                size = shortest_edge_size(h, w, th)
                if not self.strict and size[0] * size[1] > HUGE_RESIZE_PIXELS:
                    img = _resize_cropped(img, size, (th, tw), resample)
                else:
                    img = _resize(img, size, resample)
            else:
                # open_clip: ResizeKeepRatio(image_size) for a non-square shortest-edge resize,
                # which uses its default BICUBIC whatever the configured interpolation.
                size = self._keep_ratio(h, w, longest=False, source=source)
                if not self.strict and size[0] * size[1] > HUGE_RESIZE_PIXELS:
                    img = _resize_cropped(img, size, (th, tw), Image.Resampling.BICUBIC)
                else:
                    img = _resize(img, size, Image.Resampling.BICUBIC)
            if to_8bit is not None:
                img = to_8bit(img)
            if mode != "squash":
                img = center_crop_or_pad(img, (th, tw), fill=self.cfg.fill_color if mode == "longest" else 0)
            return img.convert("RGB")
        except (ValueError, OSError) as exc:  # PIL cannot resize/convert this mode
            raise load_error(source, f"cannot preprocess a {img.mode} image ({type(exc).__name__}: {exc})") from exc

    def _keep_ratio(self, h: int, w: int, *, longest: bool, source: str) -> tuple[int, int]:
        size = keep_ratio_size(h, w, (self.height, self.width), longest=longest)
        if min(size) < 1:
            if self.strict:  # open_clip's resize fails the same way (PIL: height and width must be > 0)
                raise load_error(
                    source,
                    f"{w}x{h} resizes to {size[1]}x{size[0]} pixels; open_clip cannot preprocess it (strict=True)",
                )
            size = (max(size[0], 1), max(size[1], 1))
        return size

    def draft_size(self, width: int, height: int) -> tuple[int, int]:
        """The smallest (width, height) draft decoding may reduce a *width* x *height* image to."""
        return self._draft_rule(width, height)

    def _draft_rule(self, w: int, h: int) -> tuple[int, int]:
        """Decode no smaller than twice what the resize step will produce."""
        th, tw = self.height, self.width
        if self.cfg.resize_mode == "squash":
            rh, rw = th, tw
        elif self.cfg.resize_mode == "longest":
            rh, rw = keep_ratio_size(h, w, (th, tw), longest=True)
        elif th == tw:
            rh, rw = shortest_edge_size(h, w, th)
        else:
            rh, rw = keep_ratio_size(h, w, (th, tw), longest=False)
        return 2 * rw, 2 * rh


# -- torchvision / open_clip geometry, same integer arithmetic ---------------------------------


def shortest_edge_size(h: int, w: int, size: int) -> tuple[int, int]:
    """torchvision ``Resize(size)`` output (h, w): ``_compute_resized_output_size``, no max_size."""
    short, long = (w, h) if w <= h else (h, w)
    new_short, new_long = size, int(size * long / short)  # truncation, as torchvision
    new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
    return new_h, new_w


def keep_ratio_size(h: int, w: int, target: Sequence[int], *, longest: bool) -> tuple[int, int]:
    """open_clip ``ResizeKeepRatio.get_params`` (no random scale/aspect): Python round()."""
    target_h, target_w = target
    ratio_h = h / target_h
    ratio_w = w / target_w
    lf = 1.0 if longest else 0.0
    ratio = max(ratio_h, ratio_w) * lf + min(ratio_h, ratio_w) * (1.0 - lf)
    new_h, new_w = (round(x * 1.0 / ratio) for x in (h, w))
    return new_h, new_w


def center_crop_or_pad(img: Image.Image, size: Sequence[int], fill: int = 0) -> Image.Image:
    """torchvision ``center_crop`` / open_clip ``center_crop_or_pad`` on a PIL image."""
    crop_h, crop_w = size
    w, h = img.size
    if crop_w > w or crop_h > h:
        ltrb = (
            (crop_w - w) // 2 if crop_w > w else 0,
            (crop_h - h) // 2 if crop_h > h else 0,
            (crop_w - w + 1) // 2 if crop_w > w else 0,
            (crop_h - h + 1) // 2 if crop_h > h else 0,
        )
        img = _pad(img, ltrb, fill)
        w, h = img.size
        if (crop_w, crop_h) == (w, h):
            return img
    top = int(round((h - crop_h) / 2.0))
    left = int(round((w - crop_w) / 2.0))
    return img.crop((left, top, left + crop_w, top + crop_h))


def _pad(img: Image.Image, ltrb: tuple[int, int, int, int], fill: int) -> Image.Image:
    """torchvision ``F_pil.pad`` in constant mode (fill per band; palette kept for P)."""
    bands = len(img.getbands())
    value: int | float | tuple[int | float, ...] = fill
    if bands > 1:
        value = (fill,) * bands
    if img.mode != "F":
        value = tuple(int(x) for x in value) if isinstance(value, tuple) else int(value)
    # Pillow's stubs leave out the float fill that mode F takes.
    if img.mode == "P":
        palette = img.getpalette()
        out = ImageOps.expand(img, border=ltrb, fill=value)  # type: ignore[arg-type]
        if palette is not None:
            out.putpalette(palette)
        return out
    return ImageOps.expand(img, border=ltrb, fill=value)  # type: ignore[arg-type]


def _resize(img: Image.Image, size: tuple[int, int], resample: Image.Resampling) -> Image.Image:
    """torchvision ``F.resize`` on PIL: no-op at the same size, else ``img.resize((w, h))``."""
    if (img.height, img.width) == tuple(size):
        return img
    return img.resize((size[1], size[0]), resample)


def _resize_cropped(
    img: Image.Image, size: tuple[int, int], crop: tuple[int, int], resample: Image.Resampling
) -> Image.Image:
    """The centre crop of ``img.resize(size)`` without making the whole resized image.

    Two explicit single-axis passes, horizontal first as PIL's own resize orders them when
    both axes are enlarged (always the case here), each on an integer pre-crop of the input
    with enough margin for the filter, so that the filter taps and weights are the same.
    """
    (rh, rw), (ch, cw) = size, crop
    top = int(round((rh - ch) / 2.0))
    left = int(round((rw - cw) / 2.0))
    premultiplied = {"LA": "La", "RGBA": "RGBa"}.get(img.mode) if resample != Image.Resampling.NEAREST else None
    work = img.convert(premultiplied) if premultiplied else img  # as PIL's resize does internally
    work = _resize_axis(work, rw, left, cw, resample, horizontal=True)
    work = _resize_axis(work, rh, top, ch, resample, horizontal=False)
    return work.convert(img.mode) if premultiplied else work


def _resize_axis(
    img: Image.Image, full: int, start: int, count: int, resample: Image.Resampling, *, horizontal: bool
) -> Image.Image:
    """Output pixels [start, start + count) of resizing one axis of *img* to *full* pixels."""
    length = img.width if horizontal else img.height
    if full == length and start == 0 and count == length:
        return img
    scale = length / full
    margin = 3 + int(math.ceil(2.0 * max(scale, 1.0)))  # bicubic support is 2 source pixels, scaled
    lo = max(0, int(math.floor(start * scale)) - margin)
    hi = min(length, int(math.ceil((start + count) * scale)) + margin)
    first, last = start * scale - lo, (start + count) * scale - lo  # the output's span in the crop
    if horizontal:
        part = img.crop((lo, 0, hi, img.height))
        return part.resize((count, img.height), resample, box=(first, 0, last, img.height))
    part = img.crop((0, lo, img.width, hi))
    return part.resize((img.width, count), resample, box=(0, first, img.width, last))


# -- modes open_clip mishandles ------------------------------------------------------------------


def _high_bit_mapping(img: Image.Image) -> Optional[Callable[[Image.Image], Image.Image]]:
    """For 16/32-bit and float images, a function mapping them to 8-bit 'L', or None.

    open_clip's ``convert('RGB')`` clips these at 255 (a 16-bit photo turns white, a [0, 1]
    float image black). The scale is decided on the whole image, before resizing:
    I;16 -> x / 257; I in [0, 255] and F in [0, 255] -> as open_clip (None);
    I in [0, 65535] -> x / 257; F in [0, 1] -> x * 255; anything else -> min..max to 0..255.
    """
    if img.mode not in HIGH_BIT_MODES:
        return None
    lo, hi = _finite_extrema(img)
    if img.mode.startswith("I;16"):
        scale, offset = 255.0 / 65535.0, 0.0
    elif 0.0 <= lo and hi <= 255.0 and not (img.mode == "F" and hi <= 1.0):
        return None  # already 8-bit range: open_clip's conversion is right
    elif img.mode == "F" and 0.0 <= lo and hi <= 1.0:
        scale, offset = 255.0, 0.0
    elif img.mode == "I" and 0.0 <= lo and hi <= 65535.0:
        scale, offset = 255.0 / 65535.0, 0.0
    else:
        scale, offset = (255.0 / (hi - lo) if hi > lo else 0.0), lo

    def to_8bit(resized: Image.Image) -> Image.Image:
        x = np.asarray(resized, dtype=np.float64)
        x = np.nan_to_num((x - offset) * scale, nan=0.0, posinf=255.0, neginf=0.0)
        return Image.fromarray(np.rint(np.clip(x, 0.0, 255.0)).astype(np.uint8), mode="L")

    return to_8bit


def _finite_extrema(img: Image.Image, rows_per_strip: int = 0) -> tuple[float, float]:
    """Smallest and largest finite pixel value, without copying the image: Pillow's own
    getextrema when it gives finite values (it does unless the image holds NaN or infinity),
    else strip by strip (a few MB at a time). (0, 0) when no value is finite."""
    lo, hi = cast("tuple[float, float]", img.getextrema())  # one band: (min, max)
    if math.isfinite(lo) and math.isfinite(hi):
        return float(lo), float(hi)
    rows = rows_per_strip or max(1, (4 << 20) // max(1, img.width))
    found_lo, found_hi = math.inf, -math.inf
    for top in range(0, img.height, rows):
        strip = np.asarray(img.crop((0, top, img.width, min(img.height, top + rows))))
        finite = strip[np.isfinite(strip)]
        if finite.size:
            found_lo, found_hi = min(found_lo, float(finite.min())), max(found_hi, float(finite.max()))
    return (0.0, 0.0) if found_lo > found_hi else (found_lo, found_hi)


# -- ToTensor + Normalize ----------------------------------------------------------------------


def _normalise_table(mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """(3, 256) float32: ((v / 255) - mean) / std with torch's float32 operation order."""
    v = np.arange(256, dtype=np.float32) / np.float32(255.0)
    m = np.asarray(mean, dtype=np.float32).reshape(3, 1)
    s = np.asarray(std, dtype=np.float32).reshape(3, 1)
    return np.ascontiguousarray((v[None, :] - m) / s, dtype=np.float32)


def _check_config(cfg: ImageConfig) -> None:
    size = tuple(cfg.size)
    if len(size) != 2 or not all(isinstance(n, (int, np.integer)) and n > 0 for n in size):
        raise InputError(f"image size must be (height, width) with positive integers; got {cfg.size!r}")
    if cfg.resize_mode not in RESIZE_MODES:
        raise InputError(f"resize_mode must be one of {', '.join(RESIZE_MODES)}; got {cfg.resize_mode!r}")
    if cfg.interpolation not in _RESAMPLE:
        raise InputError(f"interpolation must be bicubic or bilinear (as open_clip); got {cfg.interpolation!r}")
    if len(cfg.mean) != 3 or len(cfg.std) != 3:
        raise InputError(f"mean and std must have 3 values; got mean={cfg.mean!r}, std={cfg.std!r}")
    if any(float(s) == 0.0 for s in cfg.std):
        raise InputError(f"std must not contain 0; got {cfg.std!r}")


def preprocess(cfg: ImageConfig, images: Iterable[ImageSource | LoadedImage], **options: bool) -> np.ndarray:
    """Shorthand: ``Preprocessor(cfg, **options).batch(images)``."""
    return Preprocessor(cfg, **options).batch(images)


__all__ = [
    "Preprocessor",
    "PreprocessedBatch",
    "preprocess",
    "shortest_edge_size",
    "keep_ratio_size",
    "center_crop_or_pad",
    "HIGH_BIT_MODES",
]
