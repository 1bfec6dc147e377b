"""The fixed, deterministic inputs the parity check runs: natural-looking scenes and varied prompts.

Noise alone makes a poor check (every embedding lands in the same place), so the images are
procedurally drawn scenes: sky/ground gradients, 1/f ("pink") noise textures, shapes with hard
edges, stripes and blur, at several sizes and aspect ratios so the preprocessing's resize and
crop are exercised too.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

PROMPTS = (
    "a photo of a cat",
    "dog",
    "a blurry photo of a red double-decker bus driving through a rainy city street at night",
    "an oil painting of a lighthouse on a cliff, stormy sea, dramatic light",
    "a diagram",
    "A close-up photo of a person's hand holding a cup of coffee.",
    "sunset over the mountains with a lake in the foreground and pine trees on the shore, "
    "reflections in the calm water, a small wooden boat tied to a pier, birds in the sky",
    "text: 'OPEN 24 HOURS' 123 ?! ünïcödé",
    "",
    "satellite image of farmland",
)

# (width, height) of each generated scene.
_SIZES = ((320, 240), (256, 256), (200, 300), (640, 360), (96, 128), (300, 300), (512, 384), (240, 320))


def pink_noise(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A (height, width) 1/f noise field in [0, 1]: the spectrum of natural textures."""
    spectrum = rng.normal(size=(height, width)) + 1j * rng.normal(size=(height, width))
    fy = np.fft.fftfreq(height)[:, None]
    fx = np.fft.fftfreq(width)[None, :]
    radius = np.sqrt(fx**2 + fy**2)
    radius[0, 0] = 1.0
    field = np.real(np.fft.ifft2(spectrum / radius))
    field -= field.min()
    return field / max(field.max(), 1e-12)


def scene(index: int, size: tuple[int, int]) -> Image.Image:
    """One deterministic RGB scene; *index* seeds it."""
    rng = np.random.default_rng(1000 + index)
    width, height = size
    y = np.linspace(0.0, 1.0, height)[:, None, None]
    sky_top, sky_bottom = rng.uniform(0.3, 1.0, 3), rng.uniform(0.5, 1.0, 3)
    ground = rng.uniform(0.1, 0.6, 3)
    horizon = rng.uniform(0.35, 0.7)
    sky = sky_top * (1 - y / horizon) + sky_bottom * (y / horizon)
    texture = pink_noise(rng, height, width)[:, :, None]
    land = ground * (0.6 + 0.8 * texture)
    pixels = np.where(y < horizon, sky, land) * np.ones((1, width, 1))
    pixels = np.clip(pixels + 0.08 * (pink_noise(rng, height, width)[:, :, None] - 0.5), 0, 1)
    image = Image.fromarray((pixels * 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(2, 6))):
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        x0, y0 = int(rng.integers(0, width)), int(rng.integers(0, height))
        w, h = int(rng.integers(width // 10, width // 2)), int(rng.integers(height // 10, height // 2))
        shape = int(rng.integers(0, 3))
        if shape == 0:
            draw.ellipse((x0, y0, x0 + w, y0 + h), fill=colour)
        elif shape == 1:
            draw.rectangle((x0, y0, x0 + w, y0 + h), fill=colour, outline=(0, 0, 0))
        else:
            draw.polygon([(x0, y0), (x0 + w, y0 + h // 3), (x0 + w // 3, y0 + h)], fill=colour)
    if index % 2:
        for k in range(0, width, max(4, width // 24)):  # stripes: a fence, high frequencies
            draw.line((k, int(height * horizon), k + 6, height), fill=(30, 30, 30), width=2)
    if index % 3 == 0:
        image = image.filter(ImageFilter.GaussianBlur(radius=1.5))
    return image


def sample_images() -> list[Image.Image]:
    return [scene(i, size) for i, size in enumerate(_SIZES)]


def pad_id_of(tokenizer: Any) -> int:
    """The id open_clip's *tokenizer* pads with: 0 for CLIP BPE, the HF tokenizer's pad id."""
    hf = getattr(tokenizer, "tokenizer", None)
    return int(hf.pad_token_id) if hf is not None and getattr(hf, "pad_token_id", None) is not None else 0


def lengths_of(ids: np.ndarray, pad_token_id: int = 0) -> np.ndarray:
    """Ids per row up to the last non-padding one (right-padded rows; SOT/EOT included)."""
    ids = np.asarray(ids)
    real = ids != pad_token_id
    last = ids.shape[1] - np.argmax(real[:, ::-1], axis=1)
    return np.where(real.any(axis=1), last, 0)


def transform_for(model: Any) -> Any:
    """open_clip's own eval transform for *model* (PIL image -> float32 (3, H, W) tensor)."""
    import open_clip

    cfg = model.visual.preprocess_cfg
    return open_clip.image_transform(
        cfg["size"],
        is_train=False,
        mean=cfg["mean"],
        std=cfg["std"],
        resize_mode=cfg["resize_mode"],
        interpolation=cfg["interpolation"],
        fill_color=cfg["fill_color"],
    )


def preprocessed_images(model: Any) -> Any:
    """The scenes through open_clip's own eval transform for *model*: a float32 (N, 3, H, W) tensor."""
    import torch

    transform = transform_for(model)
    return torch.stack([transform(img) for img in sample_images()]).float()


def tokenized_prompts(tokenizer: Any) -> Any:
    """PROMPTS through open_clip's tokenizer: int64 (N, context_length)."""
    return tokenizer(list(PROMPTS))
