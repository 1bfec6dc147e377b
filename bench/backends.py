"""Backends side by side on this CPU: onnxruntime and OpenVINO (precision hints, latency vs
throughput), against open_clip in PyTorch fp32 and bf16, image and text, in one process.

``python -m bench.backends`` writes ``results/backends-<isa class>.json`` (the ISA class of the
CPU as oneDNN sees it: with ``ONEDNN_MAX_CPU_ISA=AVX512_CORE_VNNI`` an AMX host is timed as a
VNNI one for OpenVINO and torch, ``-as-vnni`` in the name; onnxruntime ignores that variable,
so its rows in such a file are still AMX figures and are marked so).
``python -m bench.backends --write-table`` turns the result files into the runtime's decision
table, ``clip_rt/engine/backends/choices.json``.

Candidates are timed round-robin (common.Timer); tables use best samples (the machine is
shared). Parity is min cosine against torch fp32 on scikit-image's photos; int8 paths also
record batch independence (an image alone vs in a batch of 8, max abs diff).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from .common import RESULTS_DIR, Timer, log, machine_info

TABLE = Path(__file__).resolve().parent.parent / "clip_rt" / "engine" / "backends" / "choices.json"
BUNDLE = Path("/work/bundles/ViT-B-32-random")
CLASS_NAME = "golden retriever"


def _isa_label() -> str:
    from clip_rt.engine.cpu import detect_cpu

    isa = detect_cpu().isa_class
    hidden = os.environ.get("ONEDNN_MAX_CPU_ISA", "").upper()
    return f"{isa}-as-vnni" if isa == "x86-amx" and hidden == "AVX512_CORE_VNNI" else isa


def _photos(manifest: Any) -> np.ndarray:
    import skimage.data
    from PIL import Image

    from clip_rt.inputs.preprocess import Preprocessor
    from clip_rt_fixtures.photos import PHOTOS

    pre = Preprocessor(manifest.image)
    out = []
    for name in PHOTOS:
        arr = getattr(skimage.data, name)()
        if isinstance(arr, tuple):  # stereo_motorcycle: (left, right, disparity)
            arr = arr[0]
        img = Image.fromarray(arr)
        out.append(pre(img.convert("RGB")))
    return np.stack(out).astype(np.float32)


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    cos = (a64 * b64).sum(-1) / np.linalg.norm(a64, axis=-1) / np.linalg.norm(b64, axis=-1)
    return round(float(cos.min()), 6)


class _Candidate:
    def __init__(self, name: str, backend: str, graph: str, compute: str, runner: Any, note: str = "") -> None:
        self.name, self.backend, self.graph, self.compute = name, backend, graph, compute
        self.runner, self.note = runner, note


def _graphs(bundle: Path, args: argparse.Namespace, encoder: str) -> dict[str, Path]:
    from clip_rt.bundle.manifest import read_manifest

    m = read_manifest(bundle)
    graphs = {"fp32": bundle / m.graph("fp32", encoder).file}
    if "int8" in m.precisions:
        from clip_rt.engine.backends.choose import int8_scheme

        graphs[f"int8-{int8_scheme(m, encoder)}"] = bundle / m.graph("int8", encoder).file
    static = getattr(args, f"static_{encoder}", None)
    if static and "int8-static" not in graphs:
        graphs["int8-static"] = Path(static)
    nncf = getattr(args, f"nncf_{encoder}", None)
    if nncf and "int8-static-nncf" not in graphs:
        graphs["int8-static-nncf"] = Path(nncf)
    return graphs


def _make_candidates(encoder: str, graphs: dict[str, Path], threads: int, ort_only: bool) -> list[_Candidate]:
    from clip_rt.engine.backends.ort import OrtBackend

    cands = [
        _Candidate(f"onnxruntime {g}", "onnxruntime", g, "graph", OrtBackend(p, ["cpu"], intra_op_threads=threads))
        for g, p in graphs.items()
    ]
    if ort_only:
        return cands
    try:
        from clip_rt.engine.backends.openvino import OpenVinoBackend
    except ImportError:
        return cands
    # With AMX hidden from oneDNN there is no bf16 arithmetic left: OpenVINO would emulate it
    # (0.04x, issue 10), which only makes the run long.
    hidden = os.environ.get("ONEDNN_MAX_CPU_ISA", "").upper() in ("AVX512_CORE_VNNI", "AVX512_CORE", "AVX2")
    for g, p in graphs.items():
        for compute in ("f32",) if hidden else ("f32", "bf16"):
            if g.startswith("int8") and g != "int8-static-nncf" and compute == "bf16":
                # Dynamic graphs measured far behind the static one in f32 already, onnxruntime's
                # static ones slower in bf16 than in f32 (backends-x86-amx.json of 2026-11-30).
                # NNCF's graph in bf16 is measured: its float parts (transposes, element-wise
                # subgraphs, LayerNorm) ran faster in a per-layer profile at batch 8.
                continue
            try:
                runner = OpenVinoBackend(p, compute=compute, threads=threads)
            except Exception as exc:  # noqa: BLE001 - a candidate that cannot run is reported, not fatal
                log(f"openvino {g} {compute}: {exc}")
                continue
            cands.append(_Candidate(f"openvino {g} {compute}", "openvino", g, compute, runner))
    return cands


def _pick(cands: list[_Candidate], args: argparse.Namespace) -> list[_Candidate]:
    """Only the candidates whose name contains one of ``--candidates`` (torch always runs)."""
    if not args.candidates:
        return cands
    return [c for c in cands if any(part in c.name for part in args.candidates)]


def _torch_image(tm: Any, x: np.ndarray) -> dict[str, Callable[[], Any]]:
    import torch

    bf16 = copy.deepcopy(tm.model).to(torch.bfloat16).eval()
    xt = torch.from_numpy(x)
    xb = xt.to(torch.bfloat16)
    return {"torch fp32": lambda: tm.model.encode_image(xt), "torch bf16": lambda: bf16.encode_image(xb)}


def image(args: argparse.Namespace, tm: Any, manifest: Any) -> dict[str, Any]:
    import torch
    import torch.nn.functional as F

    pixels = _photos(manifest)
    with torch.inference_mode():
        ref = F.normalize(tm.model.encode_image(torch.from_numpy(pixels)), dim=-1).numpy()
    cands = _pick(_make_candidates("image", _graphs(args.bundle, args, "image"), args.threads, args.ort_only), args)
    rows: list[dict[str, Any]] = []
    for c in cands:
        emb = np.concatenate([c.runner.run({"pixel_values": pixels[i : i + 8]})[0] for i in range(0, len(pixels), 8)])
        alone = c.runner.run({"pixel_values": pixels[:1]})[0]
        batch8 = c.runner.run({"pixel_values": pixels[:8]})[0]
        rows.append(
            {
                "candidate": c.name,
                "backend": c.backend,
                "graph": c.graph,
                "compute": c.compute,
                "min_cosine_vs_torch_fp32": _cos(emb, ref),
                "samples": len(pixels),
                "alone_vs_batch8_max_abs": float(f"{np.abs(alone[0] - batch8[0]).max():.3g}"),
            }
        )
    by_name = {r["candidate"]: r for r in rows}
    agreement = _batch_agreement(cands, pixels)
    speed: dict[str, Any] = {}
    requests = 8 * args.stream_batches  # single-image requests per sample, as many items as a batch-8 sample
    for batch, rounds in ((1, args.rounds * 2), (8, args.rounds)):
        x = pixels[:batch]
        fns = _torch_image(tm, x)
        per_call = {}
        for c in cands:
            fns[c.name] = lambda r=c.runner, x=x: r.run({"pixel_values": x})
            if c.backend == "openvino" and batch == 8:
                # As a folder runs: the stream's batch size given to the queue.
                fns[c.name + THROUGHPUT] = lambda r=c.runner, x=x: _stream(r, x, args.stream_batches, len(x))
                per_call[c.name + THROUGHPUT] = args.stream_batches
            if c.backend == "openvino" and batch == 1:
                # Single-image requests with several in flight (a server under load) go through
                # the throughput queue.
                fns[c.name + REQUESTS] = lambda r=c.runner, x=x: _stream(r, x, requests)
                per_call[c.name + REQUESTS] = requests
        log(f"image, batch {batch}: {len(fns)} candidates x {rounds} rounds")
        timer = Timer(rounds, pause_s=args.pause)
        with torch.inference_mode():
            timer.run(fns)
        speed[str(batch)] = _speeds(timer, batch, per_call)
    return {"rows": rows, "batch_agreement": agreement, "speed": speed, "by_name": list(by_name), "photos": len(pixels)}


def _batch_agreement(cands: list[_Candidate], pixels: np.ndarray) -> dict[str, Any]:
    """Per OpenVINO candidate, as the runtime runs it (one dynamic-batch model): the first 8
    photos one at a time against batches of 2, 4 and 8 (max abs diff); an image must get the
    same embedding alone and in a batch."""
    x = pixels[:8]
    out: dict[str, Any] = {}
    for c in (c for c in cands if c.backend == "openvino"):
        alone = np.concatenate([c.runner.run({"pixel_values": x[i : i + 1]})[0] for i in range(len(x))])
        diffs: dict[str, float] = {}
        for n in (2, 4, 8):
            got = np.concatenate([c.runner.run({"pixel_values": x[i : i + n]})[0] for i in range(0, len(x), n)])
            diffs[f"batch {n}"] = float(f"{np.abs(got - alone).max():.3g}")
        out[c.name] = {"max_abs_vs_batch_1": diffs}
        log(f"batch agreement, {c.name}: {diffs}")
    return out


THROUGHPUT = " [throughput]"  # batches of 8, several in flight through the throughput queue
REQUESTS = " [throughput, 1-image requests]"  # batch 1, several requests in flight


def _stream(runner: Any, x: np.ndarray, n: int, batch: Optional[int] = None) -> None:
    """*n* batches through the backend's throughput queue, in order, at most its depth in flight;
    *batch*: the stream's batch size, given to the backend as the runtime's folder stream does."""
    depth = runner.stream_depth(batch) if batch else runner.queue_depth
    pending: list[Any] = []
    for _ in range(n):
        pending.append(runner.submit({"pixel_values": x}, batch=batch))
        if len(pending) >= depth:
            pending.pop(0).result()
    for p in pending:
        p.result()


def _speeds(timer: Timer, items: int, per_call_batches: dict[str, int]) -> dict[str, Any]:
    out = {}
    for name, samples in timer.samples.items():
        n = items * per_call_batches.get(name, 1)
        out[name] = {
            "best_s": round(min(samples), 5),
            "median_s": round(float(np.median(samples)), 5),
            "items_per_s_best": round(n / min(samples), 2),
            "items_per_s_median": round(n / float(np.median(samples)), 2),
        }
    return out


def text(args: argparse.Namespace, tm: Any, manifest: Any) -> dict[str, Any]:
    import torch

    import clip_rt
    from clip_rt_export.graphs import text_wrapper

    prompts = [t.format(CLASS_NAME) for t in clip_rt.templates.IMAGENET]
    full = tm.tokenizer(prompts)
    length = int((full != 0).sum(1).max())
    ids = full[:, :length].numpy().astype(np.int64)
    trimmed = text_wrapper(tm.model, True)
    trimmed_bf16 = copy.deepcopy(trimmed).to(torch.bfloat16).eval()
    with torch.inference_mode():
        ref = trimmed(torch.from_numpy(ids)).numpy()
    cands = _pick(_make_candidates("text", _graphs(args.bundle, args, "text"), args.threads, args.ort_only), args)
    rows = []
    for c in cands:
        emb = c.runner.run({"input_ids": ids})[0]
        rows.append(
            {
                "candidate": c.name,
                "backend": c.backend,
                "graph": c.graph,
                "compute": c.compute,
                "min_cosine_vs_torch_fp32": _cos(emb, ref),
                "samples": len(ids),
            }
        )
    idt = torch.from_numpy(ids)
    fns: dict[str, Callable[[], Any]] = {
        "open_clip fp32 (context 77)": lambda: tm.model.encode_text(tm.tokenizer(prompts)),
        "torch fp32 trimmed": lambda: trimmed(idt),
        "torch bf16 trimmed": lambda: trimmed_bf16(idt),
    }
    for c in cands:
        fns[c.name] = lambda r=c.runner: r.run({"input_ids": ids})
    log(f"text, 80 prompts trimmed to {length} tokens: {len(fns)} candidates x {args.rounds} rounds")
    timer = Timer(args.rounds, pause_s=args.pause)
    with torch.inference_mode():
        timer.run(fns)
    speed = _speeds(timer, len(ids), {})
    try:
        shapes = _text_shapes(args, cands, ids) if not args.ort_only else None
    except Exception as exc:  # noqa: BLE001 - an extra figure; the main ones must still be written
        log(f"dynamic-vs-reshape measurement failed: {exc!r}")
        shapes = {"error": repr(exc)}
    return {"rows": rows, "speed": {"80": speed}, "tokens": length, "dynamic_vs_reshape": shapes}


def _text_shapes(args: argparse.Namespace, cands: list[_Candidate], ids: np.ndarray) -> Optional[dict[str, Any]]:
    """OpenVINO text at changing sequence lengths: the dynamic-shape model (as the runtime uses
    it) against a model reshaped and compiled per length (cached), first call and steady state."""
    ov_cands = [c for c in cands if c.backend == "openvino" and c.graph == "fp32"]
    if not ov_cands:
        return None
    import openvino as ov

    out: dict[str, Any] = {}
    lengths = (8, ids.shape[1], 24)
    for c in ov_cands:
        core = ov.Core()
        res: dict[str, Any] = {"dynamic_first_call_s": {}, "reshape_compile_and_first_call_s": {}}
        dyn = OpenVinoLatency(core, c.runner.path, c.compute, args.threads, None)
        fixed = {}
        for n in lengths:
            x = np.resize(ids, (len(ids), n)).astype(np.int64)
            t0 = time.perf_counter()
            dyn(x)
            res["dynamic_first_call_s"][str(n)] = round(time.perf_counter() - t0, 4)
            t0 = time.perf_counter()
            fixed[n] = OpenVinoLatency(core, c.runner.path, c.compute, args.threads, x.shape)
            fixed[n](x)
            res["reshape_compile_and_first_call_s"][str(n)] = round(time.perf_counter() - t0, 4)
        timer = Timer(args.rounds)
        xs = {n: np.resize(ids, (len(ids), n)).astype(np.int64) for n in lengths}
        timer.run(
            {f"dynamic L={n}": (lambda n=n: dyn(xs[n])) for n in lengths}
            | {f"reshaped L={n}": (lambda n=n: fixed[n](xs[n])) for n in lengths}
        )
        res["steady"] = _speeds(timer, len(ids), {})
        out[c.name] = res
    return out


class OpenVinoLatency:
    def __init__(self, core: Any, path: Path, compute: str, threads: int, shape: Optional[tuple[int, ...]]) -> None:
        model = core.read_model(str(path))
        if shape is not None:
            model.reshape({0: list(shape)})
        cfg = {"INFERENCE_PRECISION_HINT": compute, "PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": threads}
        self.req = core.compile_model(model, "CPU", cfg).create_infer_request()

    def __call__(self, x: np.ndarray) -> Any:
        return self.req.infer({0: x})


def ort_options(args: argparse.Namespace, manifest: Any) -> dict[str, Any]:
    """onnxruntime session options on the int8 image graph(s) at batch 8 (runtime settings only)."""
    import onnxruntime as ort
    import torch

    pixels = _photos(manifest)[:8]
    graphs = _graphs(args.bundle, args, "image")
    variants = {
        "default (no spinning)": {},
        "spinning": {"session.intra_op.allow_spinning": "1"},
        "fastgelu approximation": {"mlas.enable_gemm_fastgelu_approximation": "1"},
        "no cpu arena": {"_arena": False},
        "2 runs x 1 thread (threads)": {"_concurrent": 2},
    }
    fns: dict[str, Callable[[], Any]] = {}
    for g in [k for k in graphs if k.startswith("int8")]:
        for label, cfg in variants.items():
            so = ort.SessionOptions()
            so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            so.add_session_config_entry("session.intra_op.allow_spinning", "0")
            concurrent = cfg.get("_concurrent")
            so.intra_op_num_threads = 1 if concurrent else args.threads
            if cfg.get("_arena") is False:
                so.enable_cpu_mem_arena = False
            for k, v in cfg.items():
                if not k.startswith("_"):
                    so.add_session_config_entry(k, v)
            sess = ort.InferenceSession(str(graphs[g]), so, providers=["CPUExecutionProvider"])
            if concurrent:
                from concurrent.futures import ThreadPoolExecutor

                pool = ThreadPoolExecutor(concurrent)
                fns[f"{g}: {label}"] = lambda s=sess, p=pool, n=concurrent: list(
                    p.map(lambda _: s.run(None, {"pixel_values": pixels}), range(n))
                )
            else:
                fns[f"{g}: {label}"] = lambda s=sess: s.run(None, {"pixel_values": pixels})
    log(f"onnxruntime options: {len(fns)} candidates x {args.rounds} rounds")
    timer = Timer(args.rounds)
    with torch.inference_mode():
        timer.run(fns)
    return _speeds(timer, 8, {k: 2 for k in fns if "2 runs" in k})


def add_ratios(block: dict[str, Any], bases: tuple[str, ...]) -> None:
    """x <base> (best samples) on every candidate of each batch."""
    for per_batch in block.values():
        for base in bases:
            if base not in per_batch:
                continue
            b = per_batch[base]["items_per_s_best"]
            for s in per_batch.values():
                s[f"x {base} (best)"] = round(s["items_per_s_best"] / b, 3)


def run(args: argparse.Namespace, tm: Any = None) -> Path:
    import torch

    from clip_rt.bundle.manifest import read_manifest

    from .models import load_torch

    torch.set_num_threads(args.threads)
    manifest = read_manifest(args.bundle)
    tm = tm or load_torch("ViT-B-32", 0)
    label = _isa_label()
    result: dict[str, Any] = {
        "benchmark": "backends",
        "isa_class": label,
        "command": " ".join(["python", "-m", "bench.backends", *sys.argv[1:]]),
        "env": {k: os.environ[k] for k in ("ONEDNN_MAX_CPU_ISA",) if k in os.environ},
        "note": (
            "onnxruntime ignores ONEDNN_MAX_CPU_ISA (MLAS detects AMX itself): its rows here are AMX figures"
            if label.endswith("-as-vnni")
            else ""
        ),
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine_info(),
        "bundle": str(args.bundle),
        "static_int8": {"image": args.static_image, "text": args.static_text},
        "nncf_int8": {"image": args.nncf_image, "text": args.nncf_text},
        "threads": args.threads,
        "stream_batches": args.stream_batches,
        "pause_s": args.pause,
        "candidates": args.candidates or "all",
        "weights": f"{tm.arch} random (pretrained=None, seed {tm.seed})",
    }
    if "image" in args.only:
        result["image"] = image(args, tm, manifest)
        add_ratios(result["image"]["speed"], ("torch fp32", "torch bf16"))
    if "text" in args.only:
        result["text"] = text(args, tm, manifest)
        add_ratios(result["text"]["speed"], ("torch bf16 trimmed", "open_clip fp32 (context 77)"))
    if "ort" in args.only:
        result["onnxruntime_options"] = ort_options(args, manifest)
    from . import isa
    from .backend_goals import format_goals, goals

    result["goals"] = goals(result, isa.vit_image_macs(tm.model), isa.clock_ghz()[0], args.threads)
    log(format_goals(result["goals"]))
    out = args.out / f"backends-{label}{'-' + args.tag if args.tag else ''}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    log(f"wrote {out}")
    return out


def run_ctx(ctx: Any) -> Path:
    """``python -m bench --only backends``: on the bench's own bundle (its int8 graphs, static
    where the export made them static), default settings, results beside the others."""
    args = _parser().parse_args(
        ["--bundle", str(ctx.bundle), "--out", str(ctx.out_dir)]
        + (["--rounds", "2", "--only", "image"] if ctx.quick else [])
    )
    return run(args, ctx.torch_model)


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m bench.backends", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--bundle", type=Path, default=BUNDLE, help="a ViT-B-32 seed-0 bundle (fp32, int8)")
    ap.add_argument("--static-image", help="a static (QDQ) int8 image graph, when the bundle's int8 is dynamic")
    ap.add_argument("--static-text", help="a static (QDQ) int8 text graph")
    ap.add_argument("--nncf-image", help="an NNCF int8 image graph (as `clip-rt export --int8-method nncf` writes)")
    ap.add_argument("--nncf-text", help="an NNCF int8 text graph")
    ap.add_argument("--tag", default="", help="results/backends-<isa class>-<tag>.json instead of -<isa class>.json")
    ap.add_argument("--only", nargs="+", default=["image", "text", "ort"], choices=["image", "text", "ort"])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--stream-batches", type=int, default=4, help="batches of 8 per throughput-queue sample")
    ap.add_argument(
        "--pause",
        type=float,
        default=0.05,
        help="untimed seconds before each sample (lets a spinning thread pool go idle)",
    )
    ap.add_argument("--ort-only", action="store_true", help="skip OpenVINO")
    ap.add_argument(
        "--candidates",
        nargs="+",
        metavar="TEXT",
        help="only runtime candidates whose name contains one of these (e.g. 'openvino int8-static-nncf'); "
        "more rounds in the same time. Write such a run elsewhere (--out): --write-table reads every "
        "backends-*.json in the results folder",
    )
    ap.add_argument("--out", type=Path, default=RESULTS_DIR)
    ap.add_argument("--write-table", action="store_true", help="only rebuild the runtime's choices.json")
    return ap


def main(argv: Optional[list[str]] = None) -> int:
    args = _parser().parse_args(argv)
    if args.write_table:
        from .backend_table import write_table

        print(write_table(args.out, TABLE))
        return 0
    run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
