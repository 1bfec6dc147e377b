"""Graph variants for speed: transformer fusion and int8 quantisation of an exported fp32 graph.

``optimize_graph(onnx_path, out_path, kind, ...)`` turns a clip-rt fp32 graph (image or text,
contract in ARCHITECTURE.md) into one of ``KINDS``. The variants and their measured speed and
parity on this project's reference CPU are in ``docs/benchmarks/history.md`` (``python -m bench``); the
export stage calls ``optimize_graph(src, dst, calibration_inputs=..., **RECOMMENDED_INT8[encoder])`` for ``int8``.

Only onnx / onnxruntime are needed (no torch), so the benchmarks can call this too.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np

from clip_rt.errors import ExportError, InputError

PathLike = Union[str, "os.PathLike[str]"]

KINDS: tuple[str, ...] = (
    "fused",  # fp32, onnxruntime.transformers fusions (LayerNorm/Gelu/...)
    "int8-dynamic",  # quantize_dynamic: int8 weights, activations quantised at run time
    "int8-dynamic-fused",  # fusions first, then quantize_dynamic
    "int8-static",  # quantize_static QDQ, activations calibrated on calibration_inputs
    "int8-static-fused",
    "fused-mha",  # fp32: the fusions plus open_clip attention as com.microsoft.MultiHeadAttention
    "int8-static-fused-mha",  # ... then quantize_static (the QKV/out projections stay quantisable MatMuls)
)
# Quantising MatMul/Gemm captures nearly all of a ViT's/text tower's FLOPs; the patch-embedding
# Conv is one small op whose integer kernel (ConvInteger) is slower than fp32 on CPU.
_QUANT_OPS = ("MatMul", "Gemm")
# The text tower's token embedding (a Gather on a vocab x width table: 100 MB of ViT-B/32's
# 250 MB text graph) costs no time but dominates memory; int8 rows cut the graph and the
# session's peak RSS by ~110 MB at unchanged parity (docs/benchmarks/history.md).
TEXT_QUANT_OPS = ("MatMul", "Gemm", "Gather")

# What the export stage writes for the bundle's ``int8`` precision, per encoder:
# ``optimize_graph(fp32_path, int8_path, calibration_inputs=..., **RECOMMENDED_INT8[encoder])``
# (measurements in docs/benchmarks/history.md). Static: calibrated activation scales, so
# an input's embedding does not depend on the rest of its batch.
RECOMMENDED_INT8: dict[str, dict[str, Any]] = {
    "image": {
        "kind": "int8-static",
        "per_channel": True,
        "reduce_range": False,
        "calibration_method": "minmax",
        "op_types": _QUANT_OPS,
    },
    "text": {
        "kind": "int8-static",
        "per_channel": True,
        "reduce_range": False,
        "calibration_method": "minmax",
        "op_types": TEXT_QUANT_OPS,
    },
}
# Convolutional image towers (RN50, ConvNeXt, MobileCLIP's FastViT): their time is in Conv, which
# the settings above leave in float. A graph whose Conv nodes are more than CONV_TOWER_SHARE of
# its Conv/MatMul/Gemm nodes (a ViT has one patch-embedding Conv among ~50 MatMuls) gets
# CONV_INT8 instead: BatchNorm folded first, Conv quantised too (onnxruntime QLinearConv),
# depthwise convolutions kept in float. Measured per family in bench/results/conv_int8.json
# (docs/models.md).
CONV_TOWER_SHARE = 0.2
CONV_INT8: dict[str, Any] = {
    "kind": "int8-static",
    "per_channel": True,
    "reduce_range": False,
    "calibration_method": "minmax",
    "op_types": ("Conv", "MatMul", "Gemm"),
    "exclude": "depthwise",
    "prepare": True,
}
CALIBRATION_METHODS = ("minmax", "percentile", "entropy")


def int8_settings(encoder: str, fp32_path: Optional[Path] = None) -> dict[str, Any]:
    """The optimize_graph settings the export uses for *encoder*'s int8 graph: CONV_INT8 for a
    convolutional image tower (see CONV_TOWER_SHARE), else RECOMMENDED_INT8[encoder]."""
    if encoder == "image" and fp32_path is not None and conv_share(Path(fp32_path)) > CONV_TOWER_SHARE:
        return dict(CONV_INT8)
    return dict(RECOMMENDED_INT8[encoder])


# Ops quantised with a fixed scale per weight tensor and no activation scale at all (the
# token-embedding Gather): weight-only, so static and dynamic graphs treat them alike.
_WEIGHT_ONLY_OPS = ("Gather",)


def optimize_graph(
    onnx_path: PathLike,
    out_path: PathLike,
    kind: str,
    *,
    calibration_inputs: Optional[Union[np.ndarray, Iterable[dict[str, np.ndarray]]]] = None,
    num_heads: int = 0,
    hidden_size: int = 0,
    per_channel: bool = True,
    reduce_range: bool = False,
    calibration_method: str = "minmax",
    op_types: Sequence[str] = _QUANT_OPS,
    external_data: bool = False,
    exclude: str = "",
    prepare: bool = False,
) -> Path:
    """Write the *kind* variant of the fp32 graph *onnx_path* to *out_path*; return *out_path*.

    ``calibration_inputs`` (static kinds only): a float32 array batched on axis 0 for the
    graph's single input (e.g. preprocessed images), or an iterable of feed dicts.
    ``num_heads``/``hidden_size``: the tower's attention heads and width for the fusions
    (0 lets onnxruntime read them from the graph). ``per_channel``/``reduce_range`` apply to
    int8 weights: per-channel scales with the full 8-bit range suit VNNI/AVX-512 CPUs, where
    u8 x s8 products do not saturate. ``external_data``: write weights to a companion file
    (graphs over protobuf's 2 GB limit). *exclude*: ``"depthwise"`` keeps depthwise and
    grouped convolutions (``group > 1``) in float when Conv is among *op_types* (CONV_EXCLUDES).
    *prepare*: run onnxruntime's quantisation pre-processing first (BatchNorm folded into the
    convolutions; prepare_for_conv_int8).
    """
    src, dst = Path(onnx_path), Path(out_path)
    if kind not in KINDS:
        raise InputError(f"unknown graph variant {kind!r}; expected one of: {', '.join(KINDS)}")
    if not src.is_file():
        raise InputError(f"no ONNX graph at {src}")
    if calibration_method not in CALIBRATION_METHODS:
        raise InputError(
            f"calibration_method must be one of {', '.join(CALIBRATION_METHODS)}, got {calibration_method!r}"
        )
    static = kind.startswith("int8-static")
    if static and calibration_inputs is None:
        raise InputError(f"graph variant {kind!r} needs calibration_inputs (a batch of model inputs)")
    dst.parent.mkdir(parents=True, exist_ok=True)

    quant_logger = logging.getLogger("onnxruntime.quantization")  # logs every skipped node
    level = quant_logger.level
    quant_logger.setLevel(logging.ERROR)
    try:
        with tempfile.TemporaryDirectory(prefix="clip-rt-opt-", dir=dst.parent) as tmp:
            stage = src
            if kind in ("fused", "fused-mha") or kind.endswith(("-fused", "-fused-mha")):
                mha = kind.endswith("mha")
                if mha and num_heads <= 0:
                    raise InputError(f"graph variant {kind!r} needs num_heads (the tower's attention heads)")
                stage = _fuse(
                    src,
                    Path(tmp) / "fused.onnx",
                    num_heads,
                    hidden_size,
                    external_data,
                    mha_heads=num_heads if mha else 0,
                )
                if kind in ("fused", "fused-mha"):
                    os.replace(stage, dst)
                    return dst
            if prepare:
                stage = prepare_for_conv_int8(stage, Path(tmp) / "prepared.onnx", external_data)
            if static:
                assert calibration_inputs is not None  # refused above when missing
                activation_ops = [op for op in op_types if op not in _WEIGHT_ONLY_OPS]
                weight_only = [op for op in op_types if op in _WEIGHT_ONLY_OPS]
                static_dst = Path(tmp) / "static.onnx" if weight_only else dst
                _quantize_static(
                    stage,
                    static_dst,
                    calibration_inputs,
                    per_channel,
                    reduce_range,
                    calibration_method,
                    activation_ops,
                    external_data,
                    excluded_nodes(stage, exclude),
                )
                if weight_only:
                    quantize_gather_rows(static_dst, dst, external_data)
            else:
                _quantize_dynamic(stage, dst, per_channel, reduce_range, op_types, external_data)
    finally:
        quant_logger.setLevel(level)
    return dst


CONV_EXCLUDES = ("", "depthwise")


def excluded_nodes(path: Path, exclude: str) -> list[str]:
    """Names of the nodes *exclude* keeps in float: ``depthwise``: convolutions with
    ``group > 1`` (depthwise and grouped), whose int8 kernels in onnxruntime are slower than
    float ones (bench/conv_int8.py)."""
    if exclude not in CONV_EXCLUDES:
        raise InputError(f"exclude must be one of {CONV_EXCLUDES}, got {exclude!r}")
    if not exclude:
        return []
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    return [
        n.name
        for n in graph.node
        if n.op_type == "Conv" and next((a.i for a in n.attribute if a.name == "group"), 1) > 1
    ]


def prepare_for_conv_int8(src: Path, dst: Path, external_data: bool = False) -> Path:
    """onnxruntime's quantisation pre-processing: BatchNormalization folded into the Conv before
    it (so the int8 Conv is the whole Conv+BN, not a Conv followed by a float BN on dequantised
    values) and shapes inferred. The graph computes the same function."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    try:
        quant_pre_process(
            str(src),
            str(dst),
            skip_optimization=False,
            skip_onnx_shape=False,
            skip_symbolic_shape=True,
            save_as_external_data=external_data,
            external_data_location=Path(dst).name + ".data" if external_data else None,
        )
    except (ValueError, RuntimeError, OSError) as exc:
        raise ExportError(f"pre-processing {src} for int8 convolutions failed: {exc}") from exc
    return Path(dst)


