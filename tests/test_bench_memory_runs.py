"""bench.memory_runs: scripts/arm64-check's memory step natively (default and low-memory mode)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bench import memory_runs
from clip_rt_fixtures.fake_bundle import build_fake_bundle


def _photos(folder: Path, n: int) -> None:
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (40 + i, 60, 3), dtype=np.uint8)).save(folder / f"{i}.jpg")


@pytest.mark.slow
def test_every_run_of_the_check_natively(tmp_path: Path) -> None:
    bundle = build_fake_bundle(tmp_path / "fake", precisions=("fp32",))
    _photos(tmp_path / "photos", 3)
    image = tmp_path / "photos" / "0.jpg"
    assert (
        memory_runs.main(
            [str(bundle), "--image", str(image), "--folder", str(tmp_path / "photos"), "--out", str(tmp_path / "out")]
        )
        == 0
    )
    result = json.loads((tmp_path / "out" / "memory_runs.json").read_text())
    runs = result["bundles"]["fake"]
    assert set(runs) == {"one_image", "one_image_lowmem", "one_image_repeat", "folder", "folder_lowmem"}
    assert all(r["exit"] == 0 and r["peak_rss_mb"] > 10 for r in runs.values())
    assert runs["one_image_repeat"]["opened"] == ["image"]  # labels from the prompt cache
    assert runs["folder_lowmem"]["args"][-1] == "--low-memory" and "--low-memory" not in runs["folder"]["args"]
    assert result["images_in_folder"] == 3 and result["imports"]["exit"] == 0
    assert result["command"] == "python -m bench.memory_runs fake --image 0.jpg --folder photos --out out"


def test_usage_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _photos(tmp_path / "photos", 1)
    image = tmp_path / "photos" / "0.jpg"
    a, b = (
        build_fake_bundle(tmp_path / "x" / "m", precisions=("fp32",)),
        build_fake_bundle(tmp_path / "y" / "m", precisions=("fp32",)),
    )
    for argv, said in (
        ([str(a), "--image", str(tmp_path / "none.jpg"), "--folder", str(tmp_path)], "no such image"),
        ([str(a), "--image", str(image), "--folder", str(tmp_path / "none")], "no such folder"),
        ([str(tmp_path), "--image", str(image), "--folder", str(tmp_path)], "not a bundle"),
        ([str(a), str(b), "--image", str(image), "--folder", str(tmp_path)], "repeat one"),
    ):
        with pytest.raises(SystemExit) as exc:
            memory_runs.main(argv)
        assert exc.value.code == 2 and said in capsys.readouterr().err
