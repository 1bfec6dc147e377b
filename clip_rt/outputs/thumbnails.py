"""Small JPEG thumbnails of the images a run read, for the HTML report and the search page.

A thumbnail is made through clip-rt's own loader (:func:`clip_rt.inputs.images.opened`): the
same EXIF orientation, pixel limit, refusal of FIFOs and devices, draft decoding of JPEGs and
16-bit/float handling as the run that classified or indexed the image, and the memory of each
decode reserved from the process-wide decode budget. Images are decoded one per worker and
written out at once, so memory stays flat over any number of images.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Optional

from ..errors import ImageLoadError, InputError

THUMBNAIL_SIZE = 160  # longest side in pixels: a gallery tile; about 5 KB per photo as JPEG
JPEG_QUALITY = 70
FOLDER = "thumbnails"  # beside report.html
MARKER = ".clip-rt-thumbnails"  # a thumbnails folder clip-rt may replace holds this file


@dataclass(frozen=True)
class Thumbnail:
    """The outcome for one image: a file name in the thumbnails folder, or why there is none."""

    file: Optional[str] = None
    width: int = 0
    height: int = 0
    error: Optional[str] = None


def thumbnail_jpeg(
    source: str | os.PathLike[str], size: int = THUMBNAIL_SIZE, quality: int = JPEG_QUALITY
) -> tuple[bytes, int, int]:
    """JPEG bytes of *source* scaled to at most *size* pixels on its longest side, with its
    width and height. Raises :class:`ImageLoadError` (with the file's name) for an image that
    cannot be read, or a mode that cannot be scaled."""
    from PIL import Image

    from ..errors import load_error
    from ..inputs.images import opened
    from ..inputs.preprocess import _high_bit_mapping

    with opened(source, draft=lambda w, h: (size, size)) as loaded:
        img = loaded.image
        try:
            to_8bit = _high_bit_mapping(img)  # 16-bit and float images as the preprocessing maps them
            if img.mode in ("P", "PA", "1", "LA"):  # palette/bilevel: scale in full colour, not NEAREST
                img = img.convert("RGBA")
            img.thumbnail((size, size), Image.Resampling.BICUBIC)  # in place: the decoded image is ours
            if to_8bit is not None:
                img = to_8bit(img)
            rgb = img.convert("RGB")  # what the model saw: alpha dropped, CMYK converted
            buf = io.BytesIO()
            rgb.save(buf, "JPEG", quality=quality, optimize=True)
        except (ValueError, OSError) as exc:
            raise load_error(
                loaded.source, f"cannot make a thumbnail of a {img.mode} image ({type(exc).__name__}: {exc})"
            ) from exc
    return buf.getvalue(), rgb.width, rgb.height


def write_thumbnails(
    folder: str,
    sources: Sequence[Optional[str]],
    *,
    size: int = THUMBNAIL_SIZE,
    quality: int = JPEG_QUALITY,
    workers: Optional[int] = None,
    progress: Optional[Callable[[int], None]] = None,
) -> list[Thumbnail]:
    """``<folder>/<i>.jpg`` for each *sources[i]* that can be read; None (a record without an
    image) gets no file. Returns one :class:`Thumbnail` per source, in order: the file, or the
    reason there is none (a broken image is that image's error, never the run's). A write that
    fails (full disk) raises ``OSError``. *progress(n)* is called as images are done."""
    workers = workers or min(4, os.cpu_count() or 1)
    out: list[Thumbnail] = []

    def one(i: int, source: Optional[str]) -> Thumbnail:
        if source is None:
            return Thumbnail(error="no image")
        try:
            data, w, h = thumbnail_jpeg(source, size, quality)
        except (ImageLoadError, InputError) as exc:
            return Thumbnail(error=_reason(str(exc), source))
        name = f"{i}.jpg"
        with open(os.path.join(folder, name), "xb") as f:
            f.write(data)
        return Thumbnail(file=name, width=w, height=h)

    with ThreadPoolExecutor(workers, thread_name_prefix="clip-rt-thumb") as pool:
        for done in _bounded(pool, one, enumerate(sources), ahead=2 * workers):
            out.append(done)
            if progress is not None:
                progress(1)
    return out


def _bounded(
    pool: ThreadPoolExecutor,
    fn: Callable[[int, Optional[str]], Thumbnail],
    items: Iterable[tuple[int, Optional[str]]],
    ahead: int,
) -> Iterator[Thumbnail]:
    """Results in order, with at most *ahead* images submitted and not yet collected."""
    pending: list[Future[Thumbnail]] = []
    for i, source in items:
        pending.append(pool.submit(fn, i, source))
        if len(pending) >= ahead:
            yield pending.pop(0).result()
    while pending:
        yield pending.pop(0).result()


def _reason(message: str, source: str) -> str:
    from ..display import display_path

    label = display_path(source)
    return message[len(label) + 2 :] if message.startswith(label + ": ") else message
