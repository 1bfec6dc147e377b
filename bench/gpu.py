"""``python -m bench.gpu``: the image encoder on onnxruntime's CUDA provider vs open_clip in PyTorch.

    python -m bench.gpu --bundle DIR [--checkpoint FILE | --seed N] [--out FILE]

Candidates, at each batch size (default 1 and 512), timed round-robin in one process:
  torch-fp16-eager[-hostin]   open_clip, ``.half()``, eager, input already on the GPU [copied from the host]
  ort-<p>                     the bundle's graph, ``session.run`` (numpy in, numpy out)
  ort-<p>-iob-hostin          IO binding: host input copied once per batch, output left on the GPU
  ort-<p>-iob-devin           IO binding: input and output on the GPU
  ort-fused-<p>[...]          the same on export/gpu_optimize.fuse_for_gpu's fused graph
  ort-[fused-]<p>-cudagraph   fixed-batch copy, CUDA graph capture/replay (FixedShapeRunner, host input)
Parity: every candidate's output vs open_clip fp32 on the same (seeded) inputs, min cosine.
The torch model is built from the manifest's architecture with ``--checkpoint`` weights, or
random weights from ``--seed`` (what ``clip-rt export --pretrained none --seed N`` used).

Without CUDA it stops with an error; ``--dry-run`` runs the same code on the CPU provider in
fp32 with small batches (a smoke test of the harness, not a measurement: no targets).
"""

from __future__ import annotations

import argparse
import copy
import json
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from clip_rt.errors import ProviderError

from .common import RESULTS_DIR, WORK_DIR, Timer, log, machine_info, target

# Issue 6's targets (H100, ViT-B/32 image encoder).
TARGET_SPEEDUP_512 = 1.3
TARGET_LATENCY_MS = 2.0
TARGET_COSINE = 0.999
PARITY_ROWS = 64


class GpuBenchError(RuntimeError):
    """The benchmark cannot run here (no CUDA, missing bundle or graph)."""


