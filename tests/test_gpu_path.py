"""The CUDA path (issue 6) on a machine without a GPU: provider selection with patched
availability, IO binding and fixed-shape runs on the CPU provider, the GPU graph fusion
checked against the unfused graph, and the GPU benchmark's refusal and CPU dry run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime
import pytest

import clip_rt
from clip_rt.bundle.manifest import IMAGE_INPUT
from clip_rt.engine import session as session_mod
from clip_rt.engine.gpu import FixedShapeRunner, cuda_options
from clip_rt.engine.session import CPU, CUDA, OrtSession
from clip_rt.errors import InputError, ProviderError
from clip_rt_fixtures.fake_bundle import build_fake_bundle

REPO = Path(__file__).resolve().parents[1]

from bench import gpu as bench_gpu

WITH_CUDA = [CUDA, CPU]
IMAGE_SIZE = 16


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_fake_bundle(tmp_path_factory.mktemp("gpu") / "fake-clip", image_size=IMAGE_SIZE)


@pytest.fixture()
def pixels() -> np.ndarray:
    return np.random.default_rng(0).standard_normal((3, 3, IMAGE_SIZE, IMAGE_SIZE), dtype=np.float32)


class PretendCuda:
    """A real CPU InferenceSession that reports *active* providers (a CUDA machine's answer)."""

    def __init__(self, path: str, so: Any, providers: list, active: list[str]) -> None:
        self.providers_asked = providers
        self._real = onnxruntime.InferenceSession(path, sess_options=so, providers=[CPU])
        self._active = active

    def get_providers(self) -> list[str]:
        return list(self._active)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


@pytest.fixture()
def cuda_machine(monkeypatch: pytest.MonkeyPatch) -> list[PretendCuda]:
    """onnxruntime reports CUDA, and sessions come up on it; returns the sessions created."""
    made: list[PretendCuda] = []

    def factory(path: str, so: Any, providers: list) -> PretendCuda:
        made.append(PretendCuda(path, so, providers, WITH_CUDA))
        return made[-1]

    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: list(WITH_CUDA))
    monkeypatch.setattr(session_mod, "_default_factory", factory)
    return made


# -- provider selection -------------------------------------------------------------------
def test_fp16_is_the_default_when_cuda_comes_first(bundle: Path, cuda_machine: list) -> None:
    model = clip_rt.load(bundle)
    assert model.precision == "fp16"
    model.session("image")
    assert session_mod.provider_name(cuda_machine[-1].providers_asked[0]) == CUDA
    assert model.session("image").path.name == "image_fp16.onnx"
    assert clip_rt.load(bundle, providers=["cpu"]).precision == "fp32"


def test_cuda_device_index_and_provider_options_reach_onnxruntime(bundle: Path, cuda_machine: list) -> None:
    opts = cuda_options(cuda_graph=True, conv_algo_search="heuristic")
    model = clip_rt.load(bundle, providers=["cuda:1"], provider_options=opts)
    sess = model.session("image")
    assert cuda_machine[-1].providers_asked == [
        (CUDA, {"device_id": 1, "enable_cuda_graph": "1", "cudnn_conv_algo_search": "HEURISTIC"}),
        CPU,
    ]
    assert sess.device == ("cuda", 1)


def test_cuda_listed_but_session_comes_up_on_cpu_is_an_error(bundle: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: list(WITH_CUDA))
    monkeypatch.setattr(
        session_mod, "_default_factory", lambda path, so, providers: PretendCuda(path, so, providers, [CPU])
    )
    model = clip_rt.load(bundle, providers=["cuda"])
    with pytest.raises(
        ProviderError, match="CUDAExecutionProvider did not come up.*fell back to: CPUExecutionProvider"
    ):
        model.session("image")
    with (
        pytest.warns(RuntimeWarning, match="did not come up"),
        pytest.warns(RuntimeWarning, match="using the fp32 graphs instead of fp16"),
    ):
        sess = clip_rt.load(bundle, providers=["cuda"], allow_fallback=True).session("image")
    assert sess.fell_back and sess.device == ("cpu", 0) and sess.path.name == "image_fp32.onnx"


@pytest.fixture()
def cuda_that_falls_back(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """onnxruntime lists CUDA, but every session comes up on the CPU (a broken CUDA install);
    returns the file names of the graphs sessions were created for."""
    made: list[str] = []

    def factory(path: str, so: Any, providers: list) -> PretendCuda:
        made.append(Path(path).name)
        return PretendCuda(path, so, providers, [CPU])

    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: list(WITH_CUDA))
    monkeypatch.setattr(session_mod, "_default_factory", factory)
    return made


