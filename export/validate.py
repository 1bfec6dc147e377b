"""The parity check: every exported graph against the torch model, before a bundle is accepted."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np

from clip_rt.bundle.manifest import IMAGE_INPUT, TEXT_INPUT, ParityFigure
from clip_rt.errors import ParityError

from .sample_inputs import lengths_of, pad_id_of

# Per precision: the figures a graph must meet (documented in docs/bundle-format.md).
# fp32 must reproduce torch to float rounding; fp16/int8 change the numbers, so what is held
# is the direction of the embedding (cosine), which is all CLIP similarity uses.
# int8 graphs (static, calibrated) must also be batch-independent: an input encoded alone and
# within a batch may differ by float rounding only.
TOLERANCES: dict[str, dict[str, float]] = {
    "fp32": {"max_abs_diff": 1e-4},
    "fp16": {"min_cosine": 0.999},
    "int8": {"min_cosine": 0.999, "batch_max_abs_diff": 1e-5},
}
# Per (precision, encoder) refinements of TOLERANCES. Text int8: every prompt is one of a few
# hundred class prompts whose ensemble is averaged, and the measured static (and dynamic) int8
# text towers of ViT-B-32 land at 0.998-0.999 (docs/export.md); the image bound is the project's accuracy goal.
ENCODER_TOLERANCES: dict[tuple[str, str], dict[str, float]] = {("int8", "text"): {"min_cosine": 0.998}}
BATCH_ROWS = 8  # inputs encoded alone and together for the batch-independence figure


def tolerance_for(precision: str, encoder: str) -> dict[str, float]:
    return dict(TOLERANCES[precision], **ENCODER_TOLERANCES.get((precision, encoder), {}))


@dataclass
class References:
    """Fixed inputs and the torch model's L2-normalised outputs for them.

    Images: the generated scenes, then the held-out photos (calibration.held_out_photos) where
    scikit-image is installed. Prompts: sample_inputs.PROMPTS, then one prompt per zero-shot
    label (calibration.HELD_OUT_LABELS), whose embeddings are the classes of the top-1 check.
    Nothing here is used for calibration.
    """

    pixel_values: np.ndarray  # float32 (N, 3, H, W)
    image_embeds: np.ndarray  # float32 (N, D)
    input_ids: np.ndarray  # int64 (M, context_length)
    text_embeds: np.ndarray  # float32 (M, D)
    longest_prompt: int  # tokens in the longest prompt, SOT and EOT included
    image_names: list[str] = field(default_factory=list)
    labels: int = 0  # the last *labels* prompts are the zero-shot classes
    pad_token_id: int = 0  # the tokenizer's padding id (rows are padded on the right)

    @property
    def photos(self) -> int:
        return sum(not n.startswith("scene") for n in self.image_names)

    @property
    def class_embeds(self) -> np.ndarray:
        return self.text_embeds[len(self.text_embeds) - self.labels :]

    def describe(self) -> str:
        return (
            f"{len(self.pixel_values)} images ({len(self.pixel_values) - self.photos} generated scenes, "
            f"{self.photos} held-out photos and crops), {len(self.input_ids)} prompts ({self.labels} zero-shot "
            "labels)"
        )


def torch_references(model: Any, tokenizer: Any) -> References:
    import torch
    import torch.nn.functional as F

    from .calibration import held_out_photos, label_prompts
    from .sample_inputs import PROMPTS, preprocessed_images, sample_images, transform_for

    scenes = preprocessed_images(model)
    held = held_out_photos()
    transform = transform_for(model)
    pixels = torch.cat([scenes, *([torch.stack([transform(i) for i in held.images])] if held.images else [])])
    names = [f"scene {i}" for i in range(len(sample_images()))] + held.names
    labels = label_prompts()
    ids = tokenizer(list(PROMPTS) + labels)
    pad = pad_id_of(tokenizer)
    with torch.no_grad():
        image = F.normalize(model.encode_image(pixels), dim=-1)
        text = F.normalize(model.encode_text(ids), dim=-1)
    longest = int(lengths_of(ids.numpy(), pad).max())
    return References(
        pixel_values=pixels.numpy().astype(np.float32),
        image_embeds=image.numpy().astype(np.float32),
        input_ids=ids.numpy().astype(np.int64),
        text_embeds=text.numpy().astype(np.float32),
        longest_prompt=longest,
        image_names=names,
        labels=len(labels),
        pad_token_id=pad,
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


def _top1(image: np.ndarray, classes: np.ndarray) -> np.ndarray:
    return np.argmax(_unit(image) @ _unit(classes).T, axis=-1)


@dataclass
class Measured:
    max_abs_diff: float
    min_cosine: float
    rows: int
    top1_agreement: float
    batch_max_abs_diff: float


def measure(encoder: str, path: Path, refs: References, dynamic_sequence: bool) -> Measured:
    """Run the graph on the fixed inputs: agreement with torch, zero-shot top-1 agreement and
    batch independence."""
    session = _session(path)
    if encoder == "image":
        got = session.run(None, {IMAGE_INPUT: refs.pixel_values})[0]
        diff, cosine = compare(got, refs.image_embeds)
        top1 = _top1(got, refs.class_embeds) == _top1(refs.image_embeds, refs.class_embeds)
        rows = np.linspace(0, len(got) - 1, min(BATCH_ROWS, len(got))).round().astype(int)
        batch = refs.pixel_values[rows]
        together = session.run(None, {IMAGE_INPUT: batch})[0]
        alone_rows = [session.run(None, {IMAGE_INPUT: batch[i : i + 1]})[0] for i in range(len(batch))]
        batch_diff = float(np.max(np.abs(together - np.concatenate(alone_rows))))
        return Measured(diff, cosine, len(got), float(top1.mean()), batch_diff)
    ids = refs.input_ids
    got = session.run(None, {TEXT_INPUT: ids})[0]
    diff, cosine = compare(got, refs.text_embeds)
    outputs = [got]
    if dynamic_sequence:
        # The runtime trims padding after the longest prompt: that input must give the same answer.
        trimmed = session.run(None, {TEXT_INPUT: ids[:, : refs.longest_prompt]})[0]
        diff2, cosine2 = compare(trimmed, refs.text_embeds)
        diff, cosine = max(diff, diff2), min(cosine, cosine2)
        outputs.append(trimmed)
    want = _top1(refs.image_embeds, refs.class_embeds)
    top1 = min(float(np.mean(_top1(refs.image_embeds, out[len(out) - refs.labels :]) == want)) for out in outputs)
    # A prompt alone (trimmed to its own length, as the runtime does) vs among prompts of other lengths.
    rows = np.linspace(0, len(ids) - 1, min(BATCH_ROWS, len(ids))).round().astype(int)
    batch = ids[rows]
    lengths = lengths_of(batch, refs.pad_token_id)
    if dynamic_sequence:
        together = session.run(None, {TEXT_INPUT: batch[:, : int(lengths.max())]})[0]
        alone = [session.run(None, {TEXT_INPUT: batch[i : i + 1, : max(2, int(n))]})[0] for i, n in enumerate(lengths)]
    else:
        together = session.run(None, {TEXT_INPUT: batch})[0]
        alone = [session.run(None, {TEXT_INPUT: batch[i : i + 1]})[0] for i in range(len(batch))]
    batch_diff = float(np.max(np.abs(together - np.concatenate(alone))))
    return Measured(diff, cosine, sum(len(o) for o in outputs), top1, batch_diff)


def check_graph(
    precision: str,
    encoder: str,
    path: Path,
    refs: References,
    dynamic_sequence: bool,
    overrides: Optional[dict[str, float]] = None,
) -> ParityFigure:
    """The graph's ParityFigure; raises ParityError when it misses its precision's tolerance
    (TOLERANCES, with *overrides* on top: an explicit, recorded choice of the exporter)."""
    tolerance = dict(tolerance_for(precision, encoder), **(overrides or {}))
    m = measure(encoder, path, refs, dynamic_sequence)
    failures = []
    if "max_abs_diff" in tolerance and not m.max_abs_diff <= tolerance["max_abs_diff"]:
        failures.append(f"max abs diff {m.max_abs_diff:.3g} > tolerance {tolerance['max_abs_diff']:g}")
    if "min_cosine" in tolerance and not m.min_cosine >= tolerance["min_cosine"]:
        failures.append(f"min cosine {m.min_cosine:.6f} < tolerance {tolerance['min_cosine']:g}")
    if "batch_max_abs_diff" in tolerance and not m.batch_max_abs_diff <= tolerance["batch_max_abs_diff"]:
        failures.append(
            f"not batch-independent: alone vs in a batch of {BATCH_ROWS} differ by "
            f"{m.batch_max_abs_diff:.3g} > tolerance {tolerance['batch_max_abs_diff']:g}"
        )
    if failures:
        raise ParityError(
            f"{precision} {encoder} graph disagrees with torch on the held-out parity inputs "
            f"({m.rows} samples): {'; '.join(failures)}. Nothing was written."
        )
    return ParityFigure(
        max_abs_diff=m.max_abs_diff,
        min_cosine=m.min_cosine,
        samples=m.rows,
        tolerance=tolerance,
        passed=True,
        top1_agreement=round(m.top1_agreement, 4),
        batch_max_abs_diff=m.batch_max_abs_diff,
    )
