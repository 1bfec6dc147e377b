"""A continued run (`classify --resume`, `index` on an existing index) takes the precision of the
output it continues when --precision is not given; an explicit different one is refused."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from PIL import Image

from clip_rt.cli import common, main
from clip_rt.errors import BundleError
from clip_rt.outputs.search_index import INDEX_FILE
from test_cli_classify import FakeModel


def invoke(args: list[str]):  # noqa: ANN201
    return CliRunner().invoke(main, args, catch_exceptions=False)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The torch-free tiny bundle, fp32 (the CPU default) and fp16, run by the real runtime."""
    from clip_rt_fixtures.fake_bundle import build_fake_bundle

    return build_fake_bundle(tmp_path_factory.mktemp("bundle") / "tiny", precisions=("fp32", "fp16"))


def images(folder: Path, n: int = 3) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        if (folder / f"img{i}.png").exists():
            continue
        Image.new("RGB", (20 + i, 16), (40 * i, 200 - 40 * i, 90)).save(folder / f"img{i}.png")
    return folder


def test_resume_follows_the_outputs_precision(bundle: Path, tmp_path: Path) -> None:
    imgs = images(tmp_path / "imgs")
    out = tmp_path / "run.jsonl"
    first = invoke(
        ["classify", str(imgs / "img0.png"), "-l", "a,b", "-m", str(bundle), "--precision", "fp16", "-o", str(out)]
    )
    assert first.exit_code == 0, first.output
    resumed = invoke(["classify", str(imgs), "-l", "a,b", "-m", str(bundle), "-o", str(out), "--resume"])
    assert resumed.exit_code == 0, resumed.output
    assert "3 processed, 0 failed, 1 already done" in resumed.stderr
    assert json.loads((tmp_path / "run.jsonl.clip-rt.json").read_text())["precision"] == "fp16"
    assert len(out.read_text().splitlines()) == 3

    other = invoke(
        ["classify", str(imgs), "-l", "a,b", "-m", str(bundle), "-o", str(out), "--resume", "--precision", "fp32"]
    )
    assert other.exit_code == 1
    assert "holds fp16 results and this run asks for --precision fp32" in other.output
    assert "leave --precision out" in other.output
    same = invoke(
        ["classify", str(imgs), "-l", "a,b", "-m", str(bundle), "-o", str(out), "--resume", "--precision", "fp16"]
    )
    assert same.exit_code == 0 and "3 already done" in same.stderr
    # Without --resume the output starts over, in the default precision.
    fresh = invoke(["classify", str(imgs), "-l", "a,b", "-m", str(bundle), "-o", str(out)])
    assert fresh.exit_code == 0
    assert json.loads((tmp_path / "run.jsonl.clip-rt.json").read_text())["precision"] == "fp32"


def test_reindex_follows_the_index_precision(bundle: Path, tmp_path: Path) -> None:
    imgs = images(tmp_path / "imgs")
    idx = tmp_path / "idx"
    assert invoke(["index", str(imgs), "-o", str(idx), "-m", str(bundle), "--precision", "fp16"]).exit_code == 0
    images(imgs, n=4)  # one new image
    again = invoke(["index", str(imgs), "-o", str(idx), "-m", str(bundle)])
    assert again.exit_code == 0, again.output
    assert "(1 new, 0 changed, 0 removed, 3 unchanged)" in again.stderr
    assert json.loads((idx / INDEX_FILE).read_text())["precision"] == "fp16"
    assert invoke(["search", str(idx), "a photo"]).exit_code == 0

    other = invoke(["index", str(imgs), "-o", str(idx), "-m", str(bundle), "--precision", "fp32"])
    assert other.exit_code == 1
    assert "holds fp16 results and this run asks for --precision fp32" in other.output
    rebuilt = invoke(["index", str(imgs), "-o", str(idx), "-m", str(bundle), "--rebuild"])
    assert rebuilt.exit_code == 0 and "(4 new" in rebuilt.stderr
    assert json.loads((idx / INDEX_FILE).read_text())["precision"] == "fp32"


class PrecisionFake(FakeModel):
    def __init__(self, precision: str, fingerprint: str = "f" * 32) -> None:
        super().__init__(fingerprint=fingerprint)
        self.precision = precision


def test_a_bundle_without_the_recorded_precision_is_reported_as_another_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    imgs = images(tmp_path / "imgs")
    out = tmp_path / "run.jsonl"
    asked: list[Any] = []

    def int8_bundle(name: str, options: Any) -> PrecisionFake:
        asked.append(options.precision)
        return PrecisionFake(options.precision or "int8")

    monkeypatch.setattr(common, "load_model", int8_bundle)
    assert invoke(["classify", str(imgs), "-l", "red,blue", "-o", str(out)]).exit_code == 0

    def other_bundle(name: str, options: Any) -> PrecisionFake:  # has fp32 only, other weights
        asked.append(options.precision)
        if options.precision not in (None, "fp32"):
            raise BundleError(f"bundle 'other' has no {options.precision!r} graphs; it has: fp32")
        return PrecisionFake("fp32", fingerprint="0" * 32)

    monkeypatch.setattr(common, "load_model", other_bundle)
    asked.clear()
    r = invoke(["classify", str(imgs), "-l", "red,blue", "-o", str(out), "--resume", "-m", "other"])
    assert asked == ["int8", None]
    assert r.exit_code == 1 and "different run" in r.output and "fingerprint" in r.output