@pytest.mark.filterwarnings("ignore:.*did not come up:RuntimeWarning")
def test_automatic_cuda_falling_back_to_cpu_uses_fp32_before_caching(
    bundle: Path, cuda_that_falls_back: list, pixels: np.ndarray
) -> None:
    prompts = ["a photo of a cat", "a red car"]
    on_cpu = clip_rt.load(bundle, providers=["cpu"], cache=False)
    model = clip_rt.load(bundle)  # cache on: its key holds the precision
    assert model.precision == "fp16"  # the CUDA default, until a session shows where it runs
    with pytest.warns(RuntimeWarning, match="using the fp32 graphs instead of fp16"):
        text = model.encode_text(prompts)
    assert model.precision == "fp32" and model.providers == [CPU]
    assert model.session("text").path.name == "text_fp32.onnx"
    assert model.session("image").path.name == "image_fp32.onnx"
    assert cuda_that_falls_back == ["text_fp16.onnx", "text_fp32.onnx", "image_fp32.onnx"]
    np.testing.assert_array_equal(text, on_cpu.encode_text(prompts))
    assert model._runtime.prompt_cache().precision == "fp32"  # nothing was ever stored under fp16
    np.testing.assert_array_equal(model.encode_pixels(pixels), on_cpu.encode_pixels(pixels))

    images_first = clip_rt.load(bundle, cache=False)  # the image session settles it just the same
    with pytest.warns(RuntimeWarning, match="using the fp32 graphs"):
        emb = images_first.encode_pixels(pixels)
    assert images_first.precision == "fp32"
    np.testing.assert_array_equal(emb, on_cpu.encode_pixels(pixels))


@pytest.mark.filterwarnings("ignore:.*did not come up:RuntimeWarning")
def test_precision_given_by_the_user_is_kept_on_fallback(bundle: Path, cuda_that_falls_back: list) -> None:
    model = clip_rt.load(bundle, precision="fp16")
    model.encode_text(["a photo of a cat"])
    assert model.precision == "fp16" and model.session("text").path.name == "text_fp16.onnx"


def test_cuda_on_a_build_without_it_lists_what_there_is(bundle: Path) -> None:
    if CUDA in onnxruntime.get_available_providers():
        pytest.skip("this onnxruntime has CUDA")
    with pytest.raises(ProviderError, match=r"not available.*available: .*CPUExecutionProvider.*onnxruntime-gpu"):
        clip_rt.load(bundle, providers=["cuda:0"])


def test_cuda_options_are_checked() -> None:
    assert cuda_options() == {"cuda": {}}
    assert cuda_options(device_id=2) == {"cuda": {"device_id": "2"}}
    with pytest.raises(InputError, match="conv_algo_search"):
        cuda_options(conv_algo_search="fastest")
    with pytest.raises(InputError, match="device_id"):
        cuda_options(device_id=-1)


# -- IO binding and fixed-shape runs (CPU provider) -------------------------------------------
def test_run_binding_matches_run(bundle: Path, pixels: np.ndarray) -> None:
    sess = OrtSession(bundle / "image_fp32.onnx", ["cpu"])
    expected = sess.run({IMAGE_INPUT: pixels})[0]
    (out,) = sess.run_binding({IMAGE_INPUT: pixels}, "cpu")
    assert isinstance(out, onnxruntime.OrtValue) and out.device_name() == "cpu"
    np.testing.assert_array_equal(out.numpy(), expected)
    on_device = onnxruntime.OrtValue.ortvalue_from_numpy(pixels)  # an input already "on the device"
    np.testing.assert_array_equal(sess.run_binding({IMAGE_INPUT: on_device})[0].numpy(), expected)


def test_run_binding_rejects_bad_requests(bundle: Path, pixels: np.ndarray) -> None:
    sess = OrtSession(bundle / "image_fp32.onnx", ["cpu"])
    with pytest.raises(ProviderError, match="need a CUDA session"):
        sess.run_binding({IMAGE_INPUT: pixels}, "cuda")
    with pytest.raises(InputError, match="output_device"):
        sess.run_binding({IMAGE_INPUT: pixels}, "tpu")
    with pytest.raises(InputError, match="no input named 'pixels'"):
        sess.run_binding({"pixels": pixels})
    with pytest.raises(InputError, match="numpy array or an onnxruntime OrtValue"):
        sess.run_binding({IMAGE_INPUT: pixels.tolist()})


