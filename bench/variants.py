"""Image-graph variants (fusion, int8 flavours, session settings): speed and parity, side by side.

Every variant is timed in the same process, round-robin with the torch baselines, so the
shared machine's noise hits all alike; figures are medians. Parity is against torch fp32 on
real photos: embedding cosine and zero-shot top-1 agreement (text side fixed to torch fp32,
so only the image graph varies). Writes ``results/variants.json``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .common import Timer, log, ratio, write_result
from .context import BenchContext
from .models import ort_session

# name -> optimize_graph keyword arguments (None: the fp32 export as is).
GRAPH_VARIANTS: dict[str, Any] = {
    "fp32": None,
    "fused": {"kind": "fused"},
    "int8-dynamic-tensor": {"kind": "int8-dynamic", "per_channel": False},
    "int8-dynamic": {"kind": "int8-dynamic", "per_channel": True},
    "int8-dynamic-reduce-range": {"kind": "int8-dynamic", "per_channel": True, "reduce_range": True},
    "int8-dynamic-fused": {"kind": "int8-dynamic-fused"},
    "int8-static-minmax": {"kind": "int8-static", "calibration_method": "minmax"},  # what the export ships
    "int8-static-minmax-tensor": {"kind": "int8-static", "calibration_method": "minmax", "per_channel": False},
    "int8-static-percentile": {"kind": "int8-static", "calibration_method": "percentile"},
    "int8-static-entropy": {"kind": "int8-static", "calibration_method": "entropy"},
    "int8-static-fused": {"kind": "int8-static-fused", "calibration_method": "minmax"},
    "fused-mha": {"kind": "fused-mha"},
    "int8-static-fused-mha": {"kind": "int8-static-fused-mha", "calibration_method": "minmax"},
}
QUICK_VARIANTS = ("fp32", "int8-dynamic", "int8-static-minmax", "int8-static-fused-mha")


def build_variant(name: str, fp32: Path, out_dir: Path, calibration: list, heads_width: tuple[int, int]) -> Path:
    from clip_rt_export.optimize import optimize_graph

    spec = GRAPH_VARIANTS[name]
    if spec is None:
        return fp32
    path = out_dir / f"image_{name}.onnx"
    if not path.exists():
        log(f"building variant {name}")
        kwargs = dict(spec)
        if kwargs["kind"].startswith("int8-static"):
            kwargs["calibration_inputs"] = calibration
        logging.getLogger("onnxruntime").setLevel(logging.ERROR)
        optimize_graph(fp32, path, num_heads=heads_width[0], hidden_size=heads_width[1], **kwargs)
    return path


def run(ctx: BenchContext, batch: int = 8) -> dict[str, Any]:
    import torch

    from clip_rt.bundle.manifest import read_manifest
    from clip_rt_export.calibration import image_calibration

    tm, ref, quick = ctx.torch_model, ctx.reference, ctx.quick
    rounds = 3 if quick else 6
    fp32 = ctx.bundle / read_manifest(ctx.bundle).graph("fp32", "image").file
    out_dir = ctx.work_dir / f"variants-{ctx.arch}-seed{ctx.seed}"
    out_dir.mkdir(parents=True, exist_ok=True)
    # The export's own calibration set (real photos other than the benchmark's, crops, scenes).
    calibration = image_calibration(tm.model).feeds
    names = tuple(ctx.variants) if ctx.variants else (QUICK_VARIANTS if quick else tuple(GRAPH_VARIANTS))
    unknown = sorted(set(names) - set(GRAPH_VARIANTS))
    if unknown:
        raise ValueError(f"unknown variants {unknown}; known: {', '.join(GRAPH_VARIANTS)}")
    x = ref.pixels[:batch] if len(ref.pixels) >= batch else np.resize(ref.pixels, (batch, *ref.pixels.shape[1:]))

    rows: dict[str, dict[str, Any]] = {}
    candidates: dict[str, Callable[[], Any]] = {}
    for name in names:
        path = build_variant(name, fp32, out_dir, calibration, tm.vision_heads_width)
        sess = ort_session(path)
        emb = sess.run(None, {"pixel_values": ref.pixels})[0]
        alone = np.concatenate([sess.run(None, {"pixel_values": x[i : i + 1]})[0] for i in range(len(x))])
        batch_diff = float(f"{np.abs(sess.run(None, {'pixel_values': x})[0] - alone).max():.3g}")
        rows[name] = {
            "graph": name,
            "bytes": path.stat().st_size,
            "ops": _notable_ops(path),
            **ref.image_parity(emb),
            "batch_max_abs_diff": batch_diff,
        }
        candidates[name] = lambda s=sess: s.run(None, {"pixel_values": x})
    # Session settings on the recommended graph.
    rec = build_variant("int8-dynamic", fp32, out_dir, calibration, tm.vision_heads_width)
    settings = {"int8-dynamic/spin": dict(spinning=True), "int8-dynamic/1-thread": dict(threads=1)}
    if not quick and not ctx.variants:
        for label, kw in settings.items():
            s = ort_session(rec, **kw)
            candidates[label] = lambda s=s: s.run(None, {"pixel_values": x})
            rows[label] = dict(rows["int8-dynamic"], graph="int8-dynamic", session=kw)

    _add_openvino(rows, candidates, fp32, out_dir / "image_int8-static-minmax.onnx", ref, x)
    torch.set_num_threads(2)
    xt = torch.from_numpy(x)
    model_bf16 = _bf16_copy(tm.model)
    with torch.inference_mode():
        candidates["torch-fp32"] = lambda: tm.model.encode_image(xt)
        candidates["torch-bf16"] = lambda: model_bf16.encode_image(xt.to(torch.bfloat16))
        log(f"timing {len(candidates)} image candidates at batch {batch}, {rounds} rounds")
        timer = Timer(rounds=rounds)
        med = timer.run(candidates)
    for name, sec in med.items():
        row = rows.setdefault(name, {"graph": name})
        row["images_per_s"] = round(batch / sec, 2)
        row["best_images_per_s"] = round(batch / min(timer.samples[name]), 2)
    base, bf16 = rows["torch-fp32"], rows["torch-bf16"]
    for row in rows.values():
        row["x_torch_fp32"] = ratio(row["images_per_s"], base["images_per_s"])
        row["x_torch_bf16"] = ratio(row["images_per_s"], bf16["images_per_s"])
        row["x_torch_fp32_best"] = ratio(row["best_images_per_s"], base["best_images_per_s"])
    calibration = "export/calibration.py image_calibration (the export's set; the photos here are held out)"
    result = {
        **ctx.result_meta(),
        "batch": batch,
        "rounds": rounds,
        "calibration": calibration,
        "parity_inputs": f"{len(ref.pixels)} photos",
        "variants": list(rows.values()),
    }
    write_result("variants", result, ctx.out_dir)
    return result


_NOTABLE = (
    "MatMul",
    "MatMulInteger",
    "DynamicQuantizeLinear",
    "QuantizeLinear",
    "DequantizeLinear",
    "Attention",
    "MultiHeadAttention",
    "LayerNormalization",
    "SkipLayerNormalization",
    "BiasGelu",
    "Gelu",
    "Erf",
    "Transpose",
    "Reshape",
)


def _notable_ops(path: Path) -> dict[str, int]:
    """Op counts that show what a fusion or quantiser did (e.g. Attention: 0 means no match)."""
    import collections

    import onnx

    counts = collections.Counter(n.op_type for n in onnx.load(str(path), load_external_data=False).graph.node)
    return {op: counts[op] for op in _NOTABLE if counts[op]} | {"Attention": counts["Attention"]}


def _add_openvino(rows: dict, candidates: dict, fp32: Path, qdq: Path, ref: Any, x: np.ndarray) -> None:
    """OpenVINO's CPU plugin on the fp32 and static-QDQ graphs, when ``openvino`` is importable
    (an optional extra: run the benchmark from an environment that has it)."""
    try:
        import openvino as ov
    except ImportError:
        return
    core = ov.Core()
    config = {"INFERENCE_NUM_THREADS": 2, "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1}
    for name, path in (("openvino fp32", fp32), ("openvino int8-static-minmax (QDQ)", qdq)):
        if not path.exists():
            continue
        req = core.compile_model(str(path), "CPU", config).create_infer_request()
        emb = np.concatenate([req.infer({0: ref.pixels[i : i + 8]})[0] for i in range(0, len(ref.pixels), 8)])
        rows[name] = {
            "graph": name,
            "bytes": path.stat().st_size,
            "session": {"openvino": ov.__version__, **config},
            **ref.image_parity(emb),
        }
        candidates[name] = lambda r=req: r.infer({0: x})


def _bf16_copy(model: Any) -> Any:
    import copy

    import torch

    return copy.deepcopy(model).to(torch.bfloat16).eval()