def conv_share(path: Path) -> float:
    """Share of Conv nodes among the Conv/MatMul/Gemm nodes of a graph: about 0 for a ViT
    (one patch-embedding Conv), large for convolutional towers (ResNet, ConvNeXt, FastViT)."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    ops = [n.op_type for n in graph.node if n.op_type in ("Conv", "MatMul", "Gemm")]
    return ops.count("Conv") / len(ops) if ops else 0.0


def quantize_gather_rows(src: Path, dst: Path, external_data: bool = False) -> int:
    """Store each Gather's float embedding table (a 2-D initializer gathered on axis 0) as int8
    with one symmetric scale per row: ``Gather(table, ids)`` becomes
    ``Cast(Gather(table_int8, ids)) * Gather(row_scales, ids)``. Weight-only, so every row is
    decoded the same whatever else is in the batch. Per-row scales halve the rounding error of
    onnxruntime's per-tensor Gather quantisation (0.9986 vs 0.9977 min text cosine on the
    small test model). Returns the number of tables quantised."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load(str(src))
    graph = model.graph
    tables = {i.name: i for i in graph.initializer if i.data_type == TensorProto.FLOAT and len(i.dims) == 2}
    nodes, done = [], 0
    replaced: set[str] = set()
    for node in graph.node:
        axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
        if node.op_type != "Gather" or node.input[0] not in tables or axis != 0:
            nodes.append(node)
            continue
        name = node.input[0]
        if name not in replaced:
            table = numpy_helper.to_array(tables[name]).astype(np.float32)
            scale = np.abs(table).max(axis=1, keepdims=True) / 127.0
            scale[scale == 0] = 1.0
            q = np.clip(np.round(table / scale), -127, 127).astype(np.int8)
            graph.initializer.extend(
                [
                    numpy_helper.from_array(q, f"{name}_int8_rows"),
                    numpy_helper.from_array(scale.astype(np.float32), f"{name}_row_scale"),
                ]
            )
            replaced.add(name)
        out, tag = node.output[0], node.name or f"gather_{done}"
        nodes += [
            helper.make_node("Gather", [f"{name}_int8_rows", node.input[1]], [f"{tag}_q"], name=f"{tag}_q", axis=0),
            helper.make_node("Gather", [f"{name}_row_scale", node.input[1]], [f"{tag}_s"], name=f"{tag}_s", axis=0),
            helper.make_node("Cast", [f"{tag}_q"], [f"{tag}_f"], name=f"{tag}_f", to=TensorProto.FLOAT),
            helper.make_node("Mul", [f"{tag}_f", f"{tag}_s"], [out], name=f"{tag}_dq"),
        ]
        done += 1
    still_used = {i for n in nodes for i in n.input}
    kept = [i for i in graph.initializer if i.name not in replaced or i.name in still_used]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    del graph.node[:]
    graph.node.extend(nodes)
    if external_data:
        onnx.save_model(model, str(dst), save_as_external_data=True, location=Path(dst).name + ".data")
    else:
        onnx.save_model(model, str(dst))
    return done


