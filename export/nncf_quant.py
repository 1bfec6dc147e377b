"""Static int8 with NNCF (``nncf.quantize``, ONNX backend): the export's default int8 quantiser.

NNCF writes a QDQ ONNX graph (QuantizeLinear/DequantizeLinear pairs around the matrix
multiplies, int8 per-channel weights, activation scales calibrated on the export's calibration
sets) that OpenVINO's CPU plugin runs faster than onnxruntime.quantization's graph (ViT-B-32
image, batch 8, AMX: 5.69x vs 4.29x torch fp32; bench/results/backends-x86-amx.json).
The bundle keeps ONNX only: the runtime reads the graph with onnxruntime or OpenVINO.

``NNCF_INT8[encoder]`` holds the settings the export uses; ``quantize_nncf`` applies them and
returns the manifest's description of the graph. Only onnx/nncf/numpy are needed here.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from clip_rt.errors import ExportError

from .memory import release_memory

if TYPE_CHECKING:
    from .progress import PhaseHandle

# Measured on ViT-B/32 (random weights, seed 0) on an AMX host: bench/results/nncf_sweep.json
# (accuracy of each setting, docs/export.md); bench/results/backends-x86-amx.json (speed).
# preset: "mixed" = symmetric int8 weights, asymmetric activations; "performance" = symmetric
# both. smooth_quant: the MatMul SmoothQuant alpha, -1 = off. keep_fp32: weighted ops (MatMul,
# Gemm, Conv with a constant weight) left in float, by position in the graph ("first": the
# patch embedding, "last": the output projection) so the rule holds for any architecture;
# "attention": the activation x activation MatMuls (Q.K^T, softmax.V). activation_ranges:
# "minmax" = the extremes over every calibration input (as onnxruntime's MinMax calibrator),
# "mean_minmax" = NNCF's default, the mean of each input's extremes (clips unusual inputs).
# calibration_batch: calibration inputs of one shape run through NNCF together, up to this many
# (the ranges are the same as one by one; bench/results/export_phases.json for time and memory).
NNCF_INT8: dict[str, dict[str, Any]] = {
    "image": {
        "preset": "performance",
        "model_type": "transformer",
        "smooth_quant": -1.0,
        "fast_bias_correction": True,
        "ignored_types": (),
        "keep_fp32": (),
        "activation_ranges": "minmax",
        "calibration_batch": 8,
    },
    "text": {
        "preset": "performance",
        "model_type": "transformer",
        "smooth_quant": -1.0,
        "fast_bias_correction": True,
        "ignored_types": (),
        "keep_fp32": (),
        "activation_ranges": "minmax",
        "calibration_batch": 32,
    },
}
KEEP_FP32 = ("first", "last", "attention")
ACTIVATION_RANGES = ("minmax", "mean_minmax")
PRESETS = ("mixed", "performance")


def nncf_available() -> bool:
    return importlib.util.find_spec("nncf") is not None


def quantize_nncf(
    src: Path,
    dst: Path,
    feeds: list[dict[str, Any]],
    settings: dict[str, Any],
    external_data: bool = False,
    progress: Optional[PhaseHandle] = None,
) -> dict[str, Any]:
    """Quantise the fp32 graph *src* to *dst* with ``nncf.quantize`` on the calibration *feeds*
    (one feed dict per input; all of them are used). Returns what the graph holds:
    ``{"ops": weight-quantised op types, "activations": "uint8" | "int8" | "int8/uint8",
    "parameters": the settings as text}``. *progress* counts the inputs as NNCF takes them
    and says when it moves on to quantising and to the graph rewrites."""
    if not nncf_available():
        raise ExportError(
            "int8 method 'nncf' needs the nncf package: pip install 'clip-rt[export]' "
            "(or export with --int8-method onnxruntime)"
        )
    import logging

    nncf = _import_nncf()
    from nncf.onnx.quantization.backend_parameters import BackendParameters
    from nncf.parameters import ModelType
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, AdvancedSmoothQuantParameters

    preset = settings.get("preset", "mixed")
    if preset not in PRESETS:
        raise ExportError(f"nncf preset must be one of {', '.join(PRESETS)}, got {preset!r}")
    model_type = settings.get("model_type")
    alpha = float(settings.get("smooth_quant", -1.0))
    ignored = tuple(settings.get("ignored_types", ()))
    keep = tuple(settings.get("keep_fp32", ()))
    unknown = sorted(set(keep) - set(KEEP_FP32))
    if unknown:
        raise ExportError(f"nncf keep_fp32 entries must be among {', '.join(KEEP_FP32)}, got {unknown}")
    ranges = settings.get("activation_ranges", "mean_minmax")
    if ranges not in ACTIVATION_RANGES:
        raise ExportError(f"nncf activation_ranges must be one of {', '.join(ACTIVATION_RANGES)}, got {ranges!r}")
    advanced = AdvancedQuantizationParameters(smooth_quant_alphas=AdvancedSmoothQuantParameters(matmul=alpha))
    if ranges == "minmax":
        from nncf.quantization.range_estimator import RangeEstimatorParametersSet

        advanced.activations_range_estimator_params = RangeEstimatorParametersSet.MINMAX
    logging.getLogger("nncf").setLevel(logging.ERROR)  # "dataset smaller than subset" and progress noise
    rows = int(settings.get("calibration_batch", 1))
    if rows < 1:
        raise ExportError(f"nncf calibration_batch must be at least 1, got {rows}")
    batches = batched_feeds(feeds, rows)
    drawn = 0

    def counted(batch: dict[str, Any]) -> dict[str, Any]:
        # NNCF takes the next batch once it has run the previous one; once it took the last,
        # what follows is quantising (the last batch's own run is counted there).
        nonlocal drawn
        drawn += 1
        if progress is not None:
            progress.advance(len(next(iter(batch.values()))))
            if drawn == len(batches):
                progress.status("quantising")
        return batch

    if progress is not None:
        progress.status("calibrating")
    with tempfile.TemporaryDirectory(prefix=".nncf-weights-", dir=dst.parent) as tmp:
        model, weights_dir = _weights_outside(Path(src), Path(tmp))
        release_memory()  # the weights just moved to the file, before onnxruntime maps its own copy
        names = kept_in_float(model, keep) + single_row_tables(model)
        advanced.backend_params = {BackendParameters.EXTERNAL_DATA_DIR: str(weights_dir)}
        try:
            # NNCF draws progress bars on stdout; a CLI's stdout is for its result (the bundle path).
            with contextlib.redirect_stdout(io.StringIO()), _nncf_telemetry_off():
                quantized = nncf.quantize(
                    model,
                    nncf.Dataset(batches, counted),
                    preset=nncf.QuantizationPreset.MIXED if preset == "mixed" else nncf.QuantizationPreset.PERFORMANCE,
                    model_type=ModelType.TRANSFORMER if model_type == "transformer" else None,
                    subset_size=len(batches),
                    fast_bias_correction=bool(settings.get("fast_bias_correction", True)),
                    ignored_scope=nncf.IgnoredScope(names=names, types=list(ignored), validate=False)
                    if ignored or names
                    else None,
                    advanced_parameters=advanced,
                )
        except Exception as exc:  # noqa: BLE001 - nncf raises many kinds; the export must say which step failed
            raise ExportError(f"nncf could not quantise {src.name}: {type(exc).__name__}: {exc}") from exc
        del model
    release_memory()  # NNCF's graph with statistic outputs and its sessions
    if _uses_external_data(quantized):  # NNCF reads the weights back in; the graph must not point at tmp
        raise ExportError(f"nncf left {src.name}'s quantised graph pointing at external weights it did not read in")
    if progress is not None:
        progress.status("checking its graph rewrites")
    rewrites = _save_with_rewrites(quantized, dst, feeds, external_data)
    described = describe_qdq(quantized)
    described["parameters"] = {
        "nncf": str(nncf.__version__),
        "preset": preset,
        "model_type": str(model_type or "none"),
        "smooth_quant_matmul_alpha": f"{alpha:g}" + (" (off)" if alpha < 0 else ""),
        "fast_bias_correction": str(bool(settings.get("fast_bias_correction", True))).lower(),
        "subset_size": str(len(feeds)),
        "calibration_batch": str(rows),
        "ignored_types": ",".join(ignored) or "none",
        "keep_fp32": ",".join(keep) or "none",
        "activation_ranges": ranges,
        "graph_rewrites": rewrites,
    }
    return described


def batched_feeds(feeds: list[dict[str, Any]], rows: int) -> list[dict[str, Any]]:
    """*feeds* (one input each) stacked into batches of up to *rows* inputs of the same shape
    (prompts trimmed to their own length batch with prompts of that length), in the order of
    each shape's first input. Every input is in exactly one batch, so NNCF's ranges, the
    extremes over all inputs, are those of the inputs one by one; it runs far fewer, larger
    calls (ViT-B-32 text: 412 prompts in 37 calls)."""
    import numpy as np

    if rows <= 1:
        return list(feeds)
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for feed in feeds:
        key = tuple((name, value.shape[1:], value.dtype.str) for name, value in feed.items())
        groups.setdefault(key, []).append(feed)
    out = []
    for members in groups.values():
        for start in range(0, len(members), rows):
            chunk = members[start : start + rows]
            out.append({name: np.concatenate([f[name] for f in chunk]) for name in chunk[0]})
    return out


def _weights_outside(src: Path, folder: Path) -> tuple[Any, Path]:
    """*src* as a graph whose weights stay in a file (the folder NNCF is told to read them from):
    NNCF then copies, shape-infers and serialises only the graph structure (its graph with
    statistic outputs, one per bias-corrected layer, ...) and onnxruntime reads the weights from
    the file, instead of a copy of every weight per step (ViT-B-32 image: peak RSS of the
    quantisation 3.8 GB -> 2.2 GB). A graph that already keeps its weights outside (over
    protobuf's 2 GB) is used where it is."""
    import onnx

    model = onnx.load(str(src), load_external_data=False)
    if _uses_external_data(model):
        return model, src.parent.absolute()
    onnx.save_model(
        model,
        str(folder / src.name),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location=src.name + ".data",
        size_threshold=1024,
    )
    # Read back rather than kept: protobuf frees the bytes the save moved out of *model* only
    # with the whole message (they live in its arena).
    del model
    return onnx.load(str(folder / src.name), load_external_data=False), folder.absolute()


def _import_nncf() -> Any:
    """``import nncf`` without its telemetry. With openvino-telemetry installed (openvino pulls it
    in) and no opt-out on file, importing NNCF writes a client id and a usage counter under
    ~/intel and nncf.quantize sends usage events to Google Analytics: not what an offline export
    should do behind the user's back. NNCF falls back to a stub when openvino_telemetry cannot
    be imported, so it is hidden while NNCF is first imported."""
    import sys

    if "nncf" not in sys.modules and "openvino_telemetry" not in sys.modules:
        sys.modules["openvino_telemetry"] = None  # type: ignore[assignment]  # import raises ImportError
        try:
            import nncf
        finally:
            del sys.modules["openvino_telemetry"]
    import nncf

    return nncf


@contextlib.contextmanager
def _nncf_telemetry_off() -> Iterator[None]:
    """NNCF imported before the export (with its telemetry): its events switched off for the
    call, with the stub NNCF itself uses when telemetry is unavailable."""
    try:
        from nncf.telemetry import decorator
        from nncf.telemetry.wrapper import NNCFTelemetryStub
    except ImportError:  # another NNCF layout: nothing to switch here
        yield
        return
    previous = decorator.telemetry
    decorator.telemetry = NNCFTelemetryStub()
    try:
        yield
    finally:
        decorator.telemetry = previous


def _uses_external_data(model: Any) -> bool:
    from onnx.external_data_helper import uses_external_data

    return any(uses_external_data(t) for t in model.graph.initializer)


def _save(model: Any, path: Path, external_data: bool) -> None:
    import onnx

    if external_data:
        onnx.save_model(model, str(path), save_as_external_data=True, location=path.name + ".data")
    else:
        onnx.save_model(model, str(path))


def _save_with_rewrites(quantized: Any, dst: Path, feeds: list[dict[str, Any]], external_data: bool) -> str:
    """Write NNCF's graph to *dst* after the exact rewrites that make it run better, each kept
    only if the graph's outputs on two calibration inputs stay bit-identical: attention's key
    transposes next to their MatMuls (attention_layout.py: OpenVINO runs them faster) and
    embedding lookups that gather int8 rows before dequantising (embedding_gather.py: no
    dequantised copy of the whole table per call). Returns the note the manifest records."""
    import tempfile

    import onnx

    from .attention_layout import KEY_TRANSPOSE, max_output_difference, move_key_transposes
    from .embedding_gather import GATHER_FIRST, gather_before_dequantize

    rewrites = ((KEY_TRANSPOSE, move_key_transposes), (GATHER_FIRST, gather_before_dequantize))
    with tempfile.TemporaryDirectory(prefix=".nncf-", dir=dst.parent) as tmp:
        # One folder per step: a graph's external data file is named after the graph.
        current = Path(tmp) / "nncf" / dst.name
        current.parent.mkdir()
        _save(quantized, current, external_data)
        notes = []
        for step, (what, rewrite) in enumerate(rewrites):
            model = onnx.load(str(current))  # external data read back in, a copy to rewrite
            count = rewrite(model)
            if not count:
                continue
            candidate = Path(tmp) / f"step{step}" / dst.name
            candidate.parent.mkdir()
            _save(model, candidate, external_data)
            del model
            diff = max_output_difference(current, candidate, feeds[:2])
            if diff == 0.0:
                notes.append(f"{what} ({count}x; outputs bit-identical on {len(feeds[:2])} calibration inputs)")
                current = candidate
            else:  # a rewrite is only worth it when exact
                notes.append(f"not done: {what} (it changed outputs by {diff:.3g})")
        _move_graph(current, dst)
    if not notes:
        return "none (no attention key transpose or int8 embedding lookup found)"
    return "; ".join(notes)


def kept_in_float(model: Any, keep: tuple[str, ...]) -> list[str]:
    """Node names for NNCF's ignored scope from the position rules of *keep* (KEEP_FP32)."""
    if not keep:
        return []
    graph = model.graph
    inits = {i.name for i in graph.initializer}
    producer = {out: node for node in graph.node for out in node.output}

    def constant(name: str) -> bool:  # an initializer, maybe transposed/reshaped/cast first
        node = producer.get(name)
        return name in inits or (
            node is not None
            and node.op_type in ("Transpose", "Reshape", "Cast")
            and bool(node.input)
            and node.input[0] in inits
        )

    matmuls = [n for n in graph.node if n.op_type in ("MatMul", "Gemm", "Conv")]
    weighted = [n for n in matmuls if any(constant(i) for i in n.input[:2])]
    names: list[str] = []
    if "first" in keep and weighted:
        names.append(weighted[0].name)
    if "last" in keep and weighted:
        names.append(weighted[-1].name)
    if "attention" in keep:
        names += [n.name for n in matmuls if n.op_type == "MatMul" and not any(constant(i) for i in n.input[:2])]
    return list(dict.fromkeys(n for n in names if n))


def single_row_tables(model: Any) -> list[str]:
    """Gather nodes that look up a constant table of one row (a Hugging Face tower's token-type
    embedding with ``type_vocab_size`` 1: RoBERTa, XLM-R), always left in float. NNCF quantises
    embedding tables weight-only, per tensor when the table has one row; OpenVINO (2026.4) then
    cannot compile the graph ("Check 'convert->constant_fold(...)' failed", its constant folding
    of the table's Convert), so a RoBERTa bundle's NNCF int8 text graph failed to load on the
    backend clip-rt picks for int8. One row of floats saves nothing to quantise anyway."""
    inits = {i.name: list(i.dims) for i in model.graph.initializer}
    return [
        n.name
        for n in model.graph.node
        if n.op_type == "Gather" and n.name and n.input and inits.get(n.input[0], [0])[:1] == [1]
    ]


def describe_qdq(model: Any) -> dict[str, Any]:
    """The op types whose weights are int8 (a DequantizeLinear of an initializer feeds them) and
    the activation types (QuantizeLinear outputs on computed tensors) of a QDQ graph."""
    from onnx import TensorProto

    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    consumers: dict[str, list[Any]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    weight_ops: set[str] = set()
    activations: set[str] = set()
    names = {TensorProto.UINT8: "uint8", TensorProto.INT8: "int8"}
    for node in graph.node:
        if node.op_type == "DequantizeLinear" and node.input[0] in inits:
            weight_ops.update(c.op_type for c in consumers.get(node.output[0], ()) if c.op_type != "Transpose")
            for c in consumers.get(node.output[0], ()):  # weights transposed before their MatMul
                if c.op_type == "Transpose":
                    weight_ops.update(cc.op_type for cc in consumers.get(c.output[0], ()))
        elif node.op_type == "QuantizeLinear" and node.input[0] not in inits and len(node.input) > 2:
            zp = inits.get(node.input[2])
            if zp is not None:
                activations.add(names.get(zp.data_type, str(zp.data_type)))
    if not weight_ops:
        raise ExportError("nncf left no weight quantised: the int8 graph would be an fp32 graph with extra ops")
    return {"ops": tuple(sorted(weight_ops)), "activations": "/".join(sorted(activations)) or "int8"}


def settings_for(encoder: str, overrides: Optional[dict[str, Any]] = None) -> dict[str, Any]:
    return dict(NNCF_INT8[encoder], **(overrides or {}))


def _move_graph(src: Path, dst: Path) -> None:
    """Move a graph file and its external data file, if it has one (onnx writes one only when
    some tensor is large enough), replacing *dst*'s."""
    import os

    os.replace(src, dst)
    data = Path(str(src) + ".data")
    if data.exists():
        os.replace(data, Path(str(dst) + ".data"))
