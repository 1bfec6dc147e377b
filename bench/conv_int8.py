"""int8 for convolutional image towers (RN50, ConvNeXt, MobileCLIP): which ops to quantise.

For each architecture (open_clip, random weights seed 0) the fp32 image graph is exported once
and quantised (static QDQ, calibrated as the export does) in variants that differ in the ops
given int8 weights and activations:

- ``int8-matmul``: MatMul/Gemm only (what the export wrote for every model before);
- ``int8-conv``: Conv too (onnxruntime then runs QLinearConv);
- ``int8-conv-no-depthwise``: Conv except depthwise/grouped ones (``group > 1``);
- each ``-prep`` variant first runs onnxruntime's ``quant_pre_process`` (BatchNorm folded into
  the convolutions, shapes inferred), so the quantised Conv is the whole Conv+BN.

Every variant is timed round-robin with fp32 in one process (batch 8, two threads, medians),
and compared with torch fp32 on the held-out photos (min cosine). Writes
``results/conv_int8.json``; the export's choice (``clip_rt_export.optimize.image_int8_settings``)
follows it.

    python -m bench.conv_int8 --arch RN50 --arch MobileCLIP-S1 --arch convnext_tiny
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import sys
from pathlib import Path
from typing import Any

import numpy as np

from .common import WORK_DIR, Timer, log, write_result
from .models import ort_session

VARIANTS: dict[str, dict[str, Any]] = {
    "int8-matmul": {"op_types": ("MatMul", "Gemm"), "prep": False, "exclude": ""},
    "int8-conv": {"op_types": ("Conv", "MatMul", "Gemm"), "prep": False, "exclude": ""},
    "int8-conv-prep": {"op_types": ("Conv", "MatMul", "Gemm"), "prep": True, "exclude": ""},
    "int8-conv-no-depthwise-prep": {"op_types": ("Conv", "MatMul", "Gemm"), "prep": True, "exclude": "depthwise"},
}


def _graph_facts(path: Path) -> dict[str, Any]:
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    convs = [n for n in graph.node if n.op_type == "Conv"]
    grouped = [n for n in convs if next((a.i for a in n.attribute if a.name == "group"), 1) > 1]
    ops: dict[str, int] = {}
    for n in graph.node:
        ops[n.op_type] = ops.get(n.op_type, 0) + 1
    return {
        "conv": len(convs),
        "grouped_conv": len(grouped),
        "matmul_gemm": ops.get("MatMul", 0) + ops.get("Gemm", 0),
        "batchnorm": ops.get("BatchNormalization", 0),
    }


def measure_arch(arch: str, rounds: int, batch: int, work: Path) -> dict[str, Any]:
    import open_clip
    import torch
    import torch.nn.functional as F

    from clip_rt_export import graphs
    from clip_rt_export.calibration import held_out_photos, image_calibration
    from clip_rt_export.optimize import optimize_graph, prepare_for_conv_int8
    from clip_rt_export.sample_inputs import transform_for

    work.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    model = open_clip.create_model(arch, pretrained=None, pretrained_image=False, pretrained_text=False).eval()
    size = model.visual.preprocess_cfg["size"]
    size = (size, size) if isinstance(size, int) else tuple(size)
    fp32 = work / "image_fp32.onnx"
    if not fp32.exists():
        log(f"{arch}: exporting the image graph {size}")
        with contextlib.redirect_stdout(io.StringIO()):
            graphs.export_image_graph(model, size, fp32)
    prepped = work / "image_prep.onnx"
    if not prepped.exists():
        prepare_for_conv_int8(fp32, prepped)
    facts = {"fp32": _graph_facts(fp32), "prep": _graph_facts(prepped)}
    held = held_out_photos()
    transform = transform_for(model)
    pixels = torch.stack([transform(im) for im in held.images]).float()
    with torch.no_grad():
        want = F.normalize(model.encode_image(pixels), dim=-1).numpy()
    cal = image_calibration(model)
    logging.getLogger("onnxruntime").setLevel(logging.ERROR)
    paths = {"fp32": fp32}
    for name, spec in VARIANTS.items():
        if spec["exclude"] == "depthwise" and not facts["prep"]["grouped_conv"]:
            continue  # the same graph as without the exclusion
        out = work / f"image_{name}.onnx"
        if not out.exists():
            log(f"{arch}: building {name}")
            optimize_graph(
                prepped if spec["prep"] else fp32,
                out,
                kind="int8-static",
                calibration_inputs=cal.feeds,
                op_types=spec["op_types"],
                exclude=spec["exclude"],
            )
        paths[name] = out
    x = pixels.numpy()
    parity = {}
    sessions = {name: ort_session(p) for name, p in paths.items()}
    for name, sess in sessions.items():
        got = np.concatenate([sess.run(None, {"pixel_values": x[i : i + batch]})[0] for i in range(0, len(x), batch)])
        cos = np.sum(got * want, axis=1) / np.linalg.norm(got, axis=1) / np.linalg.norm(want, axis=1)
        parity[name] = {"min_cosine": round(float(cos.min()), 6), "max_abs_diff": float(np.abs(got - want).max())}
    feed = {"pixel_values": np.ascontiguousarray(x[:batch])}
    timer = Timer(rounds)
    medians = timer.run({name: (lambda s=sess: s.run(None, feed)) for name, sess in sessions.items()})
    out = {"image_size": list(size), "graph": facts, "batch": batch, "rounds": rounds, "variants": {}}
    for name in paths:
        out["variants"][name] = {
            "median_s": round(medians[name], 4),
            "speedup_vs_fp32": round(medians["fp32"] / medians[name], 3),
            "samples_s": [round(t, 4) for t in timer.samples[name]],
            **parity[name],
            "bytes": paths[name].stat().st_size,
        }
        log(
            f"{arch} {name}: {medians[name] * 1000:.0f} ms/batch of {batch}, x{medians['fp32'] / medians[name]:.2f} "
            f"vs fp32, min cosine {parity[name]['min_cosine']:.5f}"
        )
    return out


def render(result: dict[str, Any]) -> str:
    """The markdown table of a conv_int8 result."""
    names = list(VARIANTS)
    lines = [
        "| architecture | Conv (depthwise) / MatMul nodes | fp32 ms per 8 images | "
        + " | ".join(f"{n}: speed-up, min cosine" for n in names)
        + " |",
        "| --- | --- | --- | " + " | ".join("---" for _ in names) + " |",
    ]
    for arch, row in result["archs"].items():
        g = row["graph"]["fp32"]
        cells = []
        for n in names:
            v = row["variants"].get(n)
            cells.append("-" if v is None else f"{v['speedup_vs_fp32']:.2f}x, {v['min_cosine']:.5f}")
        lines.append(
            f"| {arch} | {g['conv']} ({g['grouped_conv']}) / {g['matmul_gemm']} | "
            f"{row['variants']['fp32']['median_s'] * 1000:.0f} | " + " | ".join(cells) + " |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", action="append", default=None)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batch", type=int, default=8)
    args = parser.parse_args(argv)
    archs = args.arch or ["RN50", "MobileCLIP-S1", "convnext_tiny"]
    results: dict[str, Any] = {
        "command": "python -m bench.conv_int8 " + " ".join(argv if argv is not None else sys.argv[1:]),
        "archs": {},
    }
    for arch in archs:
        results["archs"][arch] = measure_arch(arch, args.rounds, args.batch, WORK_DIR / "conv_int8" / arch)
    write_result("conv_int8", results)


if __name__ == "__main__":
    main()