def test_encode_pixels_numpy_and_ortvalue(bundle: Path, pixels: np.ndarray) -> None:
    model = clip_rt.load(bundle, providers=["cpu"])
    expected = model.session("image").run({IMAGE_INPUT: pixels})[0]
    np.testing.assert_array_equal(model.encode_pixels(pixels), expected)
    value = model.encode_pixels(pixels, output="ortvalue")
    assert isinstance(value, onnxruntime.OrtValue)
    np.testing.assert_array_equal(value.numpy(), expected)
    np.testing.assert_array_equal(model.encode_pixels(onnxruntime.OrtValue.ortvalue_from_numpy(pixels)), expected)
    with pytest.raises(InputError, match="output must be"):
        model.encode_pixels(pixels, output="torch")
    with pytest.raises(InputError, match=r"float32 \(N, 3, H, W\)"):
        model.encode_pixels(pixels[0])


def test_fixed_shape_runner_reuses_its_buffers(bundle: Path, pixels: np.ndarray) -> None:
    sess = OrtSession(bundle / "image_fp32.onnx", ["cpu"])
    runner = FixedShapeRunner(sess, pixels.shape)
    first = runner.run(pixels)
    np.testing.assert_array_equal(first[0].numpy(), sess.run({IMAGE_INPUT: pixels})[0])
    flipped = np.ascontiguousarray(pixels[::-1])
    second = runner.run(flipped)
    assert second[0] is first[0]  # same buffer: what CUDA graph replay needs
    np.testing.assert_array_equal(second[0].numpy(), sess.run({IMAGE_INPUT: flipped})[0])
    with pytest.raises(InputError, match="takes arrays of shape"):
        runner.run(pixels[:2])
    with pytest.raises(InputError, match="cannot run it at"):
        FixedShapeRunner(sess, (1, 3, IMAGE_SIZE + 1, IMAGE_SIZE))


# -- the GPU graph: fusions checked where the CPU can run them --------------------------------
@pytest.mark.torch
def test_gpu_fusions_match_the_unfused_graph(tiny_bundle_dir: Path, tmp_path: Path) -> None:
    onnx = pytest.importorskip("onnx")
    from clip_rt_export.gpu_optimize import fuse_for_gpu

    src = tiny_bundle_dir / "image_fp32.onnx"
    x = np.random.default_rng(1).standard_normal((4, 3, 64, 64), dtype=np.float32)
    ref = onnxruntime.InferenceSession(str(src), providers=[CPU]).run(None, {IMAGE_INPUT: x})[0]

    vision = json.loads((REPO / "tests" / "data" / "tiny-clip.json").read_text())["vision_cfg"]
    heads = vision["width"] // vision.get("head_width", 64)
    stats = fuse_for_gpu(src, tmp_path / "fused32.onnx", num_heads=heads, hidden_size=vision["width"], fp16=False)
    assert stats.get("Attention") == vision["layers"], stats  # every block, by fuse_open_clip_attention
    assert stats.get("SkipLayerNormalization", 0) > 0 and stats.get("BiasGelu", 0) > 0, stats
    fused = onnxruntime.InferenceSession(str(tmp_path / "fused32.onnx"), providers=[CPU])
    assert np.abs(fused.run(None, {IMAGE_INPUT: x})[0] - ref).max() < 1e-5

    fuse_for_gpu(src, tmp_path / "fused16.onnx", num_heads=heads, hidden_size=vision["width"], fp16=True)
    model = onnx.load(str(tmp_path / "fused16.onnx"))
    onnx.checker.check_model(model)
    io_types = {v.type.tensor_type.elem_type for v in [*model.graph.input, *model.graph.output]}
    assert io_types == {onnx.TensorProto.FLOAT}  # fp16 inside, float32 I/O
    # The CPU provider's graph optimiser crashes on fp16 LayerNormalization (export/convert.py):
    # run the graph as written.
    so = onnxruntime.SessionOptions()
    so.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL
    fused = onnxruntime.InferenceSession(str(tmp_path / "fused16.onnx"), so, providers=[CPU])
    out = fused.run(None, {IMAGE_INPUT: x})[0]
    cos = (out * ref).sum(1) / np.linalg.norm(out, axis=1) / np.linalg.norm(ref, axis=1)
    assert cos.min() > 0.999


def test_fuse_for_gpu_rejects_bad_arguments(bundle: Path, tmp_path: Path) -> None:
    from clip_rt_export.gpu_optimize import fuse_for_gpu

    with pytest.raises(InputError, match="model_type"):
        fuse_for_gpu(bundle / "image_fp32.onnx", tmp_path / "x.onnx", model_type="bert")
    with pytest.raises(InputError, match="no ONNX graph"):
        fuse_for_gpu(tmp_path / "missing.onnx", tmp_path / "x.onnx")


