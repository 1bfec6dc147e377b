"""One zero-shot check with real pretrained weights, when ../shared/models has them.

Real weights cannot be downloaded here (no model hub), so this test reads a ViT-B-32
checkpoint from ``../shared/models`` (see its PROVENANCE.md) and skips, saying why, when
there is none. The photos are real and their content is known: scikit-image's cat, astronaut,
coffee cup and rocket.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from conftest import SHARED

torch = pytest.importorskip("torch")
open_clip = pytest.importorskip("open_clip")
skimage_data = pytest.importorskip("skimage.data")

WEIGHT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors")
LABELS = ["cat", "dog", "astronaut", "cup of coffee", "rocket", "car", "tree", "book"]
EXPECTED = {"chelsea": "cat", "astronaut": "astronaut", "coffee": "cup of coffee", "rocket": "rocket"}


def _vitb32_checkpoint() -> Path | None:
    root = SHARED / "models"
    if not root.is_dir():
        return None
    found = sorted(
        p
        for p in root.rglob("*")
        if p.suffix in WEIGHT_SUFFIXES and "vit-b-32" in str(p).lower().replace("_", "-").replace("/", "-")
    )
    return found[0] if found else None


@pytest.mark.slow
def test_real_weights_zero_shot_matches_open_clip_and_the_photos(tmp_path: Path) -> None:
    ckpt = _vitb32_checkpoint()
    if ckpt is None:
        pytest.skip(f"no ViT-B-32 checkpoint under {SHARED / 'models'}: real weights are not available here")
    from PIL import Image

    import clip_rt
    from clip_rt_export import export_bundle

    # OpenAI's weights were trained with QuickGELU; open_clip names that variant explicitly.
    arch = "ViT-B-32-quickgelu" if "openai" in str(ckpt).lower() else "ViT-B-32"
    bundle = export_bundle(arch, pretrained=str(ckpt), precisions=("fp32", "int8"), output=tmp_path / "b")
    photos = {name: Image.fromarray(getattr(skimage_data, name)()).convert("RGB") for name in EXPECTED}

    model = clip_rt.load(bundle)
    results = model.classify(list(photos.values()), LABELS, templates=clip_rt.templates.SIMPLE)
    got = {name: r.label for name, r in zip(photos, results)}
    assert got == EXPECTED

    # The same zero-shot in open_clip: identical top-1 and probabilities within 1e-3.
    ref_model, _, preprocess = open_clip.create_model_and_transforms(arch, pretrained=str(ckpt))
    tokenizer = open_clip.get_tokenizer(arch)
    with torch.no_grad():
        img = ref_model.encode_image(torch.stack([preprocess(p) for p in photos.values()]))
        img = img / img.norm(dim=-1, keepdim=True)
        classes = []
        for label in LABELS:
            t = ref_model.encode_text(tokenizer([tpl.format(label) for tpl in clip_rt.templates.SIMPLE]))
            t = (t / t.norm(dim=-1, keepdim=True)).mean(0)
            classes.append(t / t.norm())
        probs = (ref_model.logit_scale.exp() * img @ torch.stack(classes).T).softmax(-1).numpy()
    ours = np.array([[r.scores[label] for label in LABELS] for r in results])
    assert np.abs(ours - probs).max() < 1e-3
    int8 = clip_rt.load(bundle, precision="int8").classify(list(photos.values()), LABELS)
    assert [r.label for r in int8] == [r.label for r in results]
