"""The fp16 graph for onnxruntime's CUDA execution provider: transformer fusions, then fp16.

``fuse_for_gpu(fp32_path, out_path, ...)`` runs onnxruntime.transformers' optimizer with
``use_gpu=True`` (LayerNorm/SkipLayerNorm, GELU and bias fusions into kernels the CUDA provider
has) on a clip-rt fp32 graph, fuses open_clip's attention blocks into ``com.microsoft.Attention``
(:func:`fuse_open_clip_attention`: onnxruntime's own attention fusions do not match the open_clip
export), then converts it to fp16 with float32 I/O
(``keep_io_types``: the graph contract stays float32 in, float32 out). With ``fp16=False`` the
fused graph stays fp32, which the CPU provider can run: that is how the fusions are checked
against the unfused graph on machines without a GPU (tests/test_gpu_path.py).

Only onnx / onnxruntime are needed (no torch). ``export/optimize.py`` holds the CPU variants.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Union

from clip_rt.errors import InputError

PathLike = Union[str, "os.PathLike[str]"]
MODEL_TYPES = ("clip", "vit")


def fuse_for_gpu(
    onnx_path: PathLike,
    out_path: PathLike,
    *,
    num_heads: int = 0,
    hidden_size: int = 0,
    model_type: str = "clip",
    fp16: bool = True,
    keep_fp32_ops: Sequence[str] = (),
) -> dict[str, int]:
    """Write the fused (and, with *fp16*, float16 with float32 I/O) variant of the fp32 graph
    *onnx_path* to *out_path*; return the fused operator counts (``{"Attention": 12, ...}``).

    *num_heads*/*hidden_size*: the tower's attention heads and width (0: read from the graph by
    onnxruntime's fusions; ``num_heads=0`` also skips :func:`fuse_open_clip_attention`, which
    must be told the head count).
    *keep_fp32_ops*: op types left in float32 behind Casts (on top of onnxruntime's default
    block list).
    """
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST
    from onnxruntime.transformers.optimizer import optimize_model

    src, dst = Path(onnx_path), Path(out_path)
    if model_type not in MODEL_TYPES:
        raise InputError(f"model_type must be one of {', '.join(MODEL_TYPES)}, got {model_type!r}")
    if not src.is_file():
        raise InputError(f"no ONNX graph at {src}")
    for label, value in (("num_heads", num_heads), ("hidden_size", hidden_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise InputError(f"{label} must be a non-negative integer (0 = read from the graph), got {value!r}")
    # opt_level=0: only the transformer-pattern fusions, no onnxruntime session (which with
    # use_gpu would need a GPU here); the CUDA provider applies its own graph rewrites at load.
    with _reduce_l2_shape_inference():
        model = optimize_model(
            str(src), model_type=model_type, num_heads=num_heads, hidden_size=hidden_size, opt_level=0, use_gpu=True
        )
        stats = {k: int(v) for k, v in model.get_fused_operator_statistics().items() if v}
        if num_heads > 0:
            fused = fuse_open_clip_attention(model, num_heads)
            if fused:
                stats["Attention"] = fused
        if fp16:
            model.convert_float_to_float16(
                keep_io_types=True, op_block_list=list(DEFAULT_OP_BLOCK_LIST) + list(keep_fp32_ops)
            )
    dst.parent.mkdir(parents=True, exist_ok=True)
    model.save_model_to_file(str(dst))
    return stats


# Nodes between the in-projection and q @ k^T / attn @ v in the open_clip export
# (nn.MultiheadAttention: unflatten qkv, select q/k/v, split heads, scale q and k).
_QKV_PATH_OPS = ("Mul", "Reshape", "Transpose", "Gather", "Squeeze", "Unsqueeze")


def fuse_open_clip_attention(model: Any, num_heads: int, op: str = "Attention") -> int:
    """Replace each open_clip (nn.MultiheadAttention) self-attention block of *model*, an
    onnxruntime.transformers ``OnnxModel``, by one ``com.microsoft.Attention`` node (fused QKV
    projection, flash/memory-efficient attention on CUDA) and the output projection as MatMul.

    ``op="MultiHeadAttention"`` (the CPU int8 path) keeps the QKV projection a plain MatMul, so
    it can still be quantised, and fuses only what follows: split, heads, scaled q @ k^T,
    softmax, @ v, merge (``com.microsoft.MultiHeadAttention`` with the QKV bias).

    onnxruntime's own CLIP/ViT attention fusions expect the Hugging Face graph and match
    nothing in the open_clip export. A block is replaced only when its whole pattern matches,
    so a graph of another shape is left as it was. Returns the number of blocks fused.
    """
    from onnx import helper, numpy_helper

    fused = 0
    for softmax in [n for n in model.graph().node if n.op_type == "Softmax"]:
        block = _match_attention(model, softmax)
        if block is None:
            continue
        x, w_qkv, b_qkv, scale, out_proj, out_bias, last = block
        name = f"OpenClipAttention_{fused}"
        attn_out, proj_out, y = f"{name}_out", f"{name}_proj", last.output[0]
        w_out = numpy_helper.to_array(model.get_initializer(out_proj)).T.copy()
        model.add_initializer(numpy_helper.from_array(w_out, f"{name}_out_proj_weight_t"))
        if op == "MultiHeadAttention":
            qkv, q, k, v = (f"{name}_{t}" for t in ("qkv", "q", "k", "v"))
            nodes = [
                helper.make_node("MatMul", [x, w_qkv], [qkv], name=f"{name}_qkv_proj"),
                helper.make_node("Split", [qkv], [q, k, v], name=f"{name}_split", axis=-1, num_outputs=3),
                helper.make_node(
                    "MultiHeadAttention",
                    [q, k, v, b_qkv],
                    [attn_out],
                    name=name,
                    domain="com.microsoft",
                    num_heads=num_heads,
                    scale=scale,
                ),
            ]
        else:
            nodes = [
                helper.make_node(
                    "Attention",
                    [x, w_qkv, b_qkv],
                    [attn_out],
                    name=name,
                    domain="com.microsoft",
                    num_heads=num_heads,
                    scale=scale,
                )
            ]
        nodes.append(
            helper.make_node(
                "MatMul",
                [attn_out, f"{name}_out_proj_weight_t"],
                [proj_out if out_bias else y],
                name=f"{name}_out_proj",
            )
        )
        if out_bias:
            nodes.append(helper.make_node("Add", [proj_out, out_bias], [y], name=f"{name}_out_bias"))
        model.remove_node(last)
        model.add_nodes(nodes)
        fused += 1
    if fused:
        if not any(o.domain == "com.microsoft" for o in model.model.opset_import):
            model.model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
        model.prune_graph()
        model.topological_sort()
    return fused


def _match_attention(model: Any, softmax: Any) -> Any:
    """(x, qkv weight, qkv bias, scale, out-proj weight, out-proj bias or None, last node) of
    the block around *softmax*, or None when it is not the open_clip pattern."""
    import numpy as np
    from onnx import numpy_helper

    producer = model.output_name_to_node()
    consumers = model.input_name_to_nodes()
    init = model.get_initializer

    def const(name: str) -> Any:
        tensor = init(name)
        return None if tensor is None else numpy_helper.to_array(tensor)

    qk = producer.get(softmax.input[0])
    after = consumers.get(softmax.output[0], [])
    if qk is None or qk.op_type != "MatMul" or len(after) != 1 or after[0].op_type != "MatMul":
        return None
    av = after[0]
    if av.input[0] != softmax.output[0]:
        return None
    paths = []
    for start in (qk.input[0], qk.input[1], av.input[1]):
        found = _walk_to_projection(producer, const, start)
        if found is None:
            return None
        paths.append(found)
    (add_q, idx_q, sq), (add_k, idx_k, sk), (add_v, idx_v, sv) = paths
    if not (add_q is add_k is add_v) or (idx_q, idx_k, idx_v) != (0, 1, 2) or sv != 1.0:
        return None
    matmul_name, bias_name = (
        (add_q.input[0], add_q.input[1]) if init(add_q.input[1]) is not None else (add_q.input[1], add_q.input[0])
    )
    in_mm, bias = producer.get(matmul_name), const(bias_name)
    if in_mm is None or in_mm.op_type != "MatMul" or bias is None or const(in_mm.input[1]) is None:
        return None
    w_qkv = const(in_mm.input[1])
    hidden = w_qkv.shape[0]
    if w_qkv.shape != (hidden, 3 * hidden) or bias.shape != (3 * hidden,):
        return None
    to_seq_first = producer.get(in_mm.input[0])
    if to_seq_first is None or to_seq_first.op_type != "Transpose" or _perm(to_seq_first) != [1, 0, 2]:
        return None
    # Down from attn @ v: merge heads, out-projection (Gemm, transB), back to batch-first.
    node, out_proj, out_bias = av, None, None
    while True:
        nxt = consumers.get(node.output[0], [])
        if len(nxt) != 1:
            return None
        node = nxt[0]
        if node.op_type == "Gemm" and out_proj is None:
            attrs = {a.name: a for a in node.attribute}
            trans_b = attrs["transB"].i if "transB" in attrs else 0
            if trans_b != 1 or ("transA" in attrs and attrs["transA"].i) or const(node.input[1]) is None:
                return None
            if any(a in attrs and abs(attrs[a].f - 1.0) > 0 for a in ("alpha", "beta")):
                return None
            out_proj = node.input[1]
            out_bias = node.input[2] if len(node.input) > 2 and node.input[2] else None
            continue
        if node.op_type == "Transpose" and out_proj is not None and _perm(node) == [1, 0, 2]:
            break
        if node.op_type not in ("Transpose", "Reshape"):
            return None
    if out_proj is None or const(out_proj).shape != (hidden, hidden):
        return None
    scale = float(np.float32(sq) * np.float32(sk))
    return to_seq_first.input[0], in_mm.input[1], bias_name, scale, out_proj, out_bias, node


def _walk_to_projection(producer: dict[str, Any], const: Any, name: str) -> Any:
    """Up from q/k/v to the in-projection's bias Add: (Add node, q/k/v index, scale factor)."""
    scale, index = 1.0, None
    node = producer.get(name)
    while node is not None and node.op_type in _QKV_PATH_OPS:
        data = node.input[0]
        if node.op_type == "Mul":
            factors = [const(i) for i in node.input]
            if sum(f is not None for f in factors) != 1:
                return None
            factor = next(f for f in factors if f is not None)
            if factor.size != 1:
                return None
            scale *= float(factor.reshape(()))
            data = node.input[0] if factors[1] is not None else node.input[1]
        elif node.op_type == "Gather":
            idx = const(node.input[1])
            if idx is None or idx.size != 1 or index is not None:
                return None
            index = int(idx.reshape(()))
        node = producer.get(data)
    if node is None or node.op_type != "Add" or index is None:
        return None
    return node, index, scale


def _perm(node: Any) -> list[int]:
    return [list(a.ints) for a in node.attribute if a.name == "perm"][0] if node.attribute else []


@contextlib.contextmanager
def _reduce_l2_shape_inference() -> Iterator[None]:
    """Teach onnxruntime's symbolic shape inference the opset-18 ReduceL2 (axes as an input).

    The graphs end in ``F.normalize``, whose ReduceL2 that inference cannot shape; it then gives
    up on the whole graph, and the fusions that check shapes (SkipLayerNormalization, attention)
    are skipped. ReduceL2's output shape follows exactly ReduceSum's rule, which it handles.
    """
    from onnxruntime.tools import symbolic_shape_infer as tools_copy
    from onnxruntime.transformers import shape_infer_helper

    # onnxruntime.transformers imports the module a second time under the top-level name
    # ``symbolic_shape_infer`` (a sys.path addition): both class objects need the handler.
    classes = {tools_copy.SymbolicShapeInference, shape_infer_helper.SymbolicShapeInference}
    originals = {cls: cls.__dict__["__init__"] for cls in classes}

    def patch(cls: Any) -> None:
        original = originals[cls]

        def init(self: Any, *args: Any, **kwargs: Any) -> None:
            original(self, *args, **kwargs)
            self.dispatcher_.setdefault("ReduceL2", self._infer_ReduceSum)

        cls.__init__ = init

    for cls in classes:
        patch(cls)
    try:
        yield
    finally:
        for cls, original in originals.items():
            cls.__init__ = original


def fix_batch(onnx_path: PathLike, out_path: PathLike, batch: int) -> Path:
    """Copy a clip-rt graph with its batch axis fixed to *batch*.

    With every shape static, onnxruntime folds the graph's shape arithmetic (Shape, Concat,
    Expand of the class token) into constants at load, so no node is left for the CPU provider:
    CUDA graphs (``enable_cuda_graph``) need the whole graph on the CUDA provider.
    """
    import onnx

    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise InputError(f"batch must be a positive integer, got {batch!r}")
    src, dst = Path(onnx_path), Path(out_path)
    if not src.is_file():
        raise InputError(f"no ONNX graph at {src}")
    model = onnx.load(str(src))
    for value in [*model.graph.input, *model.graph.output]:
        dims = value.type.tensor_type.shape.dim
        if not dims:
            raise InputError(f"{src.name}: {value.name!r} has no shape to fix")
        dims[0].Clear()
        dims[0].dim_value = batch
    del model.graph.value_info[:]  # inferred shapes still name the symbolic batch
    dst.parent.mkdir(parents=True, exist_ok=True)
    onnx.save_model(model, str(dst))
    return dst
