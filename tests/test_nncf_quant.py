"""clip_rt_export.nncf_quant: which nodes stay float, what a QDQ graph is described as, and the
errors (nncf missing, bad settings). The full quantisation runs in test_int8_static (tiny model)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from clip_rt.errors import ExportError  # noqa: E402
from clip_rt_export import nncf_quant  # noqa: E402


def _init(name: str, shape: tuple[int, ...], dtype: type = np.float32) -> onnx.TensorProto:
    return numpy_helper.from_array(np.zeros(shape, dtype), name)


def _model() -> onnx.ModelProto:
    nodes = [
        helper.make_node("Conv", ["x", "cw"], ["c"], name="patch"),
        helper.make_node("Reshape", ["c", "shape"], ["t"], name="flat"),
        helper.make_node("MatMul", ["t", "w1"], ["q"], name="proj_q"),
        helper.make_node("MatMul", ["q", "t"], ["s"], name="scores"),  # activation x activation
        helper.make_node("Transpose", ["w2"], ["w2t"], name="tw"),
        helper.make_node("MatMul", ["s", "w2t"], ["y"], name="out_proj"),  # weight through a Transpose
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [_init("cw", (4, 3, 2, 2)), _init("shape", (2,), np.int64), _init("w1", (4, 4)), _init("w2", (4, 4))],
    )
    return helper.make_model(graph)


def test_keep_fp32_rules_pick_nodes_by_position_and_kind() -> None:
    m = _model()
    assert nncf_quant.kept_in_float(m, ()) == []
    assert nncf_quant.kept_in_float(m, ("first",)) == ["patch"]
    assert nncf_quant.kept_in_float(m, ("last",)) == ["out_proj"]
    assert nncf_quant.kept_in_float(m, ("first", "last", "attention")) == ["patch", "out_proj", "scores"]


def test_describe_qdq_reads_weight_ops_and_activation_types() -> None:
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "s", "zp_u8"], ["xq"]),
        helper.make_node("DequantizeLinear", ["xq", "s", "zp_u8"], ["xd"]),
        helper.make_node("DequantizeLinear", ["wq", "ws"], ["wd"]),
        helper.make_node("Transpose", ["wd"], ["wt"]),
        helper.make_node("MatMul", ["xd", "wt"], ["y"]),
        helper.make_node("QuantizeLinear", ["y", "s", "zp_s8"], ["yq"]),
        helper.make_node("DequantizeLinear", ["eq", "ws"], ["ed"]),
        helper.make_node("Gather", ["ed", "ids"], ["z"]),
    ]
    arrays = {
        "s": np.array(0.1, np.float32),
        "zp_u8": np.array(0, np.uint8),
        "zp_s8": np.array(0, np.int8),
        "wq": np.zeros((2, 2), np.int8),
        "ws": np.zeros((2,), np.float32),
        "eq": np.zeros((5, 2), np.int8),
    }
    inits = [numpy_helper.from_array(value, name) for name, value in arrays.items()]
    graph = helper.make_graph(
        nodes,
        "q",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2]),
            helper.make_tensor_value_info("ids", TensorProto.INT64, [1]),
        ],
        [helper.make_tensor_value_info("yq", TensorProto.INT8, None)],
        inits,
    )
    got = nncf_quant.describe_qdq(helper.make_model(graph))
    assert got == {"ops": ("Gather", "MatMul"), "activations": "int8/uint8"}
    with pytest.raises(ExportError, match="no weight quantised"):
        nncf_quant.describe_qdq(_model())


def test_bad_settings_and_missing_nncf_are_export_errors(tmp_path: Path, hide_module, monkeypatch) -> None:  # noqa: ANN001
    src = tmp_path / "g.onnx"
    onnx.save(_model(), str(src))
    feeds = [{"x": np.zeros((1, 3, 4, 4), np.float32)}]
    if nncf_quant.nncf_available():
        with pytest.raises(ExportError, match="preset must be one of mixed, performance"):
            nncf_quant.quantize_nncf(src, tmp_path / "o.onnx", feeds, {"preset": "fast"})
        with pytest.raises(ExportError, match="keep_fp32 entries must be among first, last, attention"):
            nncf_quant.quantize_nncf(src, tmp_path / "o.onnx", feeds, {"keep_fp32": ("middle",)})
        with pytest.raises(ExportError, match="activation_ranges must be one of minmax, mean_minmax"):
            nncf_quant.quantize_nncf(src, tmp_path / "o.onnx", feeds, {"activation_ranges": "entropy"})
    monkeypatch.setattr(nncf_quant, "nncf_available", lambda: False)
    with pytest.raises(
        ExportError, match=r"needs the nncf package: pip install 'clip-rt\[export\]'.*--int8-method onnxruntime"
    ):
        nncf_quant.quantize_nncf(src, tmp_path / "o.onnx", feeds, nncf_quant.settings_for("image"))
    assert not (tmp_path / "o.onnx").exists()


def test_default_method_per_encoder(tmp_path: Path) -> None:
    """NNCF by default; a convolutional image tower keeps onnxruntime's conv int8 (measured there)."""
    from clip_rt_export.convert import int8_method_for

    conv_tower = tmp_path / "conv.onnx"
    onnx.save(_model(), str(conv_tower))  # 1 Conv among 4 weighted/matmul ops: 0.25 > CONV_TOWER_SHARE
    vit = tmp_path / "vit.onnx"
    m = _model()
    extra = [helper.make_node("MatMul", ["y", "w1"], [f"y{i}"], name=f"mm{i}") for i in range(8)]
    m.graph.node.extend(extra)
    onnx.save(m, str(vit))
    assert int8_method_for("image", conv_tower, None) == "onnxruntime"
    assert int8_method_for("image", vit, None) == "nncf"
    assert int8_method_for("text", conv_tower, None) == "nncf"
    assert int8_method_for("image", conv_tower, "nncf") == "nncf"  # asked for: as asked


