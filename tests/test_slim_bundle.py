"""Slim bundles (`clip-rt export ... --precision int8 --no-fp32`): a real export of the tiny
architecture, then info --verify, load and classify with no --precision."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from clip_rt.bundle.manifest import read_manifest, verify_files
from clip_rt.cli import main
from clip_rt.errors import InputError

TINY_CONFIG = Path(__file__).resolve().parent / "data" / "tiny-clip.json"  # as in conftest.py


def run(*args: str):  # noqa: ANN201
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


@pytest.fixture(scope="module")
def slim_bundle(tmp_path_factory: pytest.TempPathFactory, tiny_checkpoint: Path) -> Path:
    """The tiny architecture from the same checkpoint as ``tiny_bundle_dir``, int8 only, through the CLI."""
    out = tmp_path_factory.mktemp("slim") / "tiny-slim"
    result = run(
        "export",
        "tiny-clip",
        "--model-config",
        str(TINY_CONFIG),
        "--pretrained",
        str(tiny_checkpoint),
        "--precision",
        "int8",
        "--no-fp32",
        "-o",
        str(out),
    )
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == str(out)
    assert "parity fp32 image" in result.stderr  # fp32 was still checked against torch
    return out


@pytest.mark.slow
@pytest.mark.torch
def test_slim_bundle_holds_only_the_requested_precision(slim_bundle: Path, tiny_bundle_dir: Path) -> None:
    m = read_manifest(slim_bundle)
    assert m.precisions == ["int8"] and set(m.parity) == {"int8"}
    assert sorted(p.name for p in slim_bundle.iterdir()) == [
        "image_int8.onnx",
        "manifest.json",
        "parity_reference.npz",
        "text_int8.onnx",
        "tokenizer.json",
    ]
    assert set(m.files) == {"image_int8.onnx", "text_int8.onnx", "tokenizer.json", "parity_reference.npz"}
    # The fp32 graphs' embeddings of the sample inputs stay, for the runtime's derived-mode check.
    assert m.parity_reference is not None and m.parity_reference.file == "parity_reference.npz"
    verify_files(slim_bundle, m)
    assert all(fig.passed for figs in m.parity.values() for fig in figs.values())
    note = next(n for n in m.notes if n.startswith("slim bundle"))
    assert "checked against torch" in note and "image" in note and "text" in note
    assert not [p for p in slim_bundle.parent.iterdir() if p.name.startswith(".")]  # no staging left
    # The same int8 graphs as a full export from the same weights: slim is the full bundle minus fp32.
    full = read_manifest(tiny_bundle_dir)
    for encoder in ("image", "text"):
        assert m.parity["int8"][encoder].min_cosine == pytest.approx(full.parity["int8"][encoder].min_cosine, abs=1e-6)
    size = sum(e.bytes for e in m.files.values())
    assert size < sum(e.bytes for e in full.files.values()) - sum(
        full.files[g.file].bytes for g in full.graphs["fp32"].values()
    )


@pytest.mark.slow
@pytest.mark.torch
def test_slim_bundle_verifies_loads_and_classifies_without_precision(
    slim_bundle: Path, tiny_bundle_dir: Path, tmp_path: Path
) -> None:
    import clip_rt

    info = run("info", str(slim_bundle), "--verify")
    assert info.exit_code == 0, info.output
    assert "precisions:    int8 (slim bundle: no fp32 graphs" in info.output
    assert "checksums:     ok (4 files)" in info.output
    assert json.loads(run("info", str(slim_bundle), "--json").output)["slim"] is True
    assert json.loads(run("info", str(tiny_bundle_dir), "--json").output)["slim"] is False

    model = clip_rt.load(slim_bundle, cache=False)
    assert model.precision == "int8"
    full = clip_rt.load(tiny_bundle_dir, precision="int8", cache=False)
    img = Image.new("RGB", (80, 60), (200, 30, 40))
    np.testing.assert_allclose(model.encode_image([img]), full.encode_image([img]), atol=1e-5)
    np.testing.assert_allclose(model.encode_text(["a red square"]), full.encode_text(["a red square"]), atol=1e-5)

    img.save(tmp_path / "red.png")
    out = tmp_path / "run.jsonl"
    result = run("classify", str(tmp_path / "red.png"), "-l", "red,blue", "-m", str(slim_bundle), "-o", str(out))
    assert result.exit_code == 0, result.output
    record = json.loads(out.read_text().splitlines()[0])
    assert record["error"] is None and set(record["scores"]) == {"red", "blue"}
    assert json.loads((tmp_path / "run.jsonl.clip-rt.json").read_text())["precision"] == "int8"
    asked = run("classify", str(tmp_path / "red.png"), "-l", "red,blue", "-m", str(slim_bundle), "--precision", "fp32")
    assert asked.exit_code == 1 and "has no 'fp32' graphs; it has: int8" in asked.output


@pytest.mark.parametrize(
    "args, needle",
    [(["--no-fp32"], "needs another precision"), (["--precision", "fp32", "--no-fp32"], "fp32 was also asked for")],
)
def test_no_fp32_without_another_precision_is_a_usage_error(args: list[str], needle: str, tmp_path: Path) -> None:
    result = run("export", "ViT-B-32", "--pretrained", "none", "-o", str(tmp_path / "b"), *args)
    assert result.exit_code == 2, result.output
    assert needle in result.output
    assert not (tmp_path / "b").exists()


def test_normalize_precisions_for_slim_bundles() -> None:
    from clip_rt_export import normalize_precisions

    assert normalize_precisions(["int8"], include_fp32=False) == ["int8"]
    assert normalize_precisions(["int8", "fp16"], include_fp32=False) == ["fp16", "int8"]
    with pytest.raises(InputError, match="needs another precision"):
        normalize_precisions([], include_fp32=False)
