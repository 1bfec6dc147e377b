"""ClipModel.preprocess: one image as encode_image prepares it, for callers that batch themselves."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import clip_rt
from clip_rt_fixtures.fake_bundle import build_fake_bundle


def test_preprocess_then_encode_pixels_equals_encode_image(tmp_path: Path) -> None:
    model = clip_rt.load(build_fake_bundle(tmp_path / "b"), cache=False)
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (30, 50, 3), dtype=np.uint8)).save(buf, "PNG")
    path = tmp_path / "a.png"
    path.write_bytes(buf.getvalue())
    pre = model.preprocess(path)
    assert pre.pixels.shape == (3, 16, 16) and pre.pixels.dtype == np.float32
    assert (pre.width, pre.height) == (50, 30) and pre.notes == []
    assert np.array_equal(model.encode_pixels(pre.pixels[None]), model.encode_image([path]))
    assert np.array_equal(model.preprocess(io.BytesIO(buf.getvalue())).pixels, pre.pixels)
    with pytest.raises(clip_rt.ImageLoadError, match="not an image"):
        model.preprocess(io.BytesIO(b"<html>hello</html>"))
    with pytest.raises(clip_rt.ImageLoadError, match="no such file"):
        model.preprocess(tmp_path / "missing.png")
