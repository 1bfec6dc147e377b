"""`clip-rt export`, `clip-rt info`, `clip-rt models` through click's test runner."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from clip_rt.bundle.manifest import read_manifest
from clip_rt.cli import main

TINY_CONFIG = Path(__file__).resolve().parent / "data" / "tiny-clip.json"


def run(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


# -- info ---------------------------------------------------------------------------------------
def test_info_prints_the_manifest_figures(tiny_bundle_dir: Path) -> None:
    result = run("info", str(tiny_bundle_dir), "--verify")
    assert result.exit_code == 0, result.output
    out = result.output
    m = read_manifest(tiny_bundle_dir)
    assert "architecture:  tiny-clip" in out
    assert f"fingerprint:   {m.fingerprint}" in out
    assert "context 77" in out and "dynamic sequence yes" in out
    assert "checksums:     ok (8 files)" in out
    for precision in ("fp32", "fp16", "int8"):
        for encoder in ("image", "text"):
            fig = m.parity[precision][encoder]
            row = next(line for line in out.splitlines() if line.startswith(f"{precision:<9}  {encoder:<7}"))
            assert f"{fig.max_abs_diff:.2e}" in row and f"{fig.min_cosine:.6f}" in row and row.endswith("yes")
    assert "- int8:" in out
    for encoder in ("image", "text"):
        line = next(line for line in out.splitlines() if line.startswith(f"int8 {encoder}: "))
        assert "static int8 by nncf" in line and "batch-independent: yes" in line and "calibrated (nncf)" in line
        assert "top-1 agreement" in line


def test_info_json_round_trips(tiny_bundle_dir: Path) -> None:
    result = run("info", str(tiny_bundle_dir), "--json")
    assert result.exit_code == 0
    data = json.loads(result.output)
    assert data["fingerprint"] == read_manifest(tiny_bundle_dir).fingerprint
    assert data["parity"]["int8"]["text"]["passed"] is True


def test_info_verify_reports_a_corrupt_file(tiny_bundle_dir: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(tiny_bundle_dir, copy)
    with open(copy / "text_int8.onnx", "r+b") as f:
        f.seek(100)
        f.write(b"\x00\x01\x02\x03")
    result = run("info", str(copy), "--verify")
    assert result.exit_code == 1
    assert "text_int8.onnx" in result.output and "sha256" in result.output


def test_info_unknown_bundle_is_a_domain_error() -> None:
    result = run("info", "no-such-bundle")
    assert result.exit_code == 1
    assert "no bundle named 'no-such-bundle'" in result.output


# -- models -------------------------------------------------------------------------------------
def test_models_lists_the_store_and_survives_a_broken_bundle(tiny_bundle_dir: Path, clip_home: Path) -> None:
    empty = run("models")
    assert empty.exit_code == 0 and "no bundles in" in empty.output
    store = clip_home / "models"
    shutil.copytree(tiny_bundle_dir, store / tiny_bundle_dir.name)
    broken = store / "broken-bundle"
    broken.mkdir()
    (broken / "manifest.json").write_text("{not json")
    (store / ".half-written.tmp-1").mkdir()  # staging folders are not bundles
    result = run("models")
    assert result.exit_code == 0
    lines = result.stdout.splitlines()
    assert any(
        line.startswith(tiny_bundle_dir.name) and "fp32,fp16,int8" in line and "checkpoint" in line for line in lines
    )
    assert "broken-bundle" not in result.stdout  # listed: the good bundles; warned: each broken one
    assert result.stderr.splitlines() == [
        f"warning: skipped a broken bundle: {broken / 'manifest.json'}: not valid JSON "
        "(Expecting property name enclosed in double quotes: line 1 column 2 (char 1))"
    ]
    assert "half-written" not in result.output
    listed = run("models", "--json")
    assert [r["name"] for r in json.loads(listed.stdout)] == [tiny_bundle_dir.name]
    assert listed.stderr.count("warning: skipped a broken bundle") == 1


def test_models_available_lists_aliases_and_architectures() -> None:
    result = run("models", "--available")
    assert result.exit_code == 0
    assert "ViT-B/32" in result.output and "RN50" in result.output and "laion2b_s34b_b79k" in result.output


# -- export -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "args, needle",
    [
        (["export", "ViT-B-32", "--precision", "bf16"], "bf16"),
        (["export", "ViT-Q-99"], "unknown model"),
        (["export", "convnext_base_w"], "laion2b_s13b_b82k"),
        (["export", "ViT-B-32", "--pretrained", "no-such-tag"], "neither a tag"),
        (["export", "tiny-x", "--model-config", "does-not-exist.json"], "no such file"),
        (["export", "ViT-B-32", "--precision", "int8", "--calibration-method", "median"], "median"),
        (["export", "ViT-B-32", "--precision", "int8", "--int8-min-cosine", "1.5"], "1.5"),
        (["export", "ViT-B-32", "--pretrained", "none", "--calibration-method", "minmax"], "only applies to int8"),
    ],
)
def test_export_usage_errors_exit_2(args: list[str], needle: str) -> None:
    if "--precision" not in args or "--pretrained" in args:  # click checks options; the rest needs open_clip
        pytest.importorskip("open_clip")
    result = run(*args)
    assert result.exit_code == 2, result.output
    assert needle in result.output


def test_export_domain_errors_exit_1(tmp_path: Path) -> None:
    pytest.importorskip("open_clip")
    offline = run("export", "ViT-B/32", "-o", str(tmp_path / "b"))  # HF_HUB_OFFLINE=1 (conftest)
    assert offline.exit_code == 1
    assert "could not fetch the weights for ViT-B-32 --pretrained openai" in offline.output
    assert not (tmp_path / "b").exists()
    existing = tmp_path / "existing"
    existing.mkdir()
    (existing / "x").write_text("x")
    clash = run("export", "ViT-B-32", "--pretrained", "none", "-o", str(existing))
    assert clash.exit_code == 1 and "--force" in clash.output
    siglip = run("export", "ViT-B-16-SigLIP", "--pretrained", "none", "-o", str(tmp_path / "s"))
    assert siglip.exit_code == 1 and "needs the T5 SentencePiece (SigLIP) tokenizer" in siglip.output
    assert "--tokenizer DIR" in siglip.output and not (tmp_path / "s").exists()


@pytest.mark.slow
def test_export_into_the_store_then_list_it(clip_home: Path) -> None:
    pytest.importorskip("torch")
    pytest.importorskip("open_clip")
    # click >= 8.2: split streams
    result = run("export", "tiny-clip", "--model-config", str(TINY_CONFIG), "--seed", "1")
    assert result.exit_code == 0, result.output
    expected = clip_home / "models" / "tiny-clip-random"
    assert result.stdout.strip() == str(expected)
    assert "parity fp32 image" in result.stderr
    m = read_manifest(expected)
    assert m.pretrained is None and m.precisions == ["fp32"] and "random weights (seed 1)" in m.notes
    listed = run("models")
    assert any(line.startswith("tiny-clip-random") and "random" in line for line in listed.output.splitlines())
    info = run("info", "tiny-clip-random")
    assert info.exit_code == 0 and "pretrained:    random weights" in info.output
