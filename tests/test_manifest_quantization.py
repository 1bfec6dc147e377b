"""The manifest's quantisation record and new parity figures: round trip, and old bundles."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from clip_rt.bundle.manifest import LEGACY_INT8, Calibration, Quantization, read_manifest
from clip_rt.errors import BundleError
from clip_rt_fixtures.fake_bundle import build_fake_bundle

STATIC = Quantization(
    kind="static",
    per_channel=True,
    weights="int8",
    activations="uint8",
    ops=("MatMul", "Gemm"),
    calibration=Calibration(
        method="minmax", source="photos", inputs=("brick", "grass crop 1", "scene 2000"), samples=3
    ),
    batch_independent=True,
)


def _manifest_json(bundle: Path) -> dict:
    return json.loads((bundle / "manifest.json").read_text(encoding="utf-8"))


def test_quantization_and_parity_fields_round_trip(tmp_path: Path) -> None:
    bundle = build_fake_bundle(tmp_path / "b")
    m = read_manifest(bundle)
    m.quantization = {"int8": {"image": STATIC}}
    m.write(bundle)
    data = _manifest_json(bundle)
    assert data["quantization"]["int8"]["image"]["calibration"]["inputs"] == ["brick", "grass crop 1", "scene 2000"]
    assert data["quantization"]["int8"]["image"]["batch_independent"] is True
    again = read_manifest(bundle)
    assert again.quantization == {"int8": {"image": STATIC}}
    assert again.quantization_of("int8", "image") == STATIC
    assert again.to_dict() == m.to_dict()


def test_parity_figures_keep_top1_and_batch_figures(tmp_path: Path) -> None:
    bundle = build_fake_bundle(tmp_path / "b")
    data = _manifest_json(bundle)
    fig = {
        "max_abs_diff": 1e-3,
        "min_cosine": 0.9995,
        "samples": 32,
        "tolerance": {"min_cosine": 0.999},
        "passed": True,
        "top1_agreement": 0.96875,
        "batch_max_abs_diff": 0.0,
    }
    data["parity"] = {"fp32": {"image": fig}}
    (bundle / "manifest.json").write_text(json.dumps(data), encoding="utf-8")
    got = read_manifest(bundle).parity["fp32"]["image"]
    assert (got.top1_agreement, got.batch_max_abs_diff) == (0.96875, 0.0)


def test_old_bundles_without_the_fields_still_load(tmp_path: Path) -> None:
    """A bundle written before static int8: no ``quantization``, parity figures without the
    top-1/batch entries, an int8 graph (dynamic int8 in those bundles)."""
    bundle = build_fake_bundle(tmp_path / "b")
    data = _manifest_json(bundle)
    data.pop("quantization", None)
    data["graphs"]["int8"] = data["graphs"]["fp16"]  # any graph files: only the record matters here
    data["parity"] = {
        "fp32": {
            "image": {
                "max_abs_diff": 1e-7,
                "min_cosine": 1.0,
                "samples": 8,
                "tolerance": {"max_abs_diff": 1e-4},
                "passed": True,
            }
        }
    }
    (bundle / "manifest.json").write_text(json.dumps(data), encoding="utf-8")
    m = read_manifest(bundle)
    assert m.quantization == {}
    assert m.parity["fp32"]["image"].top1_agreement is None
    assert m.parity["fp32"]["image"].batch_max_abs_diff is None
    assert m.quantization_of("int8", "image") is LEGACY_INT8
    assert LEGACY_INT8.kind == "dynamic" and LEGACY_INT8.batch_independent is False
    assert m.quantization_of("fp32", "image") is None


def test_a_malformed_quantization_record_is_a_bundle_error(tmp_path: Path) -> None:
    bundle = build_fake_bundle(tmp_path / "b")
    data = _manifest_json(bundle)
    data["quantization"] = {"int8": {"image": {"per_channel": True}}}  # no kind
    (bundle / "manifest.json").write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(BundleError, match="malformed manifest"):
        read_manifest(bundle)
