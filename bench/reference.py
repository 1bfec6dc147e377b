"""torch fp32 reference embeddings on the photos, and the parity figures against them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from clip_rt_fixtures.photos import LABELS

from .models import TorchModel

SIMPLE = ("a photo of a {}.", "a blurry photo of a {}.", "a photo of the {}.")


@dataclass
class Reference:
    paths: list[Path]
    pixels: np.ndarray  # (N, 3, H, W) float32, open_clip's preprocess
    image_embeds: np.ndarray  # torch fp32, L2-normalised
    class_embeds: np.ndarray  # (labels, D): SIMPLE-template ensembles, torch fp32 text tower
    text_ids: np.ndarray  # the LABELS x SIMPLE prompts, tokenised (labels*templates, context)
    text_embeds: np.ndarray  # their torch fp32 embeddings

    @property
    def top1(self) -> np.ndarray:
        return zeroshot_top1(self.image_embeds, self.class_embeds)

    def image_parity(self, embeds: np.ndarray) -> dict[str, Any]:
        fig = compare(embeds, self.image_embeds)
        agree = zeroshot_top1(embeds, self.class_embeds) == self.top1
        return {**fig, "top1_agreement": round(float(agree.mean()), 4), "samples": len(embeds)}


def compare(got: np.ndarray, want: np.ndarray) -> dict[str, float]:
    unit = lambda a: a / np.linalg.norm(a, axis=-1, keepdims=True)  # noqa: E731
    cos = np.sum(unit(got.astype(np.float64)) * unit(want.astype(np.float64)), axis=-1)
    return {"max_abs_diff": float(f"{np.abs(got - want).max():.3g}"), "min_cosine": round(float(cos.min()), 6)}


def zeroshot_top1(image_embeds: np.ndarray, class_embeds: np.ndarray) -> np.ndarray:
    return np.argmax(image_embeds @ class_embeds.T, axis=-1)


def ensemble(text_embeds: np.ndarray, n_templates: int) -> np.ndarray:
    e = text_embeds.reshape(-1, n_templates, text_embeds.shape[-1]).mean(axis=1)
    return e / np.linalg.norm(e, axis=-1, keepdims=True)


def build(tm: TorchModel, paths: list[Path]) -> Reference:
    import torch
    import torch.nn.functional as F
    from PIL import Image

    pixels = torch.stack([tm.preprocess(Image.open(p).convert("RGB")) for p in paths])
    prompts = [t.format(label) for label in LABELS for t in SIMPLE]
    ids = tm.tokenizer(prompts)
    with torch.inference_mode():
        img = F.normalize(tm.model.encode_image(pixels), dim=-1).numpy()
        txt = F.normalize(tm.model.encode_text(ids), dim=-1).numpy()
    return Reference(paths, pixels.numpy(), img, ensemble(txt, len(SIMPLE)), ids.numpy(), txt)
