"""Model families beyond OpenAI's CLIP, exported from their real open_clip architectures with
seeded random weights (no weights can be downloaded here) and compared with open_clip in
PyTorch end to end: SigLIP and SigLIP2 (Hugging Face SentencePiece/Gemma tokenizers, sigmoid
scoring), an XLM-R multilingual tower (Chinese labels through ``classify --report``) and
MobileCLIP (convolutional image tower, int8). ViT-B-32 and RN50 are in test_model.py and
test_export.py. Tokenizers: the small ones of tests/hf_tokenizers.py, shaped like the real ones.

Each family is exported once per module (fp32 at the smallest architecture of the family;
about one to three minutes each on 2 cores): ``pytest -m slow tests/test_model_families.py``.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

import hf_tokenizers

torch = pytest.importorskip("torch")
open_clip = pytest.importorskip("open_clip")
pytest.importorskip("transformers")
pytest.importorskip("skimage")

import clip_rt
from clip_rt.bundle.manifest import read_manifest
from clip_rt_export import export_bundle
from clip_rt_export.load import WeightsSource, load_model

pytestmark = [pytest.mark.torch, pytest.mark.slow]

PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "motorcycle_right")
TEXTS = [
    "a photo of a cat",
    "an astronaut",
    "Café au lait, s'il vous plaît!",
    "a red rocket on a launch pad",
    "一只猫的照片",
    "",
]
LABELS = ["cat", "astronaut", "coffee", "rocket", "motorcycle"]


def _photos(folder: Path) -> list[Path]:
    import skimage.data
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for name in PHOTOS:
        data = (
            getattr(skimage.data, name.replace("_right", ""))()
            if name != "motorcycle_right"
            else skimage.data.stereo_motorcycle()[1]
        )
        path = folder / f"{name}.jpg"
        Image.fromarray(data).save(path, quality=95)
        out.append(path)
    return out


class Family:
    """One exported architecture and the open_clip model it came from (same seed)."""

    def __init__(
        self,
        root: Path,
        arch: str,
        tokenizer_kind: str | None,
        precisions: tuple[str, ...] = ("fp32",),
        int8_min_cosine: float | None = None,
    ) -> None:
        self.arch = arch
        self.tokenizer = hf_tokenizers.build(tokenizer_kind, root / "tokenizer") if tokenizer_kind else None
        self.bundle = export_bundle(
            arch,
            "none",
            precisions=precisions,
            output=root / arch,
            seed=0,
            tokenizer=self.tokenizer,
            int8_min_cosine=int8_min_cosine,
        )
        self.photos = _photos(root / "photos")

    def reference(self) -> Any:
        """open_clip's model and tokenizer, built as the export built them (seed 0)."""
        return load_model(self.arch, WeightsSource("random", None), seed=0, tokenizer=self.tokenizer)

    def torch_embeddings(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray, Any]:
        from PIL import Image

        ref = self.reference()
        cfg = ref.model.visual.preprocess_cfg
        transform = open_clip.image_transform(
            cfg["size"],
            is_train=False,
            mean=cfg["mean"],
            std=cfg["std"],
            resize_mode=cfg["resize_mode"],
            interpolation=cfg["interpolation"],
            fill_color=cfg["fill_color"],
        )
        pixels = torch.stack([transform(Image.open(p).convert("RGB")) for p in self.photos])
        with torch.no_grad():
            img = ref.model.encode_image(pixels, normalize=True).numpy()
            txt = ref.model.encode_text(ref.tokenizer(texts), normalize=True).numpy()
        return img, txt, ref.model


def _check_fp32_parity(family: Family) -> None:
    want_img, want_txt, _ = family.torch_embeddings(TEXTS)
    model = clip_rt.load(family.bundle, precision="fp32", cache=False)
    got_img = model.encode_image(family.photos)
    got_txt = model.encode_text(TEXTS)
    img_diff, txt_diff = float(np.abs(got_img - want_img).max()), float(np.abs(got_txt - want_txt).max())
    print(f"\n{family.arch} fp32 vs open_clip: image {img_diff:.2e}, text {txt_diff:.2e}")
    assert img_diff <= 1e-4 and txt_diff <= 1e-4
    m = read_manifest(family.bundle)
    assert m.parity["fp32"]["image"].max_abs_diff <= 1e-4 and m.parity["fp32"]["text"].max_abs_diff <= 1e-4


def _check_sigmoid_zero_shot(family: Family) -> None:
    """clip_rt's zero-shot scores equal open_clip's sigmoid(logit_scale * x + logit_bias)."""
    prompts = [f"a photo of a {label}." for label in LABELS]
    img, txt, ref = family.torch_embeddings(prompts)
    with torch.no_grad():
        want = torch.sigmoid(
            torch.from_numpy(img) @ torch.from_numpy(txt).T * ref.logit_scale.exp() + ref.logit_bias
        ).numpy()
    model = clip_rt.load(family.bundle, cache=False)
    assert model.scoring == "sigmoid" and model.logit_bias == pytest.approx(float(ref.logit_bias.detach()))
    results = model.classify(family.photos, labels=LABELS, templates=["a photo of a {}."])
    got = np.array([[r.scores[label] for label in LABELS] for r in results])
    print(
        f"\n{family.arch} sigmoid zero-shot vs open_clip: max abs diff {np.abs(got - want).max():.2e}, "
        f"max relative {np.max(np.abs(got - want) / want):.2e}"
    )
    np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-7)
    sim = model.similarity(family.photos[0], prompts)
    np.testing.assert_allclose(sim, want[0], rtol=1e-3, atol=1e-7)


