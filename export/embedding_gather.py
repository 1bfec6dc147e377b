"""Embedding lookups that gather int8 rows first and dequantise only the rows they took.

NNCF quantises a token-embedding table weight-only and writes the lookup as

    table_int8 -> DequantizeLinear(per row) -> Gather(input_ids)

onnxruntime has no fused kernel for that pair, so every text call dequantises the whole table
(CLIP's 49408 x 512: 101 MB of float32) to gather a few dozen rows of it. Measured with the
slim ViT-B-32 and MobileCLIP2-S0 NNCF int8 text graphs (onnxruntime 1.32, x86): the first call
raised the process's RSS by about 107 MB, which stays in onnxruntime's arena. Dequantising
is element-wise, so gathering first computes the same numbers:

    table_int8 -> Gather(input_ids) -> Cast -> (- zero point) -> (* scale)   (per row: the rows'
                                                                             scales gathered too)
    table_int8 -> Gather(input_ids) -> DequantizeLinear                      (per tensor, or per
                                                                             column)

The caller checks bit for bit that the outputs are unchanged. Only onnx and numpy are needed.
"""

from __future__ import annotations

from typing import Any

import numpy as np

GATHER_FIRST = "embedding lookups gather int8 rows before dequantising"


def _int_attr(node: Any, name: str, default: int) -> int:
    for a in node.attribute:
        if a.name == name:
            return int(a.i)
    return default


def gather_before_dequantize(model: Any) -> int:
    """Rewrite *model* (an onnx ModelProto, in place) as the module says; returns how many
    lookups were rewritten. A lookup that does not match exactly (the dequantised table used by
    another node too, a table that is not an initializer, a Gather along another axis than the
    table's first) is left alone."""
    from onnx import TensorProto, helper, numpy_helper

    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    producer = {out: n for n in graph.node for out in n.output}
    consumers: dict[str, list[Any]] = {}
    for n in graph.node:
        for name in n.input:
            consumers.setdefault(name, []).append(n)
    graph_outputs = {o.name for o in graph.output}

    if _opset(model) < 13:  # Unsqueeze with its axes as an input, negative DequantizeLinear axes
        return 0
    replaced: dict[str, list[Any]] = {}  # a Gather's output -> the nodes that take its place
    dropped: set[str] = set()  # outputs of the DequantizeLinear nodes nothing reads any more
    new_inits: list[Any] = []
    freed: list[list[str]] = []  # the dropped nodes' scale and zero point names
    for gather in [n for n in graph.node if n.op_type == "Gather"]:
        dq = producer.get(gather.input[0])
        if dq is None or dq.op_type != "DequantizeLinear" or dq.output[0] in graph_outputs:
            continue
        if len(consumers.get(dq.output[0], [])) != 1 or _int_attr(gather, "axis", 0) != 0:
            continue
        if any(a.name != "axis" for a in dq.attribute):  # blocked quantisation, an output type
            continue
        table = inits.get(dq.input[0])
        scale = inits.get(dq.input[1])
        has_zero = len(dq.input) > 2 and bool(dq.input[2])
        zero = inits.get(dq.input[2]) if has_zero else None
        if table is None or scale is None or (has_zero and zero is None) or len(table.dims) < 2:
            continue
        rank = len(table.dims)
        axis = _int_attr(dq, "axis", 1)
        axis = axis + rank if axis < 0 else axis
        per_tensor = int(np.prod(scale.dims)) == 1 and len(scale.dims) <= 1
        if not per_tensor and axis == 0 and scale.data_type != TensorProto.FLOAT:
            continue  # the per-row form below computes in float32
        out = gather.output[0]
        base = gather.name or out
        rows = f"{out}_int8_rows"
        nodes = [helper.make_node("Gather", [dq.input[0], gather.input[1]], [rows], name=base + "_int8", axis=0)]
        if per_tensor or axis != 0:
            # Per tensor, or one scale per column: the same DequantizeLinear on the gathered rows;
            # a column axis counted from the end is the same axis after the lookup.
            attrs: dict[str, Any] = {} if per_tensor else {"axis": axis - rank}
            nodes.append(
                helper.make_node("DequantizeLinear", [rows, *dq.input[1:]], [out], name=base + "_dequantize", **attrs)
            )
        else:
            # One scale per row: the rows' scales (and zero points) are looked up with the rows;
            # q - zp is exact in float, so (q - zp) * scale rounds once, as DequantizeLinear does.
            trailing = f"{out}_row_axes"
            new_inits.append(numpy_helper.from_array(np.arange(-(rank - 1), 0, dtype=np.int64), trailing))
            scales = f"{out}_row_scales"
            nodes += [
                helper.make_node(
                    "Gather", [dq.input[1], gather.input[1]], [scales + "_flat"], name=base + "_scales", axis=0
                ),
                helper.make_node("Unsqueeze", [scales + "_flat", trailing], [scales], name=base + "_scales_unsqueeze"),
                helper.make_node("Cast", [rows], [rows + "_float"], name=base + "_cast", to=TensorProto.FLOAT),
            ]
            values = rows + "_float"
            if zero is not None and np.any(numpy_helper.to_array(zero)):
                zeros = f"{out}_row_zero_points"
                nodes += [
                    helper.make_node(
                        "Gather", [dq.input[2], gather.input[1]], [zeros + "_flat"], name=base + "_zero_points", axis=0
                    ),
                    helper.make_node(
                        "Unsqueeze", [zeros + "_flat", trailing], [zeros + "_int"], name=base + "_zero_points_unsqueeze"
                    ),
                    helper.make_node(
                        "Cast", [zeros + "_int"], [zeros], name=base + "_zero_points_cast", to=TensorProto.FLOAT
                    ),
                    helper.make_node("Sub", [values, zeros], [rows + "_centred"], name=base + "_centre"),
                ]
                values = rows + "_centred"
            nodes.append(helper.make_node("Mul", [values, scales], [out], name=base + "_scale"))
        replaced[out] = nodes
        dropped.add(dq.output[0])
        freed.append(list(dq.input[1:]))
    if not replaced:
        return 0
    rewritten = []
    for n in graph.node:
        if n.op_type == "DequantizeLinear" and n.output[0] in dropped:
            continue
        rewritten.extend(replaced.get(n.output[0], [n]) if n.op_type == "Gather" else [n])
    del graph.node[:]
    graph.node.extend(rewritten)
    graph.initializer.extend(new_inits)
    used = {i for n in graph.node for i in n.input} | graph_outputs
    orphans = {name for dq_inputs in freed for name in dq_inputs if name not in used}
    if orphans:  # an all-zero zero point the per-row form does not need
        kept_inits = [i for i in graph.initializer if i.name not in orphans]
        del graph.initializer[:]
        graph.initializer.extend(kept_inits)
    # The dequantised tables' recorded shapes (if any) name tensors that are gone.
    kept = [v for v in graph.value_info if v.name not in dropped]
    del graph.value_info[:]
    graph.value_info.extend(kept)
    return len(replaced)


def _opset(model: Any) -> int:
    return max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)
