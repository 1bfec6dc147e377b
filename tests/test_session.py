"""Provider selection and verification (clip_rt.engine.session), GPU paths simulated on the CPU."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnxruntime
import pytest

from clip_rt.engine.session import CPU, CUDA, OrtSession, build_session_options, resolve_providers
from clip_rt.errors import InputError, ProviderError
from clip_rt_fixtures.fake_bundle import build_fake_bundle

CPU_ONLY = ["AzureExecutionProvider", CPU]
WITH_CUDA = ["TensorrtExecutionProvider", CUDA, CPU]


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_fake_bundle(tmp_path_factory.mktemp("bundle"), precisions=("fp32",))


class FakeInferenceSession:
    """Stands in for onnxruntime.InferenceSession; comes up on *active* providers only."""

    def __init__(self, active: list[str]) -> None:
        self.active = active
        self.calls: list[tuple[str, object, list]] = []

    def __call__(self, path: str, so: object, providers: list) -> FakeInferenceSession:
        self.calls.append((path, so, providers))
        return self

    def get_providers(self) -> list[str]:
        return list(self.active)

    def get_inputs(self) -> list:
        return [SimpleNamespace(name="input_ids")]

    def get_outputs(self) -> list:
        return [SimpleNamespace(name="text_embeds")]

    def run(self, names: object, feeds: dict) -> list:
        return [np.zeros((len(feeds["input_ids"]), 4), np.float32)]


# -- resolve_providers -------------------------------------------------------------------
@pytest.mark.parametrize(
    "requested, available, expected",
    [
        (["cpu"], CPU_ONLY, [CPU]),
        (None, CPU_ONLY, [CPU]),
        ([], CPU_ONLY, [CPU]),
        (None, WITH_CUDA, [(CUDA, {}), CPU]),
        (["cuda"], WITH_CUDA, [(CUDA, {}), CPU]),
        (["cuda:1"], WITH_CUDA, [(CUDA, {"device_id": 1}), CPU]),
        (["CUDAExecutionProvider", "cpu"], WITH_CUDA, [(CUDA, {}), CPU]),
        (["cudaexecutionprovider"], WITH_CUDA, [(CUDA, {}), CPU]),
        ("tensorrt,cuda", WITH_CUDA, [("TensorrtExecutionProvider", {}), (CUDA, {}), CPU]),
        (["cpu", "cuda"], WITH_CUDA, [CPU, (CUDA, {})]),
    ],
)
def test_resolve_providers(requested, available, expected) -> None:
    assert resolve_providers(requested, available) == expected


def test_requested_but_unavailable_lists_what_is_available() -> None:
    with pytest.raises(ProviderError) as err:
        resolve_providers(["cuda"], CPU_ONLY)
    msg = str(err.value)
    assert CUDA in msg and "CPUExecutionProvider" in msg and "AzureExecutionProvider" in msg
    assert "onnxruntime-gpu" in msg
    with pytest.raises(ProviderError, match="OpenVINOExecutionProvider"):
        resolve_providers(["openvino"], CPU_ONLY)
    with pytest.raises(ProviderError, match="MyExecutionProvider"):
        resolve_providers(["MyExecutionProvider"], CPU_ONLY)


@pytest.mark.parametrize("bad", [["gpu0"], ["cpu:1"], ["cuda:x"], [""], ["cuda", "cuda:1"], [3]])
def test_bad_provider_names_are_input_errors(bad) -> None:
    with pytest.raises(InputError):
        resolve_providers(bad, WITH_CUDA)


# -- OrtSession: verification of the active providers -------------------------------------
def test_cuda_requested_session_came_up_on_cpu_raises(bundle: Path) -> None:
    fake = FakeInferenceSession(active=[CPU])
    with pytest.raises(ProviderError, match="did not come up") as err:
        OrtSession(bundle / "text_fp32.onnx", ["cuda"], available_providers=WITH_CUDA, session_factory=fake)
    assert CUDA in str(err.value) and "allow the fallback" in str(err.value)
    assert fake.calls[0][2] == [(CUDA, {}), CPU]


def test_allow_fallback_warns_and_reports(bundle: Path) -> None:
    fake = FakeInferenceSession(active=[CPU])
    with pytest.warns(RuntimeWarning, match="CUDAExecutionProvider"):
        sess = OrtSession(
            bundle / "text_fp32.onnx",
            ["cuda:1"],
            allow_fallback=True,
            available_providers=WITH_CUDA,
            session_factory=fake,
        )
    assert sess.fell_back and sess.providers == [CPU]
    assert sess.run({"input_ids": np.zeros((2, 3), np.int64)})[0].shape == (2, 4)


def test_automatic_selection_may_fall_back_with_a_warning(bundle: Path) -> None:
    fake = FakeInferenceSession(active=[CPU])
    with pytest.warns(RuntimeWarning, match="did not come up"):
        sess = OrtSession(bundle / "text_fp32.onnx", None, available_providers=WITH_CUDA, session_factory=fake)
    assert sess.fell_back


def test_cuda_that_comes_up_is_accepted(bundle: Path, recwarn: pytest.WarningsRecorder) -> None:
    fake = FakeInferenceSession(active=[CUDA, CPU])
    sess = OrtSession(
        bundle / "text_fp32.onnx",
        ["cuda"],
        options={"cuda": {"gpu_mem_limit": 1 << 30}},
        available_providers=WITH_CUDA,
        session_factory=fake,
    )
    assert not sess.fell_back and sess.providers == [CUDA, CPU]
    assert fake.calls[0][2] == [(CUDA, {"gpu_mem_limit": 1 << 30}), CPU]
    assert not [w for w in recwarn if issubclass(w.category, RuntimeWarning)]


def test_options_for_a_provider_not_requested_is_an_error(bundle: Path) -> None:
    with pytest.raises(InputError, match="not among the requested"):
        OrtSession(
            bundle / "text_fp32.onnx",
            ["cpu"],
            options={"cuda": {}},
            available_providers=WITH_CUDA,
            session_factory=FakeInferenceSession([CPU]),
        )


def test_monkeypatched_onnxruntime_reporting_cpu_only(bundle: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The default path asks onnxruntime itself; a CPU-only build must refuse "cuda" up front.
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: [CPU])
    with pytest.raises(ProviderError, match="available: CPUExecutionProvider"):
        OrtSession(bundle / "text_fp32.onnx", ["cuda"])


# -- OrtSession on the real onnxruntime ----------------------------------------------------
def test_real_cpu_session_runs_and_reports(bundle: Path) -> None:
    sess = OrtSession(bundle / "image_fp32.onnx", ["cpu"], intra_op_threads=1, inter_op_threads=1)
    assert sess.providers == [CPU] and not sess.fell_back
    assert sess.input_names == ["pixel_values"] and sess.output_names == ["image_embeds"]
    out = sess.run({"pixel_values": np.random.default_rng(0).random((3, 3, 16, 16), dtype=np.float32)})
    assert out[0].shape == (3, 8)
    np.testing.assert_allclose(np.linalg.norm(out[0], axis=1), 1.0, atol=1e-5)


def test_session_options_built_as_documented(bundle: Path) -> None:
    fake = FakeInferenceSession([CPU])
    OrtSession(
        bundle / "text_fp32.onnx",
        ["cpu"],
        intra_op_threads=3,
        inter_op_threads=2,
        session_options={"enable_mem_pattern": False},
        available_providers=CPU_ONLY,
        session_factory=fake,
    )
    so = fake.calls[0][1]
    assert so.graph_optimization_level == onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    assert so.optimized_model_filepath == ""
    assert (so.intra_op_num_threads, so.inter_op_num_threads) == (3, 2)
    assert so.enable_mem_pattern is False


def test_session_options_object_is_used_as_given() -> None:
    so = onnxruntime.SessionOptions()
    so.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL
    assert build_session_options(2, None, so) is so
    assert so.intra_op_num_threads == 2
    assert so.graph_optimization_level == onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL


@pytest.mark.parametrize(
    "kwargs",
    [
        {"session_options": {"no_such_field": 1}},
        {"session_options": 3},
        {"intra_op_threads": -1},
        {"inter_op_threads": "2"},
    ],
)
def test_bad_session_options(kwargs) -> None:
    with pytest.raises(InputError):
        build_session_options(**kwargs)