# -- SigLIP ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def siglip(tmp_path_factory: pytest.TempPathFactory) -> Family:
    return Family(tmp_path_factory.mktemp("siglip"), "ViT-B-16-SigLIP", "t5")


def test_siglip_manifest(siglip: Family) -> None:
    m = read_manifest(siglip.bundle)
    assert m.scoring == "sigmoid" and m.logit_bias is not None and m.format_version == 2
    assert m.text.tokenizer_kind == "hf" and m.text.clean == "canonicalize"
    assert m.text.context_length == 64 and m.text.pad_token_id == 1 and m.text.vocab_size == 32000
    assert m.text.dynamic_sequence is False  # pooled at the last position: padding matters
    assert m.text.pooling == "last"


def test_siglip_fp32_matches_open_clip(siglip: Family) -> None:
    _check_fp32_parity(siglip)


def test_siglip_sigmoid_zero_shot_equals_open_clip(siglip: Family) -> None:
    _check_sigmoid_zero_shot(siglip)


# -- SigLIP2 --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def siglip2(tmp_path_factory: pytest.TempPathFactory) -> Family:
    return Family(tmp_path_factory.mktemp("siglip2"), "ViT-B-32-SigLIP2-256", "gemma")


def test_siglip2_fp32_matches_open_clip_and_scores_with_sigmoid(siglip2: Family) -> None:
    m = read_manifest(siglip2.bundle)
    assert m.scoring == "sigmoid" and m.text.vocab_size == 256000 and m.text.pad_token_id == 0
    _check_fp32_parity(siglip2)
    _check_sigmoid_zero_shot(siglip2)


# -- XLM-R multilingual tower -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def xlmr(tmp_path_factory: pytest.TempPathFactory) -> Family:
    return Family(tmp_path_factory.mktemp("xlmr"), "xlm-roberta-base-ViT-B-32", "xlmr")


def test_xlmr_manifest_and_parity(xlmr: Family) -> None:
    m = read_manifest(xlmr.bundle)
    assert m.scoring == "softmax" and m.text.tokenizer_kind == "hf" and m.text.pad_token_id == 1
    assert m.text.dynamic_sequence is True and m.text.pooling == "mean"  # padding masked out: trimmed
    _check_fp32_parity(xlmr)


def test_chinese_labels_classify_report_end_to_end(xlmr: Family, tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    from clip_rt.cli import main

    labels = ["猫", "宇航员", "咖啡", "火箭", "摩托车"]
    template = "一张{}的照片"
    report, out = tmp_path / "report", tmp_path / "results.csv"
    r = CliRunner().invoke(
        main,
        [
            "classify",
            *map(str, xlmr.photos),
            "--labels",
            ",".join(labels),
            "--template",
            template,
            "--model",
            str(xlmr.bundle),
            "--report",
            str(report),
            "-o",
            str(out),
        ],
    )
    assert r.exit_code == 0, r.output
    with open(report / "results.csv", encoding="utf-8-sig", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [row["label"] in labels for row in rows] == [True] * len(xlmr.photos)
    assert {f"score_{lab}" for lab in labels} <= set(rows[0])
    summary = json.loads((report / "summary.json").read_text(encoding="utf-8"))
    assert list(summary["classes"]) == labels and summary["classified"] == len(xlmr.photos)
    assert (report / "class_distribution.png").stat().st_size > 0
    # the scores are open_clip's: its HF tokenizer on the Chinese prompts, its towers, softmax
    img, txt, ref = xlmr.torch_embeddings([template.format(lab) for lab in labels])
    want = torch.softmax(torch.from_numpy(img @ txt.T) * ref.logit_scale.detach().exp(), dim=-1).numpy()
    got = np.array([[float(row[f"score_{lab}"]) for lab in labels] for row in rows])
    np.testing.assert_allclose(got, want, atol=2e-6)  # the CSV keeps 6 decimals


# -- MobileCLIP (convolutional image tower, int8) ---------------------------------------------------
@pytest.fixture(scope="module")
def mobileclip(tmp_path_factory: pytest.TempPathFactory) -> Family:
    return Family(tmp_path_factory.mktemp("mobileclip"), "MobileCLIP-S1", None, precisions=("fp32", "int8"))


def test_mobileclip_fp32_matches_open_clip_and_int8_quantises_convolutions(mobileclip: Family) -> None:
    _check_fp32_parity(mobileclip)
    m = read_manifest(mobileclip.bundle)
    q = m.quantization_of("int8", "image")
    assert q is not None and "Conv" in q.ops and q.batch_independent
    fig = m.parity["int8"]["image"]
    print(f"\nMobileCLIP-S1 int8 image: min cosine {fig.min_cosine:.6f}, top-1 agreement {fig.top1_agreement}")
    assert fig.passed and fig.min_cosine >= fig.tolerance["min_cosine"]
