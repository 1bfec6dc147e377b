"""Backends on a real architecture (the tiny open_clip ViT exported by the export stage) and
real photos: OpenVINO agrees with onnxruntime, and static int8 embeddings do not depend on the
other images in the batch, on every int8 path (onnxruntime, OpenVINO latency and queue)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from clip_rt.bundle.manifest import read_manifest
from clip_rt.engine.backends.ort import OrtBackend

pytestmark = pytest.mark.torch
ov = pytest.importorskip("openvino", reason="openvino not installed (pip install 'clip-rt[openvino]')")
skimage_data = pytest.importorskip("skimage.data")

PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "camera", "coins", "hubble_deep_field", "immunohistochemistry")


@pytest.fixture(scope="module")
def photos(tiny_bundle_dir: Path) -> np.ndarray:
    from PIL import Image

    from clip_rt.inputs.preprocess import Preprocessor

    pre = Preprocessor(read_manifest(tiny_bundle_dir).image)
    return np.stack([pre(Image.fromarray(getattr(skimage_data, n)()).convert("RGB")) for n in PHOTOS])


@pytest.fixture(scope="module")
def static_int8(tiny_bundle_dir: Path, photos: np.ndarray, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A static QDQ int8 image graph made the way the export's static int8 is (per-channel
    weights, u8 activations), calibrated on the photos."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter({"pixel_values": photos[i : i + 1]} for i in range(len(photos)))

        def get_next(self) -> dict | None:
            return next(self.it, None)

    m = read_manifest(tiny_bundle_dir)
    out = tmp_path_factory.mktemp("static") / "image_int8_static.onnx"
    quantize_static(
        str(tiny_bundle_dir / m.graph("fp32", "image").file),
        str(out),
        Reader(),
        quant_format=QuantFormat.QDQ,
        op_types_to_quantize=["MatMul", "Gemm"],
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        extra_options={"MatMulConstBOnly": True},
    )
    return out


def _ov(path: Path, **kw: object) -> object:
    from clip_rt.engine.backends.openvino import OpenVinoBackend

    return OpenVinoBackend(path, **kw)


def _queued(backend: object, batches: list[np.ndarray]) -> np.ndarray:
    pending = [backend.submit({"pixel_values": x}) for x in batches]  # type: ignore[attr-defined]
    return np.concatenate([p.result()[0] for p in pending])


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(((a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)).min())


def test_openvino_fp32_equals_onnxruntime_on_photos(tiny_bundle_dir: Path, photos: np.ndarray) -> None:
    graph = tiny_bundle_dir / read_manifest(tiny_bundle_dir).graph("fp32", "image").file
    want = OrtBackend(graph, ["cpu"]).run({"pixel_values": photos})[0]
    backend = _ov(graph)
    np.testing.assert_allclose(backend.run({"pixel_values": photos})[0], want, atol=1e-5)  # type: ignore[attr-defined]
    np.testing.assert_allclose(_queued(backend, [photos[:3], photos[3:]]), want, atol=1e-5)


def test_openvino_text_equals_onnxruntime_at_every_length(tiny_bundle_dir: Path) -> None:
    import clip_rt

    ort_m = clip_rt.load(tiny_bundle_dir, precision="fp32", backend="onnxruntime", cache=False)
    ov_m = clip_rt.load(tiny_bundle_dir, precision="fp32", backend="openvino", cache=False)
    prompts = ["a photo of a cat", "a diagram", "an oil painting of a lighthouse on a cliff, stormy sea", ""]
    for bs in (1, 2, 4):  # different trimmed lengths per batch
        np.testing.assert_allclose(ov_m.encode_text(prompts, batch_size=bs), ort_m.encode_text(prompts), atol=1e-5)


@pytest.mark.parametrize("path_kind", ["onnxruntime", "openvino latency", "openvino queue"])
def test_static_int8_is_batch_independent(static_int8: Path, photos: np.ndarray, path_kind: str) -> None:
    backend = OrtBackend(static_int8, ["cpu"]) if path_kind == "onnxruntime" else _ov(static_int8)
    if path_kind == "openvino queue":
        alone = _queued(backend, [photos[i : i + 1] for i in range(len(photos))])
        batched = _queued(backend, [photos])
    else:
        alone = np.concatenate([backend.run({"pixel_values": photos[i : i + 1]})[0] for i in range(len(photos))])
        batched = backend.run({"pixel_values": photos})[0]  # type: ignore[attr-defined]
    assert len(photos) == 8
    assert float(np.abs(alone - batched).max()) <= 1e-5


def test_static_int8_agrees_across_backends_and_with_fp32(
    tiny_bundle_dir: Path, static_int8: Path, photos: np.ndarray
) -> None:
    fp32 = OrtBackend(tiny_bundle_dir / read_manifest(tiny_bundle_dir).graph("fp32", "image").file, ["cpu"])
    want = fp32.run({"pixel_values": photos})[0]
    on_ort = OrtBackend(static_int8, ["cpu"]).run({"pixel_values": photos})[0]
    on_ov = _ov(static_int8).run({"pixel_values": photos})[0]  # type: ignore[attr-defined]
    assert _cos(on_ort, want) >= 0.99 and _cos(on_ov, want) >= 0.99
    assert _cos(on_ov, on_ort) >= 0.999