def test_attention_fusion_leaves_other_graphs_alone(bundle: Path, tmp_path: Path) -> None:
    from clip_rt_export.gpu_optimize import fuse_for_gpu

    stats = fuse_for_gpu(bundle / "image_fp32.onnx", tmp_path / "x.onnx", num_heads=2, fp16=False)
    assert "Attention" not in stats  # no attention block in the fake graph: nothing replaced
    x = np.random.default_rng(2).standard_normal((2, 3, IMAGE_SIZE, IMAGE_SIZE), dtype=np.float32)

    def run(p: Path) -> np.ndarray:
        return onnxruntime.InferenceSession(str(p), providers=[CPU]).run(None, {IMAGE_INPUT: x})[0]

    np.testing.assert_allclose(run(tmp_path / "x.onnx"), run(bundle / "image_fp32.onnx"), atol=1e-6)


# -- the GPU benchmark -------------------------------------------------------------------------
def test_gpu_bench_refuses_without_cuda(bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    if CUDA in onnxruntime.get_available_providers():
        pytest.skip("this onnxruntime has CUDA")
    out = tmp_path / "gpu.json"
    assert bench_gpu.main(["--bundle", str(bundle), "--no-torch", "--out", str(out)]) == 2
    assert "CUDA is not available" in capsys.readouterr().err
    assert not out.exists()


def test_gpu_bench_dry_run_without_torch(bundle: Path, tmp_path: Path) -> None:
    out = tmp_path / "gpu.json"
    assert (
        bench_gpu.main(
            [
                "--bundle",
                str(bundle),
                "--dry-run",
                "--no-torch",
                "--batch-sizes",
                "1",
                "4",
                "--rounds",
                "2",
                "--work-dir",
                str(tmp_path),
                "--out",
                str(out),
            ]
        )
        == 0
    )
    result = json.loads(out.read_text())
    assert result["dry_run"] and result["device"].startswith("cpu (dry run)") and result["targets"] is None
    names = {(r["candidate"], r["batch"]) for r in result["rows"]}
    for batch in (1, 4):
        for name in (
            "ort-fp32",
            "ort-fp32-iob-hostin",
            "ort-fp32-iob-devin",
            "ort-fp32-fixedshape",
            "ort-fused-fp32",
            "ort-fused-fp32-iob-devin",
            "ort-fused-fp32-fixedshape",
        ):
            assert (name, batch) in names
    assert all(r["median_s"] > 0 for r in result["rows"])
    assert result["skipped"] == {"torch": "--no-torch"}  # every ORT variant came up and ran


@pytest.mark.torch
def test_gpu_bench_dry_run_with_torch(tiny_bundle_dir: Path, tiny_checkpoint: Path, tmp_path: Path) -> None:
    pytest.importorskip("open_clip")
    out = tmp_path / "gpu.json"
    assert (
        bench_gpu.main(
            [
                "--bundle",
                str(tiny_bundle_dir),
                "--checkpoint",
                str(tiny_checkpoint),
                "--model-config",
                str(REPO / "tests" / "data" / "tiny-clip.json"),
                "--dry-run",
                "--batch-sizes",
                "1",
                "3",
                "--rounds",
                "2",
                "--work-dir",
                str(tmp_path),
                "--out",
                str(out),
            ]
        )
        == 0
    )
    rows = json.loads(out.read_text())["rows"]
    assert {r["candidate"] for r in rows} >= {"torch-fp32-eager-cpu", "ort-fp32-iob-devin", "ort-fused-fp32-fixedshape"}
    for r in rows:  # same weights on both sides: fp32 ORT and fp32 torch agree
        assert r["min_cosine_vs_torch_fp32"] > 0.9999, r


def test_fix_batch_pins_the_batch_axis(bundle: Path, tmp_path: Path, pixels: np.ndarray) -> None:
    from clip_rt_export.gpu_optimize import fix_batch

    fixed = fix_batch(bundle / "image_fp32.onnx", tmp_path / "b3.onnx", batch=len(pixels))
    sess = onnxruntime.InferenceSession(str(fixed), providers=[CPU])
    assert sess.get_inputs()[0].shape[0] == len(pixels) and sess.get_outputs()[0].shape[0] == len(pixels)
    dynamic = onnxruntime.InferenceSession(str(bundle / "image_fp32.onnx"), providers=[CPU])
    np.testing.assert_array_equal(sess.run(None, {IMAGE_INPUT: pixels})[0], dynamic.run(None, {IMAGE_INPUT: pixels})[0])
    with pytest.raises(InputError, match="batch must be a positive integer"):
        fix_batch(bundle / "image_fp32.onnx", tmp_path / "b0.onnx", batch=0)