def _embedding_model() -> onnx.ModelProto:
    """input_ids -> word + token-type embeddings (the token-type table has one row and is looked
    up with zeros expanded to the input's shape, as a Hugging Face RoBERTa/XLM-R tower does)
    -> a MatMul."""
    rng = np.random.default_rng(0)
    nodes = [
        helper.make_node("Gather", ["word", "input_ids"], ["we"], name="word_embedding"),
        helper.make_node("Shape", ["input_ids"], ["shape"], name="shape"),
        helper.make_node("Expand", ["zeros", "shape"], ["types"], name="expand"),
        helper.make_node("Gather", ["token_type", "types"], ["te"], name="token_type_embedding"),
        helper.make_node("Add", ["we", "te"], ["e"], name="add"),
        helper.make_node("MatMul", ["e", "w"], ["y"], name="proj"),
    ]
    inits = [
        numpy_helper.from_array(rng.normal(size=(50, 16)).astype(np.float32), "word"),
        numpy_helper.from_array(rng.normal(size=(1, 16)).astype(np.float32), "token_type"),
        numpy_helper.from_array(np.zeros((1, 1), np.int64), "zeros"),
        numpy_helper.from_array(rng.normal(size=(16, 16)).astype(np.float32), "w"),
    ]
    graph = helper.make_graph(
        nodes,
        "emb",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["n", "l"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", "l", 16])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_single_row_tables_stay_float_so_openvino_compiles_the_graph(tmp_path: Path) -> None:
    pytest.importorskip("nncf")
    model = _embedding_model()
    assert nncf_quant.single_row_tables(model) == ["token_type_embedding"]
    src, dst = tmp_path / "text.onnx", tmp_path / "text_int8.onnx"
    onnx.save(model, str(src))
    rng = np.random.default_rng(1)
    feeds = [{"input_ids": rng.integers(0, 50, (2, 7)).astype(np.int64)} for _ in range(8)]
    nncf_quant.quantize_nncf(src, dst, feeds, nncf_quant.NNCF_INT8["text"])
    q = onnx.load(str(dst))
    gathers = {n.name: n for n in q.graph.node if n.op_type == "Gather"}
    assert gathers["token_type_embedding"].input[0] == "token_type"  # the float table, no DequantizeLinear
    ov = pytest.importorskip("openvino")
    core = ov.Core()
    compiled = core.compile_model(core.read_model(str(dst)), "CPU")
    got = compiled({"input_ids": feeds[0]["input_ids"]})[0]
    assert got.shape == (2, 7, 16)


def test_calibration_batches_stack_inputs_of_one_shape() -> None:
    rng = np.random.default_rng(2)
    lengths = [7, 5, 7, 5, 3, 7, 7]
    feeds = [{"input_ids": rng.integers(0, 50, (1, n)).astype(np.int64)} for n in lengths]
    batches = nncf_quant.batched_feeds(feeds, 3)
    assert [b["input_ids"].shape for b in batches] == [(3, 7), (1, 7), (2, 5), (1, 3)]
    stacked = np.concatenate([b["input_ids"] for b in batches if b["input_ids"].shape[1] == 7])
    assert np.array_equal(stacked, np.concatenate([f["input_ids"] for f in feeds if f["input_ids"].shape[1] == 7]))
    assert nncf_quant.batched_feeds(feeds, 1) == feeds


def _activation_scales(path: Path) -> dict[str, float]:
    q = onnx.load(str(path))
    inits = {i.name: numpy_helper.to_array(i) for i in q.graph.initializer}
    return {
        n.input[0]: float(inits[n.input[1]])
        for n in q.graph.node
        if n.op_type == "QuantizeLinear" and n.input[0] not in inits and inits[n.input[1]].size == 1
    }


def test_batched_calibration_gives_the_ranges_of_inputs_one_by_one(tmp_path: Path) -> None:
    """MinMax ranges are extremes over every input: stacking inputs of one shape into a batch
    (nncf_quant.NNCF_INT8's calibration_batch) leaves every activation scale as it was."""
    pytest.importorskip("nncf")
    src = tmp_path / "text.onnx"
    onnx.save(_embedding_model(), str(src))
    rng = np.random.default_rng(3)
    feeds = [{"input_ids": rng.integers(0, 50, (1, n)).astype(np.int64)} for n in (7, 5, 7, 3, 5, 7)]
    scales = {}
    for rows in (1, 4):
        dst = tmp_path / f"int8_{rows}.onnx"
        got = nncf_quant.quantize_nncf(src, dst, feeds, nncf_quant.settings_for("text", {"calibration_batch": rows}))
        assert got["parameters"]["calibration_batch"] == str(rows) and got["parameters"]["subset_size"] == "6"
        scales[rows] = _activation_scales(dst)
    assert scales[1] and scales[1] == scales[4]
    with pytest.raises(ExportError, match="calibration_batch must be at least 1"):
        nncf_quant.quantize_nncf(src, tmp_path / "x.onnx", feeds, {"calibration_batch": 0})