def parse_args(argv: Optional[list[str]]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="python -m bench.gpu", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--bundle", type=Path, required=True, help="bundle directory (fp32 + fp16 graphs)")
    ap.add_argument("--checkpoint", type=Path, help="open_clip checkpoint the bundle was exported from")
    ap.add_argument("--seed", type=int, default=0, help="random-weights seed when no --checkpoint (default 0)")
    ap.add_argument("--model-config", type=Path, help="open_clip config JSON (custom/tiny architectures)")
    ap.add_argument("--out", type=Path, help="result file (default bench/results/gpu-<device>.json)")
    ap.add_argument("--batch-sizes", type=int, nargs="+", help="default 1 512 (--dry-run: 1 2)")
    ap.add_argument("--rounds", type=int, default=30, help="timed rounds per candidate (x10 at batch 1)")
    ap.add_argument("--device-id", type=int, default=0)
    ap.add_argument("--work-dir", type=Path, default=WORK_DIR / "gpu", help="where the fused graph is written")
    ap.add_argument("--no-torch", action="store_true", help="skip the torch baseline and parity")
    ap.add_argument("--no-fused", action="store_true", help="skip the fused-graph candidates")
    ap.add_argument("--dry-run", action="store_true", help="CPU smoke run of the harness (no measurement)")
    args = ap.parse_args(argv)
    if args.batch_sizes is None:
        args.batch_sizes = [1, 2] if args.dry_run else [1, 512]
    if min(args.batch_sizes) < 1 or args.rounds < 1:
        ap.error("--batch-sizes and --rounds must be positive")
    return args


def check_cuda() -> list[str]:
    """The onnxruntime providers, after ``preload_dlls()``; GpuBenchError when CUDA is absent."""
    import onnxruntime

    if hasattr(onnxruntime, "preload_dlls"):  # CUDA/cuDNN from the pip packages (or PyTorch's)
        onnxruntime.preload_dlls()
    available = list(onnxruntime.get_available_providers())
    if "CUDAExecutionProvider" not in available:
        raise GpuBenchError(
            f"CUDA is not available: onnxruntime {onnxruntime.__version__} has {', '.join(available)}. "
            "Run this on a GPU machine with onnxruntime-gpu installed (docs/gpu.md), or pass --dry-run "
            "for a CPU smoke run of the harness."
        )
    return available


def device_name(dry_run: bool, device_id: int) -> str:
    if dry_run:
        return "cpu (dry run): " + str(machine_info().get("cpu_model", "unknown"))
    try:
        import torch

        if torch.cuda.is_available():
            return str(torch.cuda.get_device_name(device_id))
    except ImportError:
        pass
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader", f"--id={device_id}"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
        return out.stdout.strip() or "unknown GPU"
    except (OSError, subprocess.SubprocessError):
        return "unknown GPU"


def slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "device"


def torch_models(args: argparse.Namespace, arch: str, on_gpu: bool) -> tuple[Any, Any, Any]:
    """(fp32 model, baseline model, torch device): the open_clip model the bundle came from."""
    import torch

    from clip_rt_export.load import load_model, resolve

    pretrained = str(args.checkpoint) if args.checkpoint else "none"
    arch_name, source = resolve(arch, pretrained, args.model_config)
    loaded = load_model(arch_name, source, seed=None if args.checkpoint else args.seed)
    device = torch.device(f"cuda:{args.device_id}" if on_gpu else "cpu")
    # The fp32 reference must be fp32: no TF32 in cuDNN convolutions or matmuls.
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    fp32 = loaded.model.to(device).eval()
    if not on_gpu:
        torch.set_num_threads(1)
    base = copy.deepcopy(fp32).half().eval() if on_gpu else fp32  # CPU smoke: fp32 eager
    return fp32, base, device


def torch_encode(model: Any, x: Any) -> Any:
    import torch.nn.functional as F

    return F.normalize(model.encode_image(x), dim=-1)


def torch_reference(model: Any, device: Any, pixels: np.ndarray) -> np.ndarray:
    import torch

    out = []
    with torch.inference_mode():
        for start in range(0, len(pixels), 64):
            out.append(
                torch_encode(model, torch.from_numpy(pixels[start : start + 64]).to(device)).float().cpu().numpy()
            )
    return np.concatenate(out)


def ort_candidates(
    graphs: dict[str, Path],
    providers: list[str],
    options: dict,
    pixels: np.ndarray,
    on_gpu: bool,
    device_id: int,
    work_dir: Path,
    skipped: dict[str, str],
) -> tuple[dict[str, Callable[[], Any]], dict[str, Any]]:
    """For each graph: plain run, IO binding with host / device input, and the fixed-shape
    runner on a fixed-batch copy (CUDA graphs on the GPU). A candidate whose
    session fails to come up or to run is left out, its error recorded in *skipped*: one
    failing variant must not cost the others their figures on a lent machine."""
    import onnxruntime

    from clip_rt.bundle.manifest import IMAGE_INPUT
    from clip_rt.engine.gpu import FixedShapeRunner, cuda_options
    from clip_rt.engine.session import OrtSession
    from clip_rt_export.gpu_optimize import fix_batch

    cands: dict[str, Callable[[], Any]] = {}
    keep: dict[str, Any] = {}  # sessions and device buffers stay alive while timed
    # CPU smoke run: one thread, so idle onnxruntime pools do not spin against torch.
    threads = None if on_gpu else 1
    out_device = "cuda" if on_gpu else "cpu"
    dev_input = onnxruntime.OrtValue.ortvalue_from_numpy(pixels, out_device, device_id)
    keep["dev_input"] = dev_input
    batch = len(pixels)

    def plain(label: str, path: Path) -> dict[str, Callable[[], Any]]:
        sess = OrtSession(path, providers, options=options, intra_op_threads=threads)
        keep[label] = sess
        return {
            label: lambda: sess.run({IMAGE_INPUT: pixels})[0],
            # Outputs stay on the device while timed; the host copy is for parity only.
            f"{label}-iob-hostin": _keep_on_device(lambda: sess.run_binding({IMAGE_INPUT: pixels}, out_device)),
            f"{label}-iob-devin": _keep_on_device(lambda: sess.run_binding({IMAGE_INPUT: dev_input}, out_device)),
        }

    def fixed(label: str, path: Path) -> dict[str, Callable[[], Any]]:
        static = fix_batch(path, Path(work_dir) / f"{path.stem}-b{batch}.onnx", batch)
        graph_opts = options
        if on_gpu:
            graph_opts = {"cuda": {**options.get("cuda", {}), **cuda_options(cuda_graph=True)["cuda"]}}
        sess = OrtSession(static, providers, options=graph_opts, intra_op_threads=threads)
        runner = FixedShapeRunner(sess, pixels.shape)
        keep[label] = (sess, runner)
        return {label: _keep_on_device(lambda: runner.run(pixels))}

    for label, path in graphs.items():
        builders = [(label, plain), (f"{label}-{'cudagraph' if on_gpu else 'fixedshape'}", fixed)]
        for name, build in builders:
            try:
                made = build(name, path)
                for fn in made.values():
                    fn()  # first run: CUDA graph capture, cuDNN algorithm search
            except (ProviderError, *_ort_errors()) as exc:
                skipped[f"{name} (batch {batch})"] = f"{type(exc).__name__}: {exc}"
                log(f"{name} batch {batch} skipped: {exc}")
                continue
            cands.update(made)
    return cands, keep


def _ort_errors() -> tuple[type, ...]:
    from onnxruntime.capi import onnxruntime_pybind11_state as state

    return tuple(
        getattr(state, n)
        for n in ("Fail", "RuntimeException", "InvalidArgument", "NotImplemented", "InvalidGraph", "EPFail")
        if hasattr(state, n)
    )


class _keep_on_device:
    """A timed call whose OrtValue outputs stay where they are; ``.numpy()`` only for parity."""

    def __init__(self, fn: Callable[[], list[Any]]) -> None:
        self.fn = fn
        self.last: Any = None

    def __call__(self) -> Any:
        self.last = self.fn()
        return self.last

    def host(self) -> np.ndarray:
        return self.last[0].numpy()


def run(args: argparse.Namespace) -> dict[str, Any]:
    from clip_rt.bundle.manifest import read_manifest

    on_gpu = not args.dry_run
    available = check_cuda() if on_gpu else None
    bundle = args.bundle.resolve()
    if not (bundle / "manifest.json").is_file():
        raise GpuBenchError(f"{bundle} is not a clip-rt bundle (no manifest.json); export one first (docs/gpu.md)")
    manifest = read_manifest(bundle)
    precision = "fp16" if on_gpu else "fp32"  # the CPU provider cannot run every fp16 node (export/convert.py)
    if precision not in manifest.precisions:
        raise GpuBenchError(
            f"bundle {bundle.name} has no {precision} graphs (it has "
            f"{', '.join(manifest.precisions)}); "
            f"export with --precision fp32 --precision fp16"
        )
    ep = [f"cuda:{args.device_id}"] if on_gpu else ["cpu"]
    options = {"cuda": {"cudnn_conv_algo_search": "EXHAUSTIVE"}} if on_gpu else {}
    h, w = manifest.image.size
    rng = np.random.default_rng(args.seed)
    biggest = max(args.batch_sizes)
    # Normalised pixels: noise of the scale preprocessing gives (roughly unit variance).
    all_pixels = rng.standard_normal((biggest, 3, h, w), dtype=np.float32)

    result: dict[str, Any] = {
        "benchmark": "gpu",
        "dry_run": args.dry_run,
        "device": device_name(args.dry_run, args.device_id),
        "command": " ".join([Path(sys.executable).name, "-m", "bench.gpu", *sys.argv[1:]]),
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine_info(),
        "bundle": bundle.name,
        "architecture": manifest.architecture,
        "precision": precision,
        "inputs": f"seeded standard-normal pixel_values (seed {args.seed})",
        "ort_available_providers": available,
        "skipped": {},
        "rows": [],
    }
    graphs = {f"ort-{precision}": bundle / manifest.graph(precision, "image").file}
    fused_path = Path(args.work_dir) / f"{bundle.name}-image-fused-{precision}.onnx"

    ref = fp32 = base = tdevice = None
    if args.no_torch:
        result["skipped"]["torch"] = "--no-torch"
    else:
        import torch

        result["machine"]["versions"]["torch_cuda"] = str(torch.version.cuda)
        fp32, base, tdevice = torch_models(args, manifest.architecture, on_gpu)
        ref = torch_reference(fp32, tdevice, all_pixels[: max(min(biggest, 512), 1)])
        del fp32

    if args.no_fused:
        result["skipped"]["fused"] = "--no-fused"
    elif "fp32" not in manifest.precisions:
        result["skipped"]["fused"] = "the bundle has no fp32 graph to fuse"
    else:
        from clip_rt_export.gpu_optimize import fuse_for_gpu

        heads, width = _vision_heads_width(base)
        log(f"fusing {manifest.graph('fp32', 'image').file} (heads {heads}, width {width}) -> {fused_path.name}")
        result["fused_ops"] = fuse_for_gpu(
            bundle / manifest.graph("fp32", "image").file, fused_path, num_heads=heads, hidden_size=width, fp16=on_gpu
        )
        graphs[f"ort-fused-{precision}"] = fused_path

    for batch in args.batch_sizes:
        pixels = np.ascontiguousarray(all_pixels[:batch])
        cands, keep = ort_candidates(
            graphs, ep, options, pixels, on_gpu, args.device_id, args.work_dir, result["skipped"]
        )
        timed: dict[str, Callable[[], Any]] = dict(cands)
        if base is not None:
            timed.update(_torch_candidates(base, tdevice, pixels, on_gpu))
        rounds = args.rounds * (10 if batch == 1 else 1)
        log(f"batch {batch}: {len(timed)} candidates, {rounds} rounds")
        timer = Timer(rounds)
        timer.run(timed, warmup=3)
        for name, seconds in timer.medians().items():
            emb = _host_output(timed[name])
            row = {
                "candidate": name,
                "batch": batch,
                "median_s": round(seconds, 6),
                "best_s": round(min(timer.samples[name]), 6),
                "images_per_s": round(batch / seconds, 1),
                "latency_ms": round(seconds * 1000, 3),
                "rounds": rounds,
                "input": "device" if name.endswith("devin") else "host",
            }
            if ref is not None and emb is not None:
                cosine = _min_cosine(emb[:PARITY_ROWS], ref[:batch][:PARITY_ROWS])
                row["min_cosine_vs_torch_fp32"] = round(float(cosine), 6)
            result["rows"].append(row)
        del keep
    result["targets"] = None if args.dry_run else _targets(result["rows"])
    return result


def _vision_heads_width(model: Any) -> tuple[int, int]:
    try:
        attn = model.visual.transformer.resblocks[0].attn
        return int(attn.num_heads), int(attn.embed_dim)
    except AttributeError:  # no torch model, or not a ViT: let onnxruntime read them from the graph
        return 0, 0


def _torch_candidates(model: Any, device: Any, pixels: np.ndarray, on_gpu: bool) -> dict[str, Callable[[], Any]]:
    import torch

    dtype = torch.float16 if on_gpu else torch.float32
    x_dev = torch.from_numpy(pixels).to(device=device, dtype=dtype)
    x_host = torch.from_numpy(pixels)
    sync = torch.cuda.synchronize if on_gpu else (lambda: None)

    def eager(x_fn: Callable[[], Any]) -> Callable[[], Any]:
        def call() -> Any:
            with torch.inference_mode():
                out = torch_encode(model, x_fn())
            sync()
            return out

        return call

    label = "torch-fp16-eager" if on_gpu else "torch-fp32-eager-cpu"
    return {label: eager(lambda: x_dev), f"{label}-hostin": eager(lambda: x_host.to(device=device, dtype=dtype))}


def _host_output(fn: Any) -> Optional[np.ndarray]:
    if isinstance(fn, _keep_on_device):
        return fn.host()
    out = fn()  # plain run / torch: one more call gives the output
    if isinstance(out, np.ndarray):
        return out
    return out.float().cpu().numpy()


def _min_cosine(a: np.ndarray, b: np.ndarray) -> float:
    a = a.astype(np.float64)
    b = b.astype(np.float64)
    cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    return float(cos.min())


def _targets(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Issue 6's targets, each from rows of this run: ORT candidates vs torch with the input
    in the same place (device vs device); the best ORT candidate must also meet the cosine."""

    def best(batch: int, prefix: str, input_on: Optional[str] = None) -> Optional[dict[str, Any]]:
        rs = [
            r
            for r in rows
            if r["batch"] == batch
            and r["candidate"].startswith(prefix)
            and (input_on is None or r["input"] == input_on)
        ]
        return min(rs, key=lambda r: r["median_s"]) if rs else None

    ort512 = best(512, "ort-", "device") or best(512, "ort-")
    torch512 = best(512, "torch-fp16-eager", "device")
    ort1 = best(1, "ort-")
    speedup = ort512["images_per_s"] / torch512["images_per_s"] if ort512 and torch512 else None
    out = [
        target("throughput batch 512, best ORT / torch fp16 eager (device input)", speedup, TARGET_SPEEDUP_512),
        target(
            "latency batch 1, best ORT",
            ort1["latency_ms"] if ort1 else None,
            TARGET_LATENCY_MS,
            higher_is_better=False,
            unit="ms",
        ),
    ]
    for r in (ort512, ort1):
        if r is not None:
            row = target(
                f"cosine vs torch fp32, {r['candidate']} batch {r['batch']}",
                r.get("min_cosine_vs_torch_fp32"),
                TARGET_COSINE,
            )
            out.append(row)
    for row, r in zip(out, (ort512, ort1)):
        row["candidate"] = r["candidate"] if r else None
    return out


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    try:
        result = run(args)
    except GpuBenchError as exc:
        print(f"bench.gpu: {exc}", file=sys.stderr)
        return 2
    out = args.out or RESULTS_DIR / f"gpu-{slug(result['device'])}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    log(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
