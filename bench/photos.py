"""Real photographs (scikit-image's samples) as multi-megapixel JPEGs, and their pixel batches."""
from __future__ import annotations

from pathlib import Path

import numpy as np

# scikit-image samples that ship with the package (no download), with a label for each.
PHOTOS: dict[str, str] = {
    "astronaut": "astronaut",
    "coffee": "coffee mug",
    "chelsea": "cat",
    "rocket": "rocket",
    "stereo_motorcycle": "motorcycle",
    "hubble_deep_field": "galaxy",
    "retina": "eye",
    "immunohistochemistry": "microscope slide",
    "camera": "camera",
    "colorwheel": "color wheel",
    "coins": "coin",
    "clock": "clock",
}
# ~20 zero-shot labels: the photos' own plus distractors.
LABELS: tuple[str, ...] = tuple(PHOTOS.values()) + (
    "dog", "car", "airplane", "tree", "building", "pizza", "book", "bicycle",
)


def _sample(name: str) -> np.ndarray:
    import skimage.data

    img = getattr(skimage.data, name)()
    if isinstance(img, tuple):  # stereo pairs
        img = img[0]
    img = np.asarray(img)
    if img.dtype == bool:
        img = img.astype(np.uint8) * 255
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    return img[..., :3].astype(np.uint8)


def make_jpegs(out_dir: Path, count: int, megapixels: float = 6.0, seed: int = 0) -> list[Path]:
    """*count* JPEGs of about *megapixels*, cycling through the samples with crops and flips."""
    from PIL import Image

    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    names = list(PHOTOS)
    paths = []
    for i in range(count):
        name = names[i % len(names)]
        path = out_dir / f"{i:03d}_{name}.jpg"
        paths.append(path)
        if path.exists():
            continue
        img = _sample(name)
        if i >= len(names):  # variants: random crop keeping 80-100% and a mirror
            h, w = img.shape[:2]
            ch, cw = int(h * rng.uniform(0.8, 1)), int(w * rng.uniform(0.8, 1))
            y, x = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
            img = img[y : y + ch, x : x + cw]
            if rng.random() < 0.5:
                img = img[:, ::-1]
        pil = Image.fromarray(np.ascontiguousarray(img))
        scale = (megapixels * 1e6 / (pil.width * pil.height)) ** 0.5
        pil = pil.resize((round(pil.width * scale), round(pil.height * scale)), Image.Resampling.BICUBIC)
        pil.save(path, quality=90)
    return paths


def label_of(path: Path) -> str:
    return PHOTOS[path.stem.split("_", 1)[1]]
