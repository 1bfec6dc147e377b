"""The per-image items of the API: both kinds name their input the same two ways."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from clip_rt.results import ClassifiedImage, ImageEmbedding


def test_both_item_kinds_have_source_and_path() -> None:
    for make in (
        lambda src: ImageEmbedding(0, src, np.zeros(2, np.float32)),
        lambda src: ClassifiedImage(0, src, None),
    ):
        item = make(Path("photos") / "a.jpg")
        assert item.source == Path("photos/a.jpg") and item.path == "photos/a.jpg" and item.ok
        assert make("b.png").path == "b.png"
        pil = Image.new("RGB", (2, 2))
        in_memory = make(pil)
        assert in_memory.source is pil and in_memory.path is None


def test_to_dict_keys_are_unchanged() -> None:
    assert set(ImageEmbedding(1, "a.jpg", None, error="bad").to_dict()) == {
        "index",
        "source",
        "embedding",
        "width",
        "height",
        "error",
        "notes",
    }
    assert ClassifiedImage(1, "a.jpg", None, error="bad").to_dict()["path"] == "a.jpg"
