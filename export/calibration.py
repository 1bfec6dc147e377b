"""Inputs for static int8: calibration sets, and the held-out photos/prompts the gate checks.

Activation scales are measured on one set of inputs (calibration) and the accuracy gate runs
on another (held out), so the gate sees inputs the scales were not fitted to. Real photographs
come from scikit-image's bundled samples (``skimage.data``, no download) when scikit-image is
installed; otherwise the calibration falls back to generated scenes (``sample_inputs.scene``
with seeds the parity check does not use) and the manifest says so.

The split: the photos in ``HELD_OUT_PHOTOS`` (the ones the benchmarks classify, too) are never
calibrated on; ``CALIBRATION_PHOTOS`` are other samples (textures, documents, microscopy,
faces, a silhouette), plus random crops of them and some generated scenes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional

import numpy as np
from PIL import Image

from .sample_inputs import scene

# The gate's photos: varied real scenes (people, animals, objects, space, medical, grey-level).
HELD_OUT_PHOTOS = (
    "astronaut",
    "coffee",
    "chelsea",
    "rocket",
    "stereo_motorcycle",
    "hubble_deep_field",
    "retina",
    "immunohistochemistry",
    "camera",
    "colorwheel",
    "coins",
    "clock",
)
# Never in HELD_OUT_PHOTOS. ``lfw_subset`` is 200 25x25 faces; a few are used.
CALIBRATION_PHOTOS = (
    "brick",
    "grass",
    "gravel",
    "moon",
    "page",
    "text",
    "cell",
    "logo",
    "horse",
    "microaneurysms",
    "lfw_subset",
)
_FACES = 6
_CROPS_PER_PHOTO = 3
_CALIBRATION_SCENES = 16
_SCENE_SEED = 2000  # sample_inputs' parity scenes use 1000 + i
_SCENE_SIZES = ((320, 240), (256, 256), (240, 320), (400, 300))

# Text: ImageNet templates on class names that are not among the held-out labels.
CALIBRATION_CLASSES = (
    "tench",
    "goldfish",
    "great white shark",
    "hammerhead",
    "stingray",
    "rooster",
    "ostrich",
    "goldfinch",
    "house finch",
    "indigo bunting",
    "magpie",
    "chickadee",
    "bullfrog",
    "loggerhead turtle",
    "banded gecko",
    "green lizard",
    "tricycle",
    "lawn mower",
    "grand piano",
    "espresso machine",
)
_TEMPLATE_STEP = 4  # every 4th of the 80 ImageNet templates: 20 templates x 20 classes
# Long captions: activations at late token positions need calibrating too (template prompts
# end after ~15 tokens; a 38-token prompt then lost 0.4% cosine on a small model).
CALIBRATION_CAPTIONS = (
    "a crowded farmers market on a sunny saturday morning with stalls of fresh vegetables, fruit, flowers and "
    "bread, people carrying baskets and a dog waiting patiently next to a bicycle",
    "an old stone bridge over a narrow river in autumn, orange and yellow leaves floating on the water, fog "
    "rising between the trees and a church tower in the distance",
    "close-up of a mechanical wristwatch movement showing the gears, jewels and the balance wheel, studio "
    "lighting on a black background, macro photography",
    "a child in a yellow raincoat jumping into a puddle on a grey city sidewalk while her father holds an "
    "umbrella and laughs, reflections of shop windows in the water",
    "aerial view of a container port at dusk with cranes, stacks of red, blue and green containers, a cargo "
    "ship being loaded and the lights of the city behind",
    "a handwritten recipe card for apple pie with coffee stains, a rolling pin, flour and sliced apples on a "
    "wooden kitchen table",
    "scanned page of a nineteenth century botanical book: a hand-coloured engraving of a fern with latin labels "
    "and a caption in small print at the bottom",
    "screenshot of a spreadsheet with quarterly sales figures, a bar chart in the corner and several cells "
    "highlighted in red and green",
    "two hikers with heavy backpacks crossing a snowfield below a glacier under a deep blue sky, their "
    "footprints leading back towards a small red tent",
    "night photograph of a rainy street in tokyo with neon signs in japanese, taxis with their lights on and "
    "people with transparent umbrellas waiting at a crossing",
    "a plate of spaghetti with tomato sauce, basil and parmesan, a glass of red wine and a candle on a "
    "checkered tablecloth in a small italian restaurant",
    "an x-ray image of a human hand showing the bones of the fingers and the wrist, with a ring on the third "
    "finger appearing bright white",
)
# Zero-shot labels for the gate's top-1 agreement (and held-out prompts): the held-out photos'
# subjects plus distractors.
HELD_OUT_LABELS = (
    "astronaut",
    "coffee mug",
    "cat",
    "rocket",
    "motorcycle",
    "galaxy",
    "eye",
    "microscope slide",
    "camera",
    "color wheel",
    "coin",
    "clock",
    "dog",
    "car",
    "airplane",
    "tree",
    "building",
    "pizza",
    "book",
    "bicycle",
)
LABEL_TEMPLATE = "a photo of a {}."


@dataclass
class NamedImages:
    images: list[Image.Image]
    names: list[str]
    source: str  # "photos" when any real photograph is in the set, else "scenes"


def _to_rgb(array: np.ndarray) -> Image.Image:
    img = np.asarray(array)
    if img.dtype == bool:
        img = img.astype(np.uint8) * 255
    elif img.dtype != np.uint8:  # float images in [0, 1]
        img = (np.clip(img, 0.0, 1.0) * 255).astype(np.uint8)
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    if img.shape[2] == 4:  # composite RGBA over white
        alpha = img[..., 3:4].astype(np.float32) / 255.0
        img = (img[..., :3] * alpha + 255.0 * (1.0 - alpha)).astype(np.uint8)
    return Image.fromarray(np.ascontiguousarray(img[..., :3]), "RGB")


def _skimage_loader() -> Optional[Callable[[str], list[Image.Image]]]:
    try:
        import skimage.data
    except ImportError:
        return None

    def load(name: str) -> list[Image.Image]:
        data = getattr(skimage.data, name)()
        if isinstance(data, tuple):  # stereo pairs: the left view
            data = data[0]
        if name == "lfw_subset":
            return [_to_rgb(face).resize((100, 100), Image.Resampling.BICUBIC) for face in data[:_FACES]]
        return [_to_rgb(data)]

    return load


def load_photos(names: tuple[str, ...]) -> list[tuple[str, Image.Image]]:
    """The scikit-image samples in *names* that this installation has ([] without scikit-image;
    samples that need a download are skipped)."""
    load = _skimage_loader()
    if load is None:
        return []
    out = []
    for name in names:
        try:
            images = load(name)
        except (AttributeError, ImportError, OSError, ValueError):  # a sample missing from this version/install
            continue
        out += [(name if len(images) == 1 else f"{name}[{i}]", img) for i, img in enumerate(images)]
    return out


def _crop(rng: np.random.Generator, img: Image.Image, low: float, high: float) -> Image.Image:
    w, h = img.size
    cw, ch = max(1, int(w * rng.uniform(low, high))), max(1, int(h * rng.uniform(low, high)))
    x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    return img.crop((x, y, x + cw, y + ch))


def calibration_images() -> NamedImages:
    """Calibration images: CALIBRATION_PHOTOS, random crops of them, generated scenes."""
    photos = load_photos(CALIBRATION_PHOTOS)
    names, images = [n for n, _ in photos], [i for _, i in photos]
    rng = np.random.default_rng(0)
    for k in range(_CROPS_PER_PHOTO):
        for name, img in photos:
            images.append(_crop(rng, img, 0.5, 0.9))
            names.append(f"{name} crop {k + 1}")
    for i in range(_CALIBRATION_SCENES):
        images.append(scene(_SCENE_SEED + i, _SCENE_SIZES[i % len(_SCENE_SIZES)]))
        names.append(f"scene {_SCENE_SEED + i}")
    return NamedImages(images, names, "photos" if photos else "scenes")


def held_out_photos() -> NamedImages:
    """HELD_OUT_PHOTOS and a crop (mirrored every other one) of each; empty without scikit-image."""
    photos = load_photos(HELD_OUT_PHOTOS)
    names, images = [n for n, _ in photos], [i for _, i in photos]
    rng = np.random.default_rng(5)
    for k, (name, img) in enumerate(photos):
        crop = _crop(rng, img, 0.6, 0.9)
        images.append(crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if k % 2 else crop)
        names.append(f"{name} crop" + (" mirrored" if k % 2 else ""))
    return NamedImages(images, names, "photos")


def calibration_prompts() -> list[str]:
    from clip_rt.templates import IMAGENET

    return [t.format(c) for c in CALIBRATION_CLASSES for t in IMAGENET[::_TEMPLATE_STEP]] + list(CALIBRATION_CAPTIONS)


def label_prompts() -> list[str]:
    return [LABEL_TEMPLATE.format(label) for label in HELD_OUT_LABELS]


@dataclass
class CalibrationData:
    """What optimize_graph(calibration_inputs=...) runs, and how the manifest describes it."""

    feeds: list[dict[str, np.ndarray]]  # one input at a time (batch 1)
    source: str
    names: list[str]


def image_calibration(model: Any) -> CalibrationData:  # an open_clip model
    from clip_rt.bundle.manifest import IMAGE_INPUT

    from .sample_inputs import transform_for

    cal = calibration_images()
    transform = transform_for(model)
    feeds = [{IMAGE_INPUT: transform(img.convert("RGB")).unsqueeze(0).numpy().astype(np.float32)} for img in cal.images]
    return CalibrationData(feeds, cal.source, cal.names)


def text_calibration(
    tokenizer: Any,
    dynamic_sequence: bool,
    trim: bool = True,  # open_clip's tokenizer
    short_prompts: bool = False,
) -> CalibrationData:
    """The calibration prompts, each trimmed to its own length when the graph allows it and
    *trim*: the scales then come from real tokens only (padding after EOT influences nothing in
    a causal tower pooled at EOT, so clipping it is harmless). The histogram calibrations need
    equal shapes: *trim* False gives full-context inputs. *short_prompts*: also the bare class
    names (one to three words), for towers that mean-pool over their tokens, whose activations
    on a short prompt differ from those on a templated one: XLM-R (random weights) reached min
    cosine 0.876 on the held-out prompts without them (the empty prompt and "dog" worst), the
    small test tower 0.9929 without and 0.9994 with (docs/models.md)."""
    from clip_rt.bundle.manifest import TEXT_INPUT

    from .sample_inputs import lengths_of, pad_id_of

    prompts = calibration_prompts() + (list(CALIBRATION_CLASSES) if short_prompts else [])
    ids = tokenizer(prompts).numpy().astype(np.int64)
    lengths = lengths_of(ids, pad_id_of(tokenizer))
    feeds = [
        {TEXT_INPUT: ids[i : i + 1, : max(2, int(n))] if dynamic_sequence and trim else ids[i : i + 1]}
        for i, n in enumerate(lengths)
    ]
    source = (
        f"prompts: every {_TEMPLATE_STEP}th of the 80 ImageNet templates x {len(CALIBRATION_CLASSES)} class "
        f"names, and {len(CALIBRATION_CAPTIONS)} long captions (calibration.CALIBRATION_CAPTIONS)"
        + (", and the class names alone" if short_prompts else "")
    )
    return CalibrationData(feeds, source, list(CALIBRATION_CLASSES))