def _fuse(src: Path, dst: Path, num_heads: int, hidden_size: int, external_data: bool, mha_heads: int = 0) -> Path:
    from onnxruntime.transformers.optimizer import optimize_model

    from .gpu_optimize import _reduce_l2_shape_inference, fuse_open_clip_attention

    # opt_level=0: only the transformer-pattern fusions; onnxruntime's own graph optimiser runs
    # at session creation anyway, and baking its CPU-specific rewrites into the file would tie
    # the graph to one execution provider.
    with _reduce_l2_shape_inference():
        model = optimize_model(
            str(src), model_type="clip", num_heads=num_heads, hidden_size=hidden_size, opt_level=0, use_gpu=False
        )
    if mha_heads:
        # onnxruntime's own attention fusions never match the open_clip export (docs/benchmarks/history.md).
        fuse_open_clip_attention(model, mha_heads, op="MultiHeadAttention")
    model.save_model_to_file(str(dst), use_external_data_format=external_data)
    return dst


def _quantize_dynamic(
    src: Path, dst: Path, per_channel: bool, reduce_range: bool, op_types: Sequence[str], external_data: bool
) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(
        str(src),
        str(dst),
        op_types_to_quantize=list(op_types),
        per_channel=per_channel,
        reduce_range=reduce_range,
        weight_type=QuantType.QInt8,
        use_external_data_format=external_data,
        extra_options={"MatMulConstBOnly": True},
    )


