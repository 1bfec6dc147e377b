"""Static (calibrated) int8 at export: what is recorded, batch independence, the gate."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from clip_rt.bundle.manifest import read_manifest
from clip_rt.errors import InputError, ParityError

torch = pytest.importorskip("torch")
pytest.importorskip("open_clip")
ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

from clip_rt_export import calibration, export_bundle, optimize, validate  # noqa: E402

TINY_CONFIG = Path(__file__).resolve().parent / "data" / "tiny-clip.json"
TINY_ARCH = "tiny-clip"

pytestmark = pytest.mark.torch


def _session(path: Path):  # noqa: ANN202
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def test_int8_graphs_are_static_and_recorded(tiny_bundle_dir: Path) -> None:
    m = read_manifest(tiny_bundle_dir)
    for encoder in ("image", "text"):
        q = m.quantization["int8"][encoder]
        assert q.kind == "static" and q.per_channel is True and q.batch_independent is True
        # The default quantiser is NNCF (symmetric int8 weights; its activations are int8 QDQ).
        assert q.method == "nncf" and q.weights == "int8" and q.activations in ("int8", "uint8", "int8/uint8")
        assert q.parameters["preset"] == "performance" and q.parameters["model_type"] == "transformer"
        assert q.parameters["activation_ranges"] == "minmax" and q.parameters["smooth_quant_matmul_alpha"] == "-1 (off)"
        assert q.parameters["subset_size"] == str(q.calibration.samples if q.calibration else -1)
        assert q.calibration is not None and q.calibration.method == "nncf"
        assert q.calibration.samples >= len(q.calibration.inputs) > 0
        # attention's key transpose sits at its MatMul (attention_layout.py), one per layer, exact
        assert q.parameters["graph_rewrites"].startswith("attention key transpose moved next to its MatMul")
        assert "bit-identical" in q.parameters["graph_rewrites"]
        fig = m.parity["int8"][encoder]
        assert fig.batch_max_abs_diff is not None and fig.batch_max_abs_diff <= 1e-5
        assert fig.top1_agreement is not None and 0.0 <= fig.top1_agreement <= 1.0
    # the token embedding's lookup gathers int8 rows (embedding_gather.py): no dequantised copy
    # of the whole table per call; the image tower has no lookup to rewrite
    assert (
        "embedding lookups gather int8 rows before dequantising (1x; outputs bit-identical"
        in m.quantization["int8"]["text"].parameters["graph_rewrites"]
    )
    assert "embedding" not in m.quantization["int8"]["image"].parameters["graph_rewrites"]
    text_graph = onnx.load(str(tiny_bundle_dir / m.graph("int8", "text").file)).graph
    producer = {o: n for n in text_graph.node for o in n.output}
    lookups = [n for n in text_graph.node if n.op_type == "Gather" and n.input[0] in producer]
    assert not [n for n in lookups if producer[n.input[0]].op_type == "DequantizeLinear"]
    image = m.quantization["int8"]["image"]
    # Read from the graph: the ops whose weights are int8 (the token embedding's Gather included).
    assert {"MatMul", "Gemm"} <= set(image.ops) and {"MatMul", "Gather"} <= set(m.quantization["int8"]["text"].ops)
    # scikit-image is installed with the [test] extra: real photos were calibrated on ...
    assert image.calibration.source == "photos"
    assert "brick" in image.calibration.inputs and any(n.startswith("scene") for n in image.calibration.inputs)
    # ... and none of the photos the gate checks.
    names = {n.split(" ")[0].split("[")[0] for n in image.calibration.inputs}
    assert not names & set(calibration.HELD_OUT_PHOTOS)
    # The gate ran on the held-out photos: scenes + photos + their crops.
    assert m.parity["int8"]["image"].samples == 8 + 2 * len(calibration.HELD_OUT_PHOTOS)


def test_int8_graph_ops_are_integer_kernels(tiny_bundle_dir: Path) -> None:
    import onnx

    m = read_manifest(tiny_bundle_dir)
    model = onnx.load(str(tiny_bundle_dir / m.graph("int8", "image").file))
    ops = [n.op_type for n in model.graph.node]
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops
    assert "DynamicQuantizeLinear" not in ops  # no per-batch scales anywhere
    text = onnx.load(str(tiny_bundle_dir / m.graph("int8", "text").file))
    assert "DynamicQuantizeLinear" not in [n.op_type for n in text.graph.node]


def test_embeddings_do_not_depend_on_the_batch(tiny_bundle_dir: Path) -> None:
    import clip_rt

    rng = np.random.default_rng(3)
    pixels = rng.standard_normal((6, 3, 64, 64)).astype(np.float32)
    image = _session(tiny_bundle_dir / read_manifest(tiny_bundle_dir).graph("int8", "image").file)
    together = image.run(None, {"pixel_values": pixels})[0]
    alone = np.concatenate([image.run(None, {"pixel_values": pixels[i : i + 1]})[0] for i in range(6)])
    assert np.abs(together - alone).max() <= 1e-5
    # Text through the runtime, which trims each batch to its longest prompt.
    model = clip_rt.load(tiny_bundle_dir, precision="int8", cache=False)
    prompts = ["a cat", "a photo of a dog on a red sofa next to a window at night", "x", "two birds"]
    batch = model.encode_text(prompts)
    single = np.concatenate([model.encode_text([p]) for p in prompts])
    assert np.abs(batch - single).max() <= 1e-5


@pytest.mark.slow
def test_dynamic_int8_would_fail_the_batch_gate(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The gate catches a batch-dependent graph: dynamic int8 (per-batch activation scale)."""
    monkeypatch.setitem(
        optimize.RECOMMENDED_INT8,
        "image",
        {"kind": "int8-dynamic", "per_channel": True, "op_types": ("MatMul", "Gemm")},
    )
    monkeypatch.setitem(validate.TOLERANCES, "int8", {"min_cosine": 0.9, "batch_max_abs_diff": 1e-5})
    out = tmp_path / "tiny"
    with pytest.raises(ParityError, match=r"int8 image graph .*not batch-independent.*tolerance 1e-05"):
        export_bundle(
            TINY_ARCH,
            "none",
            precisions=("int8",),
            output=out,
            model_config=TINY_CONFIG,
            seed=0,
            int8_method="onnxruntime",
        )
    assert sorted(p.name for p in tmp_path.iterdir()) == []


