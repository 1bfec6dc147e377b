"""``python -m bench.attention_layout IMAGE_INT8.onnx [TEXT_INT8.onnx]``: an NNCF int8 graph as
NNCF wrote it against the same graph with attention's key transposes next to their MatMuls
(clip_rt_export/attention_layout.py, what the export now writes), side by side in one process.

For each graph: OpenVINO's per-layer profile at batch 8 (latency mode: the share of Transpose
layers), speed on OpenVINO (batch 1 and 8 in latency mode, batch 8 through the throughput
queue) and on onnxruntime (batch 1 and 8), text in latency mode (80 prompts of 13 tokens), and
the largest output difference (0 = bit for bit). Round-robin, best samples with medians and
the median of the per-round ratios (the machine is shared). Writes
results/attention_layout.json. Give it a graph as NNCF wrote it (a bundle exported before
this rewrite, or any graph: the rewrite is applied to a copy; a graph already rewritten has
nothing left to move and is refused).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from .common import RESULTS_DIR, Timer, command_line, log, machine_info, rewritten_copy


def _inputs(kind: str, batch: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    if kind == "image":
        return rng.standard_normal((batch, 3, 224, 224)).astype(np.float32)
    return rng.integers(1, 49000, (batch, 13)).astype(np.int64)


def _ov_model(core: Any, path: Path, kind: str, batch: int, mode: str, perf: bool = False) -> Any:
    model = core.read_model(str(path))
    if kind == "image":
        model.reshape({model.inputs[0].get_any_name(): [batch, 3, 224, 224]})
    config = {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": mode}
    if perf:
        config["PERF_COUNT"] = True
    return core.compile_model(model, "CPU", config)


def _profile(core: Any, path: Path, kind: str) -> dict[str, Any]:
    """ms per layer type (and its share) at batch 8, latency mode, mean of 6 runs."""
    compiled = _ov_model(core, path, kind, 8, "LATENCY", perf=True)
    request = compiled.create_infer_request()
    x = {0: _inputs(kind, 8)}
    for _ in range(2):
        request.infer(x)
    per_type: Counter[str] = Counter()
    runs = 6
    for _ in range(runs):
        request.infer(x)
        for p in request.profiling_info:
            if p.status == p.Status.EXECUTED:
                per_type[f"{p.node_type} {p.exec_type}"] += p.real_time.total_seconds() * 1000 / runs
    total = sum(per_type.values())
    transpose = sum(v for k, v in per_type.items() if k.startswith("Transpose "))
    return {
        "total_ms": round(total, 2),
        "transpose_ms": round(transpose, 2),
        "transpose_share": round(transpose / total, 3) if total else None,
        "top_layers_ms": {k: round(v, 2) for k, v in per_type.most_common(6)},
    }


def _speed_fns(
    core: Any, paths: dict[str, Path], kind: str, threads: int
) -> tuple[dict[str, Callable[[], Any]], dict[str, int]]:
    import onnxruntime as ort
    import openvino as ov

    fns: dict[str, Callable[[], Any]] = {}
    items: dict[str, int] = {}
    configs = ((1, "LATENCY"), (8, "LATENCY"), (8, "THROUGHPUT")) if kind == "image" else ((80, "LATENCY"),)
    for tag, path in paths.items():
        for batch, mode in configs:
            compiled = _ov_model(core, path, kind, batch, mode)
            feeds = {0: _inputs(kind, batch)}
            name = f"openvino {mode.lower()} batch {batch} [{tag}]"
            if mode == "LATENCY":
                request = compiled.create_infer_request()
                fns[name] = lambda r=request, f=feeds: [r.infer(f) for _ in range(4)]
            else:
                queue = ov.AsyncInferQueue(compiled, compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))

                def stream(q: Any = queue, f: Any = feeds) -> None:
                    for _ in range(4):
                        q.start_async(f)
                    q.wait_all()

                fns[name] = stream
            items[name] = 4 * batch
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        input_name = session.get_inputs()[0].name
        for batch in (1, 8) if kind == "image" else (80,):
            feeds_ort = {input_name: _inputs(kind, batch)}
            name = f"onnxruntime batch {batch} [{tag}]"
            fns[name] = lambda s=session, f=feeds_ort: [s.run(None, f) for _ in range(4)]
            items[name] = 4 * batch
    return fns, items


def _max_diff(core: Any, paths: dict[str, Path], kind: str) -> float:
    x = _inputs(kind, 3)
    outs = []
    for path in paths.values():
        compiled = core.compile_model(core.read_model(str(path)), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
        outs.append(np.asarray(compiled({0: x})[0], dtype=np.float64))
    return float(np.abs(outs[0] - outs[1]).max())


def compare(graph: Path, kind: str, rounds: int, threads: int, pause: float) -> dict[str, Any]:
    import openvino as ov

    from clip_rt_export.attention_layout import move_key_transposes

    core = ov.Core()
    with tempfile.TemporaryDirectory() as tmp:
        rewritten, moved = rewritten_copy(
            graph,
            move_key_transposes,
            Path(tmp),
            "no attention key transpose to move (already rewritten, or not an NNCF graph)",
        )
        paths = {"as NNCF wrote it": graph, "key transpose at its MatMul": rewritten}
        result: dict[str, Any] = {
            "graph": str(graph),
            "key_transposes_moved": moved,
            "openvino_max_abs_diff": _max_diff(core, paths, kind),
            "profile_batch8_latency": {tag: _profile(core, p, kind) for tag, p in paths.items()}
            if kind == "image"
            else None,
        }
        fns, items = _speed_fns(core, paths, kind, threads)
        log(f"{kind}: {len(fns)} candidates x {rounds} rounds")
        timer = Timer(rounds, pause_s=pause)
        timer.run(fns)
    speed: dict[str, Any] = {}
    for name, secs in timer.samples.items():
        rates = [items[name] / s for s in secs]
        speed[name] = {
            "items_per_s_best": round(max(rates), 2),
            "items_per_s_median": round(statistics.median(rates), 2),
        }
    ratios: dict[str, Any] = {}
    for name in fns:
        if name.endswith("[as NNCF wrote it]"):
            base = name[: -len("[as NNCF wrote it]")]
            new = base + "[key transpose at its MatMul]"
            per_round = [a / b for a, b in zip(timer.samples[name], timer.samples[new])]  # time old / time new
            ratios[base.strip()] = {
                "best": round(speed[new]["items_per_s_best"] / speed[name]["items_per_s_best"], 3),
                "medians": round(speed[new]["items_per_s_median"] / speed[name]["items_per_s_median"], 3),
                "median_of_round_ratios": round(statistics.median(per_round), 3),
            }
    result.update({"speed": speed, "rewritten_vs_nncf": ratios})
    return result


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m bench.attention_layout",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("image", type=Path, help="an NNCF int8 image graph as NNCF wrote it")
    ap.add_argument("text", type=Path, nargs="?", help="an NNCF int8 text graph as NNCF wrote it")
    ap.add_argument("--rounds", type=int, default=12)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--pause", type=float, default=0.05)
    ap.add_argument("--out", type=Path, default=RESULTS_DIR)
    args = ap.parse_args(argv)
    out: dict[str, Any] = {
        "benchmark": "attention_layout",
        "command": command_line("bench.attention_layout", argv),
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine_info(),
        "rounds": args.rounds,
        "threads": args.threads,
    }
    out["image"] = compare(args.image, "image", args.rounds, args.threads, args.pause)
    if args.text:
        out["text"] = compare(args.text, "text", args.rounds, args.threads, args.pause)
    for kind in ("image", "text"):
        for what, r in out.get(kind, {}).get("rewritten_vs_nncf", {}).items():
            log(
                f"{kind} {what}: rewritten / NNCF's best {r['best']}x, medians {r['medians']}x, "
                f"per-round median {r['median_of_round_ratios']}x"
            )
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "attention_layout.json"
    path.write_text(json.dumps(out, indent=2) + "\n", encoding="utf-8")
    log(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
