"""The images both sides see, made once on the host and cached.

- ``compare``: small real photographs (scikit-image's samples, as JPEG: the decoder is part of
  what is compared) and a few lossless PNGs in awkward modes (grey, RGBA, palette).
- ``folder``: the README's "folder of photos": N multi-megapixel JPEGs, as bench/ makes them
  (6 MP, crops and mirrors of the samples: clip_rt_fixtures.photos), for the folder's peak RSS.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

COMPARE_VERSION = 1
TEXTS = [
    "a photo of a cat",
    "a photo of a dog.",
    "an astronaut in a white suit",
    "a rocket on the launch pad at night",
    "",
    "ÜNÏCÔDÉ, emoji \U0001f600 and <b>html</b> &amp; entities",
    "a very long prompt " + "that keeps going " * 30,  # truncated at the context length
]


def _make_jpegs(folder: Path, count: int, megapixels: float, seed: int) -> None:
    try:
        import skimage.data  # noqa: F401 - the samples the photos are made from

        from clip_rt_fixtures.photos import make_jpegs
    except ImportError as exc:
        raise RuntimeError(f"making the test photos needs clip-rt with the [test] extra (scikit-image): {exc}") from exc
    make_jpegs(folder, count, megapixels=megapixels, seed=seed)


def _stamp_file(folder: Path) -> Path:
    return folder.with_name(folder.name + ".stamp.json")  # beside, not in: every file inside is an input


def _ready(folder: Path, stamp: dict) -> bool:
    try:
        return json.loads(_stamp_file(folder).read_text()) == stamp
    except (OSError, ValueError):
        return False


def ensure_compare_images(cache: Path) -> Path:
    from PIL import Image

    folder = cache / "inputs" / f"compare-v{COMPARE_VERSION}"
    stamp = {"version": COMPARE_VERSION}
    if _ready(folder, stamp):
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    _make_jpegs(folder, 12, megapixels=0.3, seed=1)
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:181, 0:257]
    grad = np.stack([x * 255 // 256, y * 255 // 180, (x + y) % 256], axis=-1).astype(np.uint8)
    Image.fromarray(grad).save(folder / "png_gradient.png")
    Image.fromarray(grad[..., 0]).convert("L").save(folder / "png_grey.png")
    rgba = np.dstack([grad, rng.integers(0, 256, grad.shape[:2], dtype=np.uint8)])
    Image.fromarray(rgba, "RGBA").save(folder / "png_rgba.png")
    Image.fromarray(grad).convert("P", palette=Image.Palette.ADAPTIVE, colors=32).save(folder / "png_palette.png")
    _stamp_file(folder).write_text(json.dumps(stamp))
    return folder


def ensure_folder(cache: Path, count: int, megapixels: float = 6.0) -> Path:
    folder = cache / "inputs" / f"folder-{count}-{megapixels:g}mp"
    stamp = {"count": count, "megapixels": megapixels}
    if _ready(folder, stamp):
        return folder
    _make_jpegs(folder, count, megapixels=megapixels, seed=0)
    _stamp_file(folder).write_text(json.dumps(stamp))
    return folder