@pytest.mark.slow
def test_bad_calibration_fails_the_gate_and_writes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Scales fitted to near-constant images clip real ones: the export must refuse the graph."""
    real = calibration.image_calibration

    def squashed(model):  # noqa: ANN001, ANN202
        data = real(model)
        data.feeds = [{k: v * 0.01 for k, v in feed.items()} for feed in data.feeds]
        return data

    monkeypatch.setattr(calibration, "image_calibration", squashed)
    out = tmp_path / "tiny"
    with pytest.raises(ParityError, match=r"int8 image graph .*min cosine .* < tolerance 0\.999"):
        export_bundle(TINY_ARCH, "none", precisions=("int8",), output=out, model_config=TINY_CONFIG, seed=0)
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_calibration_method_is_checked_and_recorded(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="calibration method must be one of minmax, percentile, entropy"):
        export_bundle(
            TINY_ARCH,
            "none",
            precisions=("int8",),
            output=tmp_path / "a",
            model_config=TINY_CONFIG,
            calibration_method="median",
        )
    with pytest.raises(InputError, match="only applies to int8"):
        export_bundle(
            TINY_ARCH, "none", output=tmp_path / "b", model_config=TINY_CONFIG, calibration_method="percentile"
        )


def test_int8_method_is_checked() -> None:
    from clip_rt_export.convert import resolve_int8_method

    assert resolve_int8_method(None, None) is None  # the default per encoder: int8_method_for
    assert resolve_int8_method(None, "percentile") == "onnxruntime"  # its calibrators imply onnxruntime
    assert resolve_int8_method("ort", None) == resolve_int8_method("ONNXRuntime", "minmax") == "onnxruntime"
    with pytest.raises(InputError, match="int8 method must be one of nncf, onnxruntime"):
        resolve_int8_method("tensorrt", None)
    with pytest.raises(InputError, match="onnxruntime.quantization calibrator"):
        resolve_int8_method("nncf", "entropy")


def test_int8_method_needs_int8(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="int8 method only applies to int8"):
        export_bundle(TINY_ARCH, "none", output=tmp_path / "b", model_config=TINY_CONFIG, int8_method="nncf")
    assert not (tmp_path / "b").exists()


@pytest.mark.slow
def test_onnxruntime_method_is_recorded(tmp_path: Path) -> None:
    """--int8-method onnxruntime: onnxruntime.quantization's QDQ graph (uint8 activations), recorded as such."""
    out = export_bundle(
        TINY_ARCH,
        "none",
        precisions=("int8",),
        output=tmp_path / "o",
        model_config=TINY_CONFIG,
        seed=0,
        int8_method="onnxruntime",
        int8_min_cosine=0.995,
        include_fp32=False,
    )
    m = read_manifest(out)
    for encoder in ("image", "text"):
        q = m.quantization["int8"][encoder]
        assert (q.method, q.kind, q.activations, q.calibration.method) == ("onnxruntime", "static", "uint8", "minmax")
        assert q.parameters["kind"] == "int8-static" and q.batch_independent
    assert m.quantization["int8"]["text"].ops == ("MatMul", "Gemm", "Gather")
    from clip_rt.engine.backends.choose import int8_scheme

    assert int8_scheme(m, "image") == "static"


