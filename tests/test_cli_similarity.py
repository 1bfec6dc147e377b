"""`clip-rt similarity IMAGE TEXT...`: probabilities, JSON, --plot, errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from clip_rt.cli import main
from test_cli_classify import install_fake


@pytest.fixture()
def red_image(tmp_path: Path) -> Path:
    path = tmp_path / "red.png"
    Image.new("RGB", (60, 40), (230, 20, 20)).save(path)
    return path


def test_table_and_json(red_image: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    install_fake(monkeypatch)
    r = CliRunner().invoke(main, ["similarity", str(red_image), "a red box", "a blue box"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    lines = r.stdout.splitlines()
    assert lines[0].split() == ["prob", "text"]
    assert lines[1].endswith("a red box") and float(lines[1].split("%")[0]) > 99
    r = CliRunner().invoke(main, ["similarity", str(red_image), "blue", "red", "green", "--format", "json"])
    probs = json.loads(r.stdout)["probabilities"]
    assert list(probs) == ["blue", "red", "green"] and max(probs, key=probs.get) == "red"
    assert sum(probs.values()) == pytest.approx(1, abs=1e-5)


def test_plot_writes_png(red_image: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    install_fake(monkeypatch)
    plot = tmp_path / "plot.png"
    r = CliRunner().invoke(main, ["similarity", str(red_image), "red", "青い blue", "--plot", str(plot)])
    assert r.exit_code == 0, r.output
    with Image.open(plot) as im:
        assert im.format == "PNG" and im.width > 600 and im.height > 200
        pixels = np.asarray(im.convert("RGB")).reshape(-1, 3)
    assert len(np.unique(pixels, axis=0)) > 20  # an image and bars, not a blank canvas


def test_errors(red_image: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    runner = CliRunner()
    r = runner.invoke(main, ["similarity", str(red_image), "a cat"])
    assert r.exit_code == 1 and "clip-rt export ViT-B-32 --pretrained openai" in r.output
    install_fake(monkeypatch)
    assert runner.invoke(main, ["similarity", str(red_image)]).exit_code == 2  # no texts
    assert runner.invoke(main, ["similarity", str(tmp_path / "nope.png"), "a"]).exit_code == 2
    assert runner.invoke(main, ["similarity", str(red_image), " "]).exit_code == 2
    assert runner.invoke(main, ["similarity", str(red_image), "a", "--precision", "fp64"]).exit_code == 2


def test_real_bundle(real_bundle: Path, red_image: Path) -> None:
    r = CliRunner().invoke(
        main,
        [
            "similarity",
            str(red_image),
            "a red car",
            "a photo of a dog",
            "--format",
            "json",
            "--model",
            str(real_bundle),
        ],
    )
    assert r.exit_code == 0, r.output
    assert sum(json.loads(r.stdout)["probabilities"].values()) == pytest.approx(1, abs=1e-5)
