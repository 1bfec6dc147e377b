"""A corpus of awkward and broken image files, written into a directory by the tests.

``make_corpus(dir)`` returns ``{name: Case}``; ``Case.reason`` is the text the ImageLoadError
must contain, or None when the file must load and preprocess (the awkward-but-valid cases).
"""

from __future__ import annotations

import io
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

import numpy as np
from PIL import Image


@dataclass
class Case:
    path: Union[Path, bytes]  # bytes for the non-UTF-8 file name
    reason: Optional[str]  # expected ImageLoadError text; None: must be handled
    note: Optional[str] = None  # a note LoadedImage.notes must contain
    mode: Optional[str] = None  # the PIL mode it must load as


def photo(width: int = 96, height: int = 64) -> Image.Image:
    """A real photograph (skimage's astronaut), resized."""
    from skimage import data

    return Image.fromarray(data.astronaut()).resize((width, height), Image.Resampling.BICUBIC)


def encode(img: Image.Image, fmt: str, **params: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **params)
    return buf.getvalue()


def ycck_jpeg(cmyk: Image.Image) -> bytes:
    """An Adobe YCCK JPEG (Pillow writes only CMYK): YCbCr of the inverted CMY plus K,
    saved as 4 channels, then the Adobe marker's transform flag set to 2 (YCCK)."""
    c = np.asarray(cmyk).astype(np.uint8)
    ycc = np.asarray(Image.fromarray(255 - c[:, :, :3]).convert("YCbCr"))
    data = encode(Image.fromarray(np.dstack([ycc, c[:, :, 3:]]), "CMYK"), "JPEG", quality=98)
    at = data.find(b"Adobe")
    if at < 0:
        raise RuntimeError("Pillow wrote no Adobe marker for a CMYK JPEG")
    flag = at + 11  # "Adobe", version (2), flags0 (2), flags1 (2), transform (1)
    return data[:flag] + b"\x02" + data[flag + 1 :]


def png_with_size(width: int, height: int) -> bytes:
    """A 1x1 PNG whose header claims width x height (a decompression bomb's header)."""
    data = bytearray(encode(Image.new("L", (1, 1)), "PNG"))
    ihdr = data.index(b"IHDR")
    data[ihdr + 4 : ihdr + 12] = struct.pack(">II", width, height)
    body = bytes(data[ihdr : ihdr + 17])
    data[ihdr + 17 : ihdr + 21] = struct.pack(">I", zlib.crc32(body) & 0xFFFFFFFF)
    return bytes(data)


def exif_rotated_jpeg(img: Image.Image, orientation: int = 6) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(img, "JPEG", quality=95, exif=exif.tobytes())


def animated(fmt: str, frames: int = 12) -> bytes:
    base = photo(48, 32)
    seq = [base.rotate(30 * i) for i in range(frames)]
    return encode(seq[0], fmt, save_all=True, append_images=seq[1:], duration=50, loop=0)


def make_corpus(root: Path) -> dict[str, Case]:
    root.mkdir(parents=True, exist_ok=True)
    img = photo()
    jpeg = encode(img, "JPEG", quality=90)
    png = encode(img, "PNG")
    cases: dict[str, Case] = {}

    def put(
        name: str, data: bytes, reason: Optional[str], note: Optional[str] = None, mode: Optional[str] = None
    ) -> None:
        (root / name).write_bytes(data)
        cases[name] = Case(root / name, reason, note, mode)

    # -- broken: must give ImageLoadError with this reason ------------------------------
    put("empty.jpg", b"", "empty file (0 bytes)")
    put("truncated.jpg", jpeg[: len(jpeg) * 6 // 10], "truncated or corrupt JPEG data")
    put("truncated.png", png[: len(png) // 2], "truncated or corrupt PNG data")
    put("page.jpg", b"<!DOCTYPE html>\n<html><body>404 Not Found</body></html>\n", "not an image: looks like text/HTML")
    put("notes.png", "just some text, café\n".encode(), "not an image: looks like text/HTML")
    put("drawing.jpg", b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg"/>\n', "SVG")
    noise = bytes(np.random.default_rng(0).integers(0, 256, 600, dtype=np.uint8))
    put("noise.jpg", noise, "not an image, or a format Pillow cannot read")
    put("bomb.png", png_with_size(20000, 20000), "image too large")  # 400 Mpx: over 2x the limit
    put("bomb_warning.png", png_with_size(10000, 10000), "image too large")  # 100 Mpx: PIL only warns
    put("unreadable.jpg", jpeg, "permission denied")
    os.chmod(root / "unreadable.jpg", 0)
    os.symlink(root / "gone.jpg", root / "dangling.jpg")
    cases["dangling.jpg"] = Case(root / "dangling.jpg", "broken symbolic link")
    cases["missing.jpg"] = Case(root / "missing.jpg", "no such file")
    (root / "folder.jpg").mkdir()
    cases["folder.jpg"] = Case(root / "folder.jpg", "is a directory")

    # -- awkward but valid: must load and preprocess to finite values -------------------------
    cmyk = img.convert("CMYK")
    put("cmyk.jpg", encode(cmyk, "JPEG", quality=95), None, mode="CMYK")
    put("ycck.jpg", ycck_jpeg(cmyk), None, mode="CMYK")
    gray16 = np.asarray(img.convert("L")).astype(np.uint16) * 257
    put("gray16.png", encode(Image.fromarray(gray16), "PNG"), None, mode="I;16")
    put("gray16.tif", encode(Image.fromarray(gray16), "TIFF"), None, mode="I;16")
    put("int32.tif", encode(Image.fromarray(gray16.astype(np.int32) * 16), "TIFF"), None, mode="I")
    put("float.tif", encode(Image.fromarray(gray16.astype(np.float32) / 65535.0), "TIFF"), None, mode="F")
    palette = img.convert("P", palette=Image.Palette.ADAPTIVE, colors=64)
    put("palette_transparent.png", encode(palette, "PNG", transparency=0), None, mode="P")
    put("la.png", encode(img.convert("LA"), "PNG"), None, mode="LA")
    rgba = img.copy()
    rgba.putalpha(Image.linear_gradient("L").resize(img.size))
    put("rgba.png", encode(rgba, "PNG"), None, mode="RGBA")
    put("bilevel.png", encode(img.convert("1"), "PNG"), None, mode="1")
    put("one_pixel.png", encode(Image.new("RGB", (1, 1), (200, 30, 10)), "PNG"), None, mode="RGB")
    put("wide.png", encode(img.resize((20000, 10)), "PNG"), None, mode="RGB")
    put("tall.png", encode(img.resize((10, 20000)), "PNG"), None, mode="RGB")
    put("animated.gif", animated("GIF"), None, note="animated image: first frame of 12 used")
    put("animated.webp", animated("WEBP"), None, note="animated image: first frame of 12 used")
    put("rotated.jpg", exif_rotated_jpeg(img, 6), None, note="EXIF orientation 6 applied")
    raw_name = os.fsencode(root) + b"/caf\xe9.jpg"  # Latin-1 name: not valid UTF-8
    with open(raw_name, "wb") as f:
        f.write(jpeg)
    cases["caf\\xe9.jpg"] = Case(raw_name, None, mode="RGB")
    return cases