def test_without_scikit_image_calibration_uses_generated_scenes(hide_module) -> None:  # noqa: ANN001
    hide_module("skimage")
    cal = calibration.calibration_images()
    assert cal.source == "scenes" and cal.names and all(n.startswith("scene") for n in cal.names)
    assert calibration.held_out_photos().images == []


def test_calibration_and_held_out_sets_are_disjoint() -> None:
    assert not set(calibration.CALIBRATION_PHOTOS) & set(calibration.HELD_OUT_PHOTOS)
    held = set(calibration.label_prompts())
    assert not held & set(calibration.calibration_prompts())
    from clip_rt_export.sample_inputs import PROMPTS

    assert not set(PROMPTS) & set(calibration.calibration_prompts())
    cal = calibration.calibration_images()
    assert cal.source == "photos" and len(cal.images) == len(cal.names) >= 40


def test_cli_int8_method_conflicts_are_usage_errors(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from clip_rt.cli import main

    args = [
        "export",
        TINY_ARCH,
        "--model-config",
        str(TINY_CONFIG),
        "--pretrained",
        "none",
        "--precision",
        "int8",
        "-o",
        str(tmp_path / "x"),
    ]
    result = CliRunner().invoke(main, [*args, "--int8-method", "nncf", "--calibration-method", "entropy"])
    assert result.exit_code == 2 and "onnxruntime.quantization calibrator" in result.output
    result = CliRunner().invoke(main, [*args, "--int8-method", "tflite"])
    assert result.exit_code == 2 and "tflite" in result.output
    assert not (tmp_path / "x").exists()


@pytest.mark.slow
def test_cli_int8_export_prints_only_the_path(tmp_path: Path) -> None:
    """NNCF draws progress bars on stdout: the export keeps them out of the CLI's result."""
    from click.testing import CliRunner

    from clip_rt.cli import main

    out = tmp_path / "q"
    result = CliRunner().invoke(
        main,
        [
            "export",
            TINY_ARCH,
            "--model-config",
            str(TINY_CONFIG),
            "--pretrained",
            "none",
            "--seed",
            "0",
            "--precision",
            "int8",
            "--no-fp32",
            "--int8-min-cosine",
            "0.995",
            "-o",
            str(out),
            "-q",
        ],
    )
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == str(out)
    assert read_manifest(out).quantization["int8"]["image"].method == "nncf"
