"""bench.memory_repeat: the check's one-image classify child, natively, first run and repeat."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bench import memory_repeat
from clip_rt_fixtures.fake_bundle import build_fake_bundle


@pytest.mark.slow
def test_first_run_opens_both_sessions_and_the_repeat_only_the_image_one(tmp_path: Path) -> None:
    bundle = build_fake_bundle(tmp_path / "b", precisions=("fp32",))
    image = tmp_path / "photo.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 60, 3), dtype=np.uint8)).save(image)
    assert memory_repeat.main([str(image), str(bundle), "--out", str(tmp_path / "out")]) == 0
    result = json.loads((tmp_path / "out" / "memory_repeat.json").read_text())
    runs = result["bundles"][str(bundle)]
    assert runs["one_image_lowmem"]["opened"] == ["text", "image"]
    assert runs["one_image_repeat"]["opened"] == ["image"]  # labels from the prompt cache
    assert all(r["exit"] == 0 and r["peak_rss_mb"] > 10 for r in runs.values())
    assert result["command"] == "python -m bench.memory_repeat photo.jpg b --out out"  # main's own arguments


def test_usage_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    image = tmp_path / "photo.jpg"
    Image.new("RGB", (8, 8)).save(image)
    for argv, said in (
        ([str(tmp_path / "none.jpg"), str(tmp_path)], "no such image file"),
        ([str(image), str(tmp_path)], "not a bundle (no manifest.json)"),
    ):
        with pytest.raises(SystemExit) as exc:
            memory_repeat.main(argv)
        assert exc.value.code == 2 and said in capsys.readouterr().err
