"""Attention's key transpose, moved next to the MatMul that uses it (int8 QDQ graphs).

torch's dynamo exporter writes ``F.scaled_dot_product_attention`` as
``K -> Reshape(flatten heads) -> Transpose(0,2,1) -> Reshape(back) -> Mul(scale) -> MatMul``;
NNCF then puts QuantizeLinear/DequantizeLinear before the MatMul. OpenVINO's CPU plugin merges
that Transpose with the head transpose before it into one 3-D Transpose (perm 1,2,0), which it
runs on a slow reference kernel: with the other transposes, 21% of ViT-B/32's int8 image time
at batch 8 on an AMX host, 10.5% after this rewrite (bench/results/attention_layout.json).
Scaling by a scalar and per-tensor (de)quantisation commute with a transpose, so the rewrite
below gives

    K -> Mul(scale) -> QuantizeLinear -> DequantizeLinear -> Transpose(last two axes) -> MatMul

which computes the same numbers (checked bit for bit by the caller) and which OpenVINO folds
into the MatMul. Only onnx and numpy are needed here.
"""

from __future__ import annotations

from typing import Any, Optional

import numpy as np

KEY_TRANSPOSE = "attention key transpose moved next to its MatMul"


def _perm(node: Any) -> Optional[list[int]]:
    for a in node.attribute:
        if a.name == "perm":
            return list(a.ints)
    return None


def _scalar_constants(graph: Any) -> set[str]:
    """Names of initializers and Constant outputs holding exactly one value."""
    from onnx import numpy_helper

    names = {i.name for i in graph.initializer if int(np.prod(i.dims)) == 1}
    for node in graph.node:
        if node.op_type == "Constant":
            for a in node.attribute:
                if a.name == "value" and numpy_helper.to_array(a.t).size == 1:
                    names.add(node.output[0])
    return names


def _rank(graph: Any, name: str) -> Optional[int]:
    for vi in (*graph.value_info, *graph.input, *graph.output):
        if vi.name == name and vi.type.tensor_type.HasField("shape"):
            return len(vi.type.tensor_type.shape.dim)
    return None


def move_key_transposes(model: Any) -> int:
    """Rewrite *model* (an onnx ModelProto, in place) as the module says; returns how many
    MatMuls were rewritten. A chain that does not match exactly (a consumer elsewhere, a
    non-scalar scale or quantisation parameter, an unknown rank) is left alone."""
    from onnx import helper

    graph = model.graph
    producer = {out: n for n in graph.node for out in n.output}
    consumers: dict[str, list[Any]] = {}
    for n in graph.node:
        for name in n.input:
            consumers.setdefault(name, []).append(n)
    scalars = _scalar_constants(graph)

    def only(kind: str, name: str) -> Optional[Any]:
        node = producer.get(name)
        if node is None or node.op_type != kind or len(consumers.get(node.output[0], [])) != 1:
            return None
        return node

    removed: set[str] = set()
    stale: set[str] = set()
    insert_after: dict[str, Any] = {}
    for matmul in [n for n in graph.node if n.op_type == "MatMul"]:
        dq = only("DequantizeLinear", matmul.input[1])
        q = dq and only("QuantizeLinear", dq.input[0])
        mul = q and only("Mul", q.input[0])
        back = mul and only("Reshape", mul.input[0])
        transpose = back and only("Transpose", back.input[0])
        flat = transpose and only("Reshape", transpose.input[0])
        if not (dq and q and mul and back and transpose and flat) or _perm(transpose) != [0, 2, 1]:
            continue
        if mul.input[1] not in scalars or not all(x in scalars for x in (*q.input[1:], *dq.input[1:])):
            continue  # per-channel scales would not commute with the transpose
        rank = _rank(graph, flat.input[0])
        if rank is None or rank < 3 or _rank(graph, matmul.input[0]) != rank:
            continue
        mul.input[0] = flat.input[0]  # the key as it was before flattening the heads
        moved = dq.output[0] + "_key_t"
        swap = list(range(rank - 2)) + [rank - 1, rank - 2]
        insert_after[dq.name] = helper.make_node(
            "Transpose", [dq.output[0]], [moved], name=transpose.name + "_at_matmul", perm=swap
        )
        matmul.input[1] = moved
        removed.update({flat.name, transpose.name, back.name})
        stale.update({mul.output[0], q.output[0], dq.output[0]})
    if not insert_after:
        return 0
    nodes = []
    for n in graph.node:
        if n.name in removed:
            continue
        nodes.append(n)
        if n.name in insert_after:
            nodes.append(insert_after[n.name])
    del graph.node[:]
    graph.node.extend(_live(nodes, {o.name for o in graph.output}))
    kept = [v for v in graph.value_info if v.name not in stale]  # their recorded shapes changed
    del graph.value_info[:]
    graph.value_info.extend(kept)
    used = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
    inits = [i for i in graph.initializer if i.name in used]  # the removed reshapes' shape constants
    del graph.initializer[:]
    graph.initializer.extend(inits)
    return len(insert_after)


def _live(nodes: list[Any], outputs: set[str]) -> list[Any]:
    """*nodes* without those whose outputs nothing uses any more (the removed reshapes' shape
    arithmetic), in their order."""
    needed = set(outputs)
    keep = []
    for n in reversed(nodes):
        if any(o in needed for o in n.output):
            keep.append(n)
            needed.update(i for i in n.input if i)
    return keep[::-1]


def max_output_difference(a: Any, b: Any, feeds: list[dict[str, Any]]) -> float:
    """Largest absolute difference between the outputs of graphs *a* and *b* (paths) on
    *feeds*, run with onnxruntime on the CPU (0.0: bit for bit the same)."""
    import onnxruntime as ort

    runs = [ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]) for p in (a, b)]
    worst = 0.0
    for feed in feeds:
        outs = [r.run(None, feed) for r in runs]
        for x, y in zip(*outs):
            if x.shape != y.shape:
                return float("inf")
            if x.size:
                worst = max(worst, float(np.max(np.abs(x.astype(np.float64) - y.astype(np.float64)))))
    return worst
