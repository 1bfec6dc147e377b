"""Labelled image sets for the adapt tests (and docs/adapt.md's measurements), written as PNGs
into one folder per class.

- :func:`generated_set`: classes that even random-weight image towers separate: two solid
  colours and two gradient directions, each image with its own size, brightness, hue jitter
  and noise (so a class is a spread, not one point).
- :func:`photo_set`: real photographs from scikit-image, one class per photo, each image a
  random crop of it (position, size, mirroring, brightness).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from PIL import Image

Generator = Callable[[np.random.Generator, int, int], np.ndarray]


def _solid(colour: Sequence[int]) -> Generator:
    def make(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
        c = np.asarray(colour, dtype=np.float64) * rng.uniform(0.75, 1.15) + rng.normal(0, 12, 3)
        return np.broadcast_to(c, (h, w, 3)) + rng.normal(0, 18, (h, w, 3))

    return make


def _gradient(axis: int) -> Generator:
    def make(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
        n = (h, w)[axis]
        ramp = np.linspace(rng.uniform(0, 40), rng.uniform(200, 255), n)
        ramp = ramp[:, None] if axis == 0 else ramp[None, :]
        grey = np.broadcast_to(ramp, (h, w))[..., None] * rng.uniform(0.85, 1.0, 3)
        return grey + rng.normal(0, 12, (h, w, 3))

    return make


GENERATED: dict[str, Generator] = {
    "red": _solid((200, 40, 40)),
    "blue": _solid((40, 60, 200)),
    "horizontal gradient": _gradient(1),
    "vertical gradient": _gradient(0),
    "green": _solid((40, 180, 60)),
}
FOUR = ("red", "blue", "horizontal gradient", "vertical gradient")


def _save(arr: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(path)


def generated_set(root: Path, per_class: int, seed: int, classes: Sequence[str] = FOUR) -> Path:
    """*per_class* images of each class under ``root/<class>/``; returns *root*."""
    rng = np.random.default_rng(seed)
    for name in classes:
        for i in range(per_class):
            h, w = int(rng.integers(24, 64)), int(rng.integers(24, 64))
            _save(GENERATED[name](rng, h, w), root / name / f"{seed}-{i:03d}.png")
    return root


PHOTOS = ("astronaut", "coffee", "chelsea", "rocket")


def photo_set(root: Path, per_class: int, seed: int, photos: Sequence[str] = PHOTOS) -> Path:
    """*per_class* random crops of each scikit-image photo under ``root/<photo>/``."""
    import skimage.data

    rng = np.random.default_rng(seed)
    for name in photos:
        full = np.asarray(getattr(skimage.data, name)(), dtype=np.float64)
        if full.ndim == 2:
            full = np.repeat(full[..., None], 3, axis=2)
        h, w = full.shape[:2]
        for i in range(per_class):
            ch, cw = int(h * rng.uniform(0.45, 0.8)), int(w * rng.uniform(0.45, 0.8))
            y, x = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
            crop = full[y : y + ch, x : x + cw, :3] * rng.uniform(0.8, 1.15)
            if rng.random() < 0.5:
                crop = crop[:, ::-1]
            img = Image.fromarray(np.clip(crop, 0, 255).astype(np.uint8)).resize((96, 96 * ch // cw or 1))
            _save(np.asarray(img, dtype=np.float64), root / name / f"{seed}-{i:03d}.png")
    return root
