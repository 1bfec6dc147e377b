"""clip_rt_export.attention_layout: the key transpose of a QDQ attention moves next to its
MatMul, exactly, and a chain it cannot prove safe is left alone."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from clip_rt_export.attention_layout import max_output_difference, move_key_transposes  # noqa: E402

HEADS, LEN, DIM = 2, 5, 4


def _attention(per_channel_scale: bool = False, extra_consumer: bool = False, big: bool = False) -> onnx.ModelProto:
    """q, k: [batch, heads, len, dim] -> scores = q @ (k^T * s), k^T written as the dynamo
    exporter writes scaled_dot_product_attention's (flatten heads, transpose, unflatten) and
    quantised per tensor before the MatMul as NNCF does."""
    k_scale = np.full((LEN,), 0.05, np.float32) if per_channel_scale else np.array(0.05, np.float32)
    inits = [
        numpy_helper.from_array(np.array([-1, LEN, DIM], np.int64), "flat_shape"),
        numpy_helper.from_array(np.array([-1, HEADS, DIM, LEN], np.int64), "back_shape"),
        numpy_helper.from_array(np.array(0.5, np.float32), "s"),
        numpy_helper.from_array(k_scale, "k_scale"),
        numpy_helper.from_array(np.zeros(k_scale.shape, np.int8), "k_zero"),
    ]
    nodes = [
        helper.make_node("Reshape", ["k", "flat_shape"], ["k_flat"], name="flat"),
        helper.make_node("Transpose", ["k_flat"], ["k_t"], name="key_t", perm=[0, 2, 1]),
        helper.make_node("Reshape", ["k_t", "back_shape"], ["k_back"], name="back"),
        helper.make_node("Mul", ["k_back", "s"], ["k_scaled"], name="scale"),
        helper.make_node(
            "QuantizeLinear",
            ["k_scaled", "k_scale", "k_zero"],
            ["k_q"],
            name="q",
            **({"axis": 3} if per_channel_scale else {}),
        ),
        helper.make_node(
            "DequantizeLinear",
            ["k_q", "k_scale", "k_zero"],
            ["k_dq"],
            name="dq",
            **({"axis": 3} if per_channel_scale else {}),
        ),
        helper.make_node("MatMul", ["q_in", "k_dq"], ["scores"], name="scores"),
    ]
    outputs = [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["b", HEADS, LEN, LEN])]
    if extra_consumer:
        nodes.append(helper.make_node("Identity", ["k_t"], ["k_t_too"], name="also"))
        outputs.append(helper.make_tensor_value_info("k_t_too", TensorProto.FLOAT, None))
    if big:  # a weight large enough for onnx to write it as external data (> 1 KiB)
        inits.append(numpy_helper.from_array(np.random.default_rng(1).normal(size=(DIM, 300)).astype(np.float32), "w"))
        nodes.append(helper.make_node("MatMul", ["q_in", "w"], ["extra"], name="extra"))
        outputs.append(helper.make_tensor_value_info("extra", TensorProto.FLOAT, None))
    four_d = ["b", HEADS, LEN, DIM]
    graph = helper.make_graph(
        nodes,
        "attn",
        [
            helper.make_tensor_value_info("q_in", TensorProto.FLOAT, four_d),
            helper.make_tensor_value_info("k", TensorProto.FLOAT, four_d),
        ],
        outputs,
        inits,
        value_info=[helper.make_tensor_value_info("k_dq", TensorProto.FLOAT, ["b", HEADS, DIM, LEN])],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _feeds() -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(0)
    return [
        {
            "q_in": rng.normal(size=(3, HEADS, LEN, DIM)).astype(np.float32),
            "k": rng.normal(size=(3, HEADS, LEN, DIM)).astype(np.float32),
        }
        for _ in range(2)
    ]


def test_key_transpose_moves_to_the_matmul_and_nothing_changes(tmp_path: Path) -> None:
    before = _attention()
    onnx.save(before, str(tmp_path / "a.onnx"))
    after = _attention()
    assert move_key_transposes(after) == 1
    onnx.checker.check_model(after)
    ops = [n.op_type for n in after.graph.node]
    assert ops == ["Mul", "QuantizeLinear", "DequantizeLinear", "Transpose", "MatMul"]
    assert [list(a.ints) for a in after.graph.node[3].attribute] == [[0, 1, 3, 2]]
    assert {i.name for i in after.graph.initializer} == {"s", "k_scale", "k_zero"}  # the reshape shapes went
    assert "k_dq" not in {v.name for v in after.graph.value_info}  # its recorded shape was the old one
    onnx.save(after, str(tmp_path / "b.onnx"))
    assert max_output_difference(tmp_path / "a.onnx", tmp_path / "b.onnx", _feeds()) == 0.0


@pytest.mark.parametrize("kind", ["per_channel_scale", "extra_consumer"])
def test_chains_it_cannot_prove_safe_are_left_alone(kind: str) -> None:
    model = _attention(**{kind: True})
    ops = [n.op_type for n in model.graph.node]
    assert move_key_transposes(model) == 0
    assert [n.op_type for n in model.graph.node] == ops


def test_a_difference_is_reported(tmp_path: Path) -> None:
    """What the export's check sees when a rewrite would change the numbers."""
    onnx.save(_attention(), str(tmp_path / "a.onnx"))
    other = _attention()
    other.graph.initializer[2].CopyFrom(numpy_helper.from_array(np.array(0.25, np.float32), "s"))
    onnx.save(other, str(tmp_path / "b.onnx"))
    assert max_output_difference(tmp_path / "a.onnx", tmp_path / "b.onnx", _feeds()) > 0.0


@pytest.mark.parametrize("external_data", [False, True])
def test_export_keeps_nncf_graph_when_the_rewrite_is_not_exact(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, external_data: bool
) -> None:
    from clip_rt_export import attention_layout, nncf_quant

    dst = tmp_path / "image_int8.onnx"
    ref = tmp_path / "ref"
    ref.mkdir()
    onnx.save(_attention(big=True), str(ref / "ref.onnx"))
    note = nncf_quant._save_with_rewrites(_attention(big=True), dst, _feeds(), external_data)
    assert Path(str(dst) + ".data").exists() == external_data
    assert note.startswith("attention key transpose moved next to its MatMul (1x; outputs bit-identical")
    assert "Transpose" in [n.op_type for n in onnx.load(str(dst)).graph.node][3:4]
    assert max_output_difference(ref / "ref.onnx", dst, _feeds()) == 0.0  # weights written, not lost
    monkeypatch.setattr(attention_layout, "max_output_difference", lambda *a: 0.5)
    note = nncf_quant._save_with_rewrites(_attention(big=True), dst, _feeds(), external_data)
    assert note == "not done: attention key transpose moved next to its MatMul (it changed outputs by 0.5)"
    kept = onnx.load(str(dst))
    assert [n.op_type for n in kept.graph.node][:2] == ["Reshape", "Transpose"]  # as NNCF wrote it
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp folder left
