"""--labels as CJK users type them: full-width and ideographic commas separate labels; a run
with a single label (always 100 %) is warned about."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from clip_rt.cli import main
from test_cli_classify import install_fake, make_images


@pytest.mark.parametrize("spec", ["猫，犬,鳥", "猫、犬、鳥", "猫, 犬 ，鳥"])
def test_full_width_and_ideographic_commas_split_labels(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, spec: str
) -> None:
    install_fake(monkeypatch)
    imgs = make_images(tmp_path / "imgs")
    out = tmp_path / "r.jsonl"
    r = CliRunner().invoke(main, ["classify", str(imgs["a_red.png"]), "-l", spec, "-o", str(out)])
    assert r.exit_code == 0, r.output
    assert list(json.loads(out.read_text())["scores"]) == ["猫", "犬", "鳥"]
    assert "warning" not in r.stderr


def test_a_single_label_is_warned_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    install_fake(monkeypatch)
    imgs = make_images(tmp_path / "imgs")
    r = CliRunner().invoke(main, ["classify", str(imgs["a_red.png"]), str(imgs["c_blue.jpeg"]), "-l", "猫"])
    assert r.exit_code == 0, r.output
    warned = [line for line in r.stderr.splitlines() if line.startswith("warning:")]
    assert len(warned) == 1 and "only one label ('猫')" in warned[0] and "100%" in warned[0], r.stderr
