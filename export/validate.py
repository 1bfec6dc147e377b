"""The parity check: every exported graph against the torch model, before a bundle is accepted."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from clip_rt.errors import ParityError
from clip_rt.bundle.manifest import IMAGE_INPUT, TEXT_INPUT, ParityFigure

# Per precision: the figures a graph must meet (documented in models/README.md).
# fp32 must reproduce torch to float rounding; fp16/int8 change the numbers, so what is held
# is the direction of the embedding (cosine), which is all CLIP similarity uses.
TOLERANCES: dict[str, dict[str, float]] = {
    "fp32": {"max_abs_diff": 1e-4},
    "fp16": {"min_cosine": 0.999},
    "int8": {"min_cosine": 0.99},
}


@dataclass
class References:
    """Fixed inputs and the torch model's L2-normalised outputs for them."""

    pixel_values: np.ndarray  # float32 (N, 3, H, W)
    image_embeds: np.ndarray  # float32 (N, D)
    input_ids: np.ndarray  # int64 (M, context_length)
    text_embeds: np.ndarray  # float32 (M, D)
    longest_prompt: int  # tokens in the longest prompt, SOT and EOT included


def torch_references(model: Any, tokenizer: Any) -> References:
    import torch
    import torch.nn.functional as F

    from .sample_inputs import preprocessed_images, tokenized_prompts

    pixels = preprocessed_images(model)
    ids = tokenized_prompts(tokenizer)
    with torch.no_grad():
        image = F.normalize(model.encode_image(pixels), dim=-1)
        text = F.normalize(model.encode_text(ids), dim=-1)
    longest = int((ids != 0).sum(dim=1).max().item())
    return References(
        pixel_values=pixels.numpy().astype(np.float32),
        image_embeds=image.numpy().astype(np.float32),
        input_ids=ids.numpy().astype(np.int64),
        text_embeds=text.numpy().astype(np.float32),
        longest_prompt=longest,
    )


def _session(path: Path) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _unit(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def compare(got: np.ndarray, want: np.ndarray) -> tuple[float, float]:
    """(max abs diff, min cosine of the L2-normalised rows)."""
    if got.shape != want.shape:
        raise ParityError(f"graph output shape {got.shape} differs from torch's {want.shape}")
    if not np.all(np.isfinite(got)):
        return float("inf"), float("-inf")
    diff = float(np.max(np.abs(got.astype(np.float64) - want.astype(np.float64))))
    cosine = float(np.min(np.sum(_unit(got) * _unit(want), axis=-1)))
    return diff, cosine


def measure(encoder: str, path: Path, refs: References, dynamic_sequence: bool) -> tuple[float, float, int]:
    """Run the graph on the fixed inputs: (max abs diff, min cosine, rows compared)."""
    session = _session(path)
    if encoder == "image":
        got = session.run(None, {IMAGE_INPUT: refs.pixel_values})[0]
        diff, cosine = compare(got, refs.image_embeds)
        return diff, cosine, len(got)
    got = session.run(None, {TEXT_INPUT: refs.input_ids})[0]
    diff, cosine = compare(got, refs.text_embeds)
    rows = len(got)
    if dynamic_sequence:
        # The runtime trims padding after the longest prompt: that input must give the same answer.
        trimmed = session.run(None, {TEXT_INPUT: refs.input_ids[:, : refs.longest_prompt]})[0]
        diff2, cosine2 = compare(trimmed, refs.text_embeds)
        diff, cosine, rows = max(diff, diff2), min(cosine, cosine2), rows + len(trimmed)
    return diff, cosine, rows


def check_graph(precision: str, encoder: str, path: Path, refs: References, dynamic_sequence: bool) -> ParityFigure:
    """The graph's ParityFigure; raises ParityError when it misses its precision's tolerance."""
    tolerance = dict(TOLERANCES[precision])
    diff, cosine, rows = measure(encoder, path, refs, dynamic_sequence)
    failures = []
    if "max_abs_diff" in tolerance and not diff <= tolerance["max_abs_diff"]:
        failures.append(f"max abs diff {diff:.3g} > tolerance {tolerance['max_abs_diff']:g}")
    if "min_cosine" in tolerance and not cosine >= tolerance["min_cosine"]:
        failures.append(f"min cosine {cosine:.6f} < tolerance {tolerance['min_cosine']:g}")
    if failures:
        raise ParityError(
            f"{precision} {encoder} graph disagrees with torch on the fixed parity inputs "
            f"({rows} samples): {'; '.join(failures)}. Nothing was written."
        )
    return ParityFigure(max_abs_diff=diff, min_cosine=cosine, samples=rows, tolerance=tolerance, passed=True)
