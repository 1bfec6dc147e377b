"""clip_rt_export.embedding_gather: an int8 embedding lookup gathers its rows before
dequantising them, with bit-identical outputs, and a lookup it cannot prove safe is left alone."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from clip_rt_export.attention_layout import max_output_difference  # noqa: E402
from clip_rt_export.embedding_gather import gather_before_dequantize  # noqa: E402

VOCAB, DIM = 50, 6


def _lookup(
    scales: str = "row",
    zero_points: bool = True,
    dq_axis: int | None = None,
    gather_axis: int = 0,
    second_reader: bool = False,
    computed_table: bool = False,
) -> onnx.ModelProto:
    """ids [b, len] -> DequantizeLinear(int8 table) -> Gather -> Add(position), as NNCF writes a
    token embedding (one scale per row, ``axis=0``); *scales* "tensor" or "column" for the others."""
    rng = np.random.default_rng(0)
    table = rng.integers(-127, 128, size=(VOCAB, DIM)).astype(np.int8)
    shape = {"row": (VOCAB,), "column": (DIM,), "tensor": ()}[scales]
    scale = rng.uniform(0.001, 0.05, size=shape).astype(np.float32)
    zero = (rng.integers(-3, 4, size=shape) if zero_points else np.zeros(shape)).astype(np.int8)
    axis = {"row": 0, "column": 1, "tensor": None}[scales] if dq_axis is None else dq_axis
    inits = [
        numpy_helper.from_array(scale, "scale"),
        numpy_helper.from_array(zero, "zero"),
        numpy_helper.from_array(rng.normal(size=(DIM,)).astype(np.float32), "position"),
    ]
    nodes = []
    if computed_table:  # the table comes out of another node, not straight from an initializer
        inits.append(numpy_helper.from_array(table, "table_src"))
        nodes.append(helper.make_node("Identity", ["table_src"], ["table"], name="copy"))
    else:
        inits.append(numpy_helper.from_array(table, "table"))
    nodes += [
        helper.make_node(
            "DequantizeLinear",
            ["table", "scale", "zero"],
            ["table_f"],
            name="dq",
            **({} if axis is None else {"axis": axis}),
        ),
        helper.make_node("Gather", ["table_f", "ids"], ["rows"], name="embedding", axis=gather_axis),
        helper.make_node("Add", ["rows", "position"], ["out"], name="add"),
    ]
    outputs = [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["b", "n", DIM])]
    if second_reader:
        nodes.append(helper.make_node("ReduceSum", ["table_f"], ["total"], name="also", keepdims=0))
        outputs.append(helper.make_tensor_value_info("total", TensorProto.FLOAT, []))
    graph = helper.make_graph(
        nodes, "lookup", [helper.make_tensor_value_info("ids", TensorProto.INT64, ["b", "n"])], outputs, inits
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _feeds() -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(1)
    return [{"ids": rng.integers(0, VOCAB, size=(b, n)).astype(np.int64)} for b, n in ((1, 7), (3, 4), (2, 1))]


@pytest.mark.parametrize("scales,zero_points", [("row", True), ("row", False), ("column", True), ("tensor", True)])
def test_lookup_gathers_int8_rows_and_nothing_changes(tmp_path: Path, scales: str, zero_points: bool) -> None:
    onnx.save(_lookup(scales, zero_points), str(tmp_path / "a.onnx"))
    after = _lookup(scales, zero_points)
    assert gather_before_dequantize(after) == 1
    onnx.checker.check_model(after, full_check=True)
    ops = [n.op_type for n in after.graph.node]
    assert ops[0] == "Gather" and after.graph.node[0].input == ["table", "ids"]  # the int8 table itself
    # nothing dequantises the whole table any more
    assert not [n for n in after.graph.node if n.op_type == "DequantizeLinear" and n.input[0] == "table"]
    if scales == "row":
        assert "DequantizeLinear" not in ops and ("Sub" in ops) == zero_points
        assert ("zero" in {i.name for i in after.graph.initializer}) == zero_points  # an all-zero one is dropped
    else:
        assert ops[1] == "DequantizeLinear"
    onnx.save(after, str(tmp_path / "b.onnx"))
    assert max_output_difference(tmp_path / "a.onnx", tmp_path / "b.onnx", _feeds()) == 0.0


def test_negative_dequantize_axis_is_understood(tmp_path: Path) -> None:
    onnx.save(_lookup("column", dq_axis=-1), str(tmp_path / "a.onnx"))
    after = _lookup("column", dq_axis=-1)
    assert gather_before_dequantize(after) == 1
    onnx.save(after, str(tmp_path / "b.onnx"))
    assert max_output_difference(tmp_path / "a.onnx", tmp_path / "b.onnx", _feeds()) == 0.0


@pytest.mark.parametrize("kind", ["second_reader", "computed_table", "gather_axis"])
def test_lookups_it_cannot_prove_safe_are_left_alone(kind: str) -> None:
    model = _lookup(**({"gather_axis": 1} if kind == "gather_axis" else {kind: True}))
    before = model.SerializeToString()
    assert gather_before_dequantize(model) == 0
    assert model.SerializeToString() == before


def test_openvino_gives_the_same_numbers(tmp_path: Path) -> None:
    ov = pytest.importorskip("openvino")
    after = _lookup("row")
    gather_before_dequantize(after)
    core = ov.Core()
    outs = []
    for model in (_lookup("row"), after):
        path = tmp_path / f"m{len(outs)}.onnx"
        onnx.save(model, str(path))
        compiled = core.compile_model(str(path), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
        outs.append([compiled.create_infer_request().infer({0: f["ids"]})[0].copy() for f in _feeds()])
    for a, b in zip(*outs):
        np.testing.assert_array_equal(a, b)


def test_the_bench_refuses_what_it_cannot_measure(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from bench import embedding_gather

    for argv, said in (
        ([], "give at least one NNCF int8 text graph"),
        ([str(tmp_path / "none.onnx")], "no such graph file"),
        (["x.onnx", "--rounds", "0"], "--rounds and --threads must be at least 1"),
    ):
        with pytest.raises(SystemExit) as exc:
            embedding_gather.main(argv)
        assert exc.value.code == 2 and said in capsys.readouterr().err
    already = _lookup()
    gather_before_dequantize(already)
    onnx.save(already, str(tmp_path / "done.onnx"))
    with pytest.raises(SystemExit, match="no int8 embedding lookup to rewrite"):
        embedding_gather.compare(tmp_path / "done.onnx", rounds=1, threads=1, backends=["onnxruntime"])
