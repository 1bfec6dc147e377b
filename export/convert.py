"""Derive the int8 and fp16 graphs from an fp32 graph (ONNX Runtime's own tools)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from clip_rt.bundle.manifest import Calibration, Quantization
from clip_rt.errors import InputError


def int8_note(calibration_method: Optional[str] = None, settings: Optional[dict] = None) -> str:
    """*settings*: encoder -> the optimize_graph settings used (default RECOMMENDED_INT8)."""
    from .optimize import RECOMMENDED_INT8

    parts = [
        f"{encoder} {cfg['kind']} (per_channel={cfg.get('per_channel')}, reduce_range={cfg.get('reduce_range')}, "
        f"calibration={calibration_method or cfg.get('calibration_method')}, ops={'/'.join(cfg.get('op_types', ()))}"
        + (f", {cfg['exclude']} convolutions kept float" if cfg.get("exclude") else "")
        + (", BatchNorm folded first" if cfg.get("prepare") else "") + ")"
        for encoder, cfg in (settings or RECOMMENDED_INT8).items()
    ]
    return ("int8: clip_rt_export.optimize RECOMMENDED_INT8 (onnxruntime quantize_static QDQ, uint8 activations with "
            "calibrated scales, int8 weights; the token-embedding Gather weight-only): " + "; ".join(parts)
            + "; calibration inputs and batch independence in `quantization`")


# ORT 1.32's CPU graph optimiser (level ALL) crashes on fp16 LayerNormalization nodes, and
# fp32 normalisation is more accurate anyway: they stay fp32 behind Casts.
FP16_KEEP_FP32_OPS = ("LayerNormalization",)
FP16_NOTE = (
    "fp16: onnxruntime.transformers.float16 convert_float_to_float16(keep_io_types=True), "
    f"{', '.join(FP16_KEEP_FP32_OPS)} kept fp32"
)


def to_int8(src: Path, dst: Path, encoder: str, calibration: Any, external_data: bool = False,
            calibration_method: Optional[str] = None) -> Quantization:
    """The int8 variant the benchmarks recommend for *encoder* (clip_rt_export.optimize.RECOMMENDED_INT8),
    calibrated on *calibration* (a calibration.CalibrationData); returns its manifest record
    (``batch_independent`` is set by the caller once the gate has measured it)."""
    from .optimize import CALIBRATION_METHODS, int8_settings, optimize_graph

    settings = int8_settings(encoder, src)
    kind = settings.pop("kind")
    static = kind.startswith("int8-static")
    if calibration_method is not None:
        if calibration_method not in CALIBRATION_METHODS:
            raise InputError(f"calibration method must be one of {', '.join(CALIBRATION_METHODS)}, "
                             f"got {calibration_method!r}")
        settings["calibration_method"] = calibration_method
    optimize_graph(src, dst, kind=kind, external_data=external_data,
                   calibration_inputs=calibration.feeds if static else None, **settings)
    return Quantization(
        kind="static" if static else "dynamic",
        per_channel=bool(settings.get("per_channel", True)),
        weights="int8",
        activations="uint8",
        ops=tuple(settings.get("op_types", ())),
        calibration=Calibration(method=str(settings["calibration_method"]), source=calibration.source,
                                inputs=tuple(calibration.names), samples=len(calibration.feeds)) if static else None,
        batch_independent=False,
    )


def to_fp16(src: Path, dst: Path, external_data: bool = False) -> None:
    import onnx
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    model = onnx.load(str(src))
    # keep_io_types: the runtime feeds float32 and reads float32 whatever the precision.
    converted = convert_float_to_float16(
        model,
        keep_io_types=True,
        disable_shape_infer=external_data,
        op_block_list=list(DEFAULT_OP_BLOCK_LIST) + list(FP16_KEEP_FP32_OPS),
    )
    topological_sort(converted.graph)
    if external_data:
        onnx.save_model(converted, str(dst), save_as_external_data=True, location=dst.name + ".data")
    else:
        onnx.save_model(converted, str(dst))


def topological_sort(graph: Any) -> None:
    """Reorder *graph*'s nodes so each comes after its inputs' producers.

    The fp16 converter appends the input Casts at the end, which the ONNX checker rejects.
    """
    known = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {""}
    pending = list(graph.node)
    ordered = []
    while pending:
        waiting = []
        for node in pending:
            if all(name in known for name in node.input):
                ordered.append(node)
                known.update(node.output)
            else:
                waiting.append(node)
        if len(waiting) == len(pending):
            missing = sorted({n for node in waiting for n in node.input if n not in known})
            raise ValueError(f"graph has nodes whose inputs nobody produces: {missing[:5]}")
        pending = waiting
    del graph.node[:]
    graph.node.extend(ordered)
