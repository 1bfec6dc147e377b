"""Derive the int8 (NNCF, or onnxruntime.quantization) and fp16 graphs from an fp32 graph."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from clip_rt.bundle.manifest import Calibration, Quantization
from clip_rt.errors import InputError

if TYPE_CHECKING:
    from .progress import PhaseHandle

INT8_METHODS = ("nncf", "onnxruntime")
_INT8_METHOD_ALIASES = {"nncf": "nncf", "onnxruntime": "onnxruntime", "ort": "onnxruntime"}


def resolve_int8_method(method: Optional[str], calibration_method: Optional[str]) -> Optional[str]:
    """The int8 quantiser asked for: ``nncf``, ``onnxruntime`` (``ort``), or None for the default
    per encoder (int8_method_for). An onnxruntime calibration method (minmax/percentile/entropy
    are its calibrators) implies ``onnxruntime``."""
    if method is None:
        return "onnxruntime" if calibration_method is not None else None
    key = method.strip().lower() if isinstance(method, str) else None
    if key not in _INT8_METHOD_ALIASES:
        raise InputError(f"int8 method must be one of {', '.join(INT8_METHODS)} (or ort), got {method!r}")
    resolved = _INT8_METHOD_ALIASES[key]
    if resolved == "nncf" and calibration_method is not None:
        raise InputError(
            f"calibration method {calibration_method!r} is an onnxruntime.quantization calibrator; "
            "with --int8-method nncf leave it out (NNCF estimates the ranges itself), or use "
            "--int8-method onnxruntime"
        )
    return resolved


def int8_method_for(encoder: str, src: Path, asked: Optional[str]) -> str:
    """*asked*, else NNCF, except for convolutional image towers (RN50, ConvNeXt, FastViT):
    onnxruntime's CONV_INT8 was measured on those (bench/results/conv_int8.json), NNCF was not."""
    if asked is not None:
        return asked
    from .optimize import CONV_TOWER_SHARE, conv_share

    return "onnxruntime" if encoder == "image" and conv_share(Path(src)) > CONV_TOWER_SHARE else "nncf"


def int8_note(calibration_method: Optional[str] = None, settings: Optional[dict[str, Any]] = None) -> str:
    """onnxruntime.quantization's graphs. *settings*: encoder -> the optimize_graph settings used
    (default RECOMMENDED_INT8)."""
    from .optimize import RECOMMENDED_INT8

    parts = [
        f"{encoder} {cfg['kind']} (per_channel={cfg.get('per_channel')}, reduce_range={cfg.get('reduce_range')}, "
        f"calibration={calibration_method or cfg.get('calibration_method')}, ops={'/'.join(cfg.get('op_types', ()))}"
        + (f", {cfg['exclude']} convolutions kept float" if cfg.get("exclude") else "")
        + (", BatchNorm folded first" if cfg.get("prepare") else "")
        + ")"
        for encoder, cfg in (settings or RECOMMENDED_INT8).items()
    ]
    return (
        "int8: clip_rt_export.optimize RECOMMENDED_INT8 (onnxruntime quantize_static QDQ, uint8 activations with "
        "calibrated scales, int8 weights; the token-embedding Gather weight-only): "
        + "; ".join(parts)
        + "; calibration inputs and batch independence in `quantization`"
    )


def nncf_note(encoders: tuple[str, ...] = ("image", "text")) -> str:
    """NNCF's graphs, for *encoders*."""
    from .nncf_quant import NNCF_INT8

    parts = [
        f"{encoder} " + ", ".join(f"{k}={'/'.join(v) if isinstance(v, tuple) else v}" for k, v in cfg.items())
        for encoder, cfg in NNCF_INT8.items()
        if encoder in encoders
    ]
    return (
        "int8: nncf.quantize (ONNX backend, QDQ graph: symmetric per-channel int8 weights, activation "
        "scales calibrated on every calibration input; clip_rt_export.nncf_quant.NNCF_INT8): "
        + "; ".join(parts)
        + "; calibration inputs, settings and batch independence in `quantization`"
    )


# ORT 1.32's CPU graph optimiser (level ALL) crashes on fp16 LayerNormalization nodes, and
# fp32 normalisation is more accurate anyway: they stay fp32 behind Casts.
FP16_KEEP_FP32_OPS = ("LayerNormalization",)
FP16_NOTE = (
    "fp16: onnxruntime.transformers.float16 convert_float_to_float16(keep_io_types=True), "
    f"{', '.join(FP16_KEEP_FP32_OPS)} kept fp32"
)


def to_int8(
    src: Path,
    dst: Path,
    encoder: str,
    calibration: Any,
    external_data: bool = False,
    calibration_method: Optional[str] = None,
    method: str = "nncf",
    progress: Optional[PhaseHandle] = None,
) -> Quantization:
    """The int8 graph of *encoder*, calibrated on *calibration* (a calibration.CalibrationData):
    *method* ``nncf`` (nncf_quant.NNCF_INT8 settings) or ``onnxruntime`` (the variant the
    benchmarks recommend, clip_rt_export.optimize.int8_settings). Returns its manifest record
    (``batch_independent`` is set by the caller once the gate has measured it). *progress*:
    the export phase to count NNCF's calibration inputs on."""
    if method == "nncf":
        from .nncf_quant import quantize_nncf, settings_for

        got = quantize_nncf(
            src, dst, calibration.feeds, settings_for(encoder), external_data=external_data, progress=progress
        )
        return Quantization(
            kind="static",
            per_channel=True,
            weights="int8",
            activations=got["activations"],
            ops=got["ops"],
            calibration=Calibration(
                method="nncf",
                source=calibration.source,
                inputs=tuple(calibration.names),
                samples=len(calibration.feeds),
            ),
            batch_independent=False,
            method="nncf",
            parameters=got["parameters"],
        )
    if method != "onnxruntime":
        raise InputError(f"int8 method must be one of {', '.join(INT8_METHODS)}, got {method!r}")
    from .optimize import CALIBRATION_METHODS, int8_settings, optimize_graph

    settings = int8_settings(encoder, src)
    kind = settings.pop("kind")
    static = kind.startswith("int8-static")
    if calibration_method is not None:
        if calibration_method not in CALIBRATION_METHODS:
            raise InputError(
                f"calibration method must be one of {', '.join(CALIBRATION_METHODS)}, got {calibration_method!r}"
            )
        settings["calibration_method"] = calibration_method
    optimize_graph(
        src,
        dst,
        kind=kind,
        external_data=external_data,
        calibration_inputs=calibration.feeds if static else None,
        **settings,
    )
    return Quantization(
        kind="static" if static else "dynamic",
        per_channel=bool(settings.get("per_channel", True)),
        weights="int8",
        activations="uint8",
        ops=tuple(settings.get("op_types", ())),
        calibration=Calibration(
            method=str(settings["calibration_method"]),
            source=calibration.source,
            inputs=tuple(calibration.names),
            samples=len(calibration.feeds),
        )
        if static
        else None,
        batch_independent=False,
        method="onnxruntime",
        parameters={k: (",".join(v) if isinstance(v, (tuple, list)) else str(v)) for k, v in settings.items()}
        | {"kind": kind},
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