class _Reader:
    """onnxruntime CalibrationDataReader over an array (one sample per call) or feed dicts,
    readable in chunks of ``stride`` samples (``set_range``)."""

    MAX_STRIDE = 8

    def __init__(self, input_name: str, data: Union[np.ndarray, Iterable[dict[str, np.ndarray]]]) -> None:
        if isinstance(data, np.ndarray):
            if data.ndim < 1 or len(data) == 0:
                raise InputError(f"calibration_inputs must be a non-empty batch, got shape {data.shape}")
            self._feeds = [{input_name: data[i : i + 1]} for i in range(len(data))]
        else:
            self._feeds = list(data)
            if not self._feeds:
                raise InputError("calibration_inputs must hold at least one feed dict")
        # onnxruntime wants the chunk size to divide the sample count.
        self.stride = max(d for d in range(1, self.MAX_STRIDE + 1) if len(self._feeds) % d == 0)
        self._it = iter(self._feeds)

    def __len__(self) -> int:
        return len(self._feeds)

    def set_range(self, start_index: int, end_index: int) -> None:
        self._it = iter(self._feeds[start_index:end_index])

    def get_next(self) -> Optional[dict[str, np.ndarray]]:
        return next(self._it, None)


def _quantize_static(
    src: Path,
    dst: Path,
    data: Union[np.ndarray, Iterable[dict[str, np.ndarray]]],
    per_channel: bool,
    reduce_range: bool,
    method: str,
    op_types: Sequence[str],
    external_data: bool,
    nodes_to_exclude: Sequence[str] = (),
) -> None:
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    graph_inputs = onnx.load(str(src), load_external_data=False).graph.input
    if len(graph_inputs) != 1 and isinstance(data, np.ndarray):
        raise InputError(f"{src} has {len(graph_inputs)} inputs; pass calibration_inputs as feed dicts")
    methods = {
        "minmax": CalibrationMethod.MinMax,
        "percentile": CalibrationMethod.Percentile,
        "entropy": CalibrationMethod.Entropy,
    }
    reader = _Reader(graph_inputs[0].name, data)
    try:
        quantize_static(
            str(src),
            str(dst),
            reader,
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=list(op_types),
            per_channel=per_channel,
            reduce_range=reduce_range,
            # u8 activations x s8 weights: the VNNI fast path on x86.
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=methods[method],
            use_external_data_format=external_data,
            nodes_to_exclude=list(nodes_to_exclude),
            extra_options={
                "MatMulConstBOnly": True,
                # The MatMul/Gemm outputs stay float: onnxruntime then runs each as one
                # u8 x s8 kernel with a float result (MatMulIntegerToFloat, QGemm) instead of
                # re-quantising it, which is both faster and more exact (docs/export.md).
                # Conv keeps its output quantised: onnxruntime fuses DQ -> Conv -> Q into one
                # integer QLinearConv only then (a Conv without the Q runs in float).
                "OpTypesToExcludeOutputQuantization": [op for op in op_types if op != "Conv"],
                # Calibrate a few samples at a time (ranges/histograms are merged between
                # chunks): the histogram methods keep every activation tensor of a chunk,
                # ~100 MB per ViT-B/32 image. (CalibMaxIntermediateOutputs drops the data of
                # full chunks in onnxruntime 1.32's MinMax calibrator: not used.)
                "CalibStridedMinMax": reader.stride,
            },
        )
    except (ValueError, RuntimeError) as exc:
        raise ExportError(f"static int8 quantisation of {src} failed: {exc}") from exc
