"""``python -m bench.embedding_gather TEXT_INT8.onnx [...]``: an NNCF int8 text graph as NNCF
wrote it (its token lookup dequantises the whole embedding table) against the same graph with
the lookup gathering int8 rows first (clip_rt_export/embedding_gather.py, what the export now
writes).

For each graph: the largest output difference on onnxruntime and OpenVINO (0 = bit for bit);
memory, each variant in a fresh process per backend (RSS after the session is created, after
its first call with 3 prompts of 77 tokens, the process's peak); speed side by side in one
process, round-robin with the order rotated each round (onnxruntime with 1 and 8 prompts,
OpenVINO latency mode with 8), best samples, medians and the median of the per-round ratios.
Writes results/embedding_gather.json. Give it a graph exported before this rewrite (a graph
already rewritten has no lookup left to rewrite and is refused).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from .common import RESULTS_DIR, Timer, command_line, log, machine_info, rewritten_copy

VOCAB = 49408
CONTEXT = 77


def _ids(batch: int) -> np.ndarray:
    return np.random.default_rng(0).integers(1, VOCAB, (batch, CONTEXT)).astype(np.int64)


def _status() -> dict[str, float]:
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = round(int(value.split()[0]) / 1024, 1)
    return fields


def _runner(backend: str, path: Path, threads: int) -> Callable[[np.ndarray], np.ndarray]:
    if backend == "onnxruntime":
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        return lambda x: session.run(None, {name: x})[0]
    import openvino as ov

    compiled = ov.Core().compile_model(
        str(path),
        "CPU",
        {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": threads},
    )
    request = compiled.create_infer_request()
    return lambda x: request.infer({0: x})[0].copy()


def child(backend: str, path: Path, threads: int) -> dict[str, Any]:
    """Run in a fresh process: what one session of *path* holds before and after a first call."""
    if backend == "openvino":
        import openvino  # noqa: F401 - the import's own memory is not the session's
    else:
        import onnxruntime  # noqa: F401
    start = _status()
    run = _runner(backend, path, threads)
    created = _status()
    run(_ids(3))
    called = _status()
    return {
        "rss_mib_imported": start["VmRSS"],
        "rss_mib_session": created["VmRSS"],
        "rss_mib_after_first_call": called["VmRSS"],
        "peak_mib": called["VmHWM"],
        "first_call_adds_mib": round(called["VmRSS"] - created["VmRSS"], 1),
    }


def _memory(backend: str, path: Path, threads: int) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-m", "bench.embedding_gather", "--child", backend, str(path), "--threads", str(threads)],
        capture_output=True,
        text=True,
    )
    if out.returncode:
        raise SystemExit(f"the {backend} memory child for {path} failed (exit {out.returncode}): {out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def compare(graph: Path, rounds: int, threads: int, backends: list[str]) -> dict[str, Any]:
    from clip_rt_export.embedding_gather import gather_before_dequantize

    with tempfile.TemporaryDirectory() as tmp:
        rewritten, count = rewritten_copy(
            graph,
            gather_before_dequantize,
            Path(tmp),
            "no int8 embedding lookup to rewrite (already rewritten, or not an NNCF graph)",
        )
        paths = {"as NNCF wrote it": graph, "int8 rows gathered first": rewritten}
        result: dict[str, Any] = {"graph": str(graph), "lookups_rewritten": count}
        for backend in backends:
            runs = {tag: _runner(backend, p, threads) for tag, p in paths.items()}
            a, b = (np.asarray(r(_ids(5)), dtype=np.float64) for r in runs.values())
            result[f"{backend}_max_abs_diff"] = float(np.abs(a - b).max())
            del runs
            result[f"{backend}_memory"] = {tag: _memory(backend, p, threads) for tag, p in paths.items()}
            log(
                f"{graph.name} {backend}: max abs diff {result[f'{backend}_max_abs_diff']}, first call adds "
                + ", ".join(f"{tag} {m['first_call_adds_mib']} MiB" for tag, m in result[f"{backend}_memory"].items())
            )
        fns: dict[str, Callable[[], Any]] = {}
        sizes = {"onnxruntime": (1, 8), "openvino": (8,)}
        for backend in backends:
            for tag, p in paths.items():
                run = _runner(backend, p, threads)
                for batch in sizes[backend]:
                    fns[f"{backend} {batch} prompts [{tag}]"] = lambda r=run, x=_ids(batch): r(x)
        log(f"{graph.name}: {len(fns)} candidates x {rounds} rounds")
        timer = Timer(rounds, pause_s=0.05)
        timer.run(fns)
    speed = {
        name: {"ms_best": round(min(s) * 1e3, 2), "ms_median": round(statistics.median(s) * 1e3, 2)}
        for name, s in timer.samples.items()
    }
    ratios = {}
    for name in fns:
        if name.endswith("[as NNCF wrote it]"):
            base = name[: -len("[as NNCF wrote it]")]
            new = base + "[int8 rows gathered first]"
            per_round = [a / b for a, b in zip(timer.samples[name], timer.samples[new])]  # time old / time new
            ratios[base.strip()] = {
                "best": round(min(timer.samples[name]) / min(timer.samples[new]), 3),
                "median_of_round_ratios": round(statistics.median(per_round), 3),
            }
            log(
                f"{graph.name} {base.strip()}: rewritten x NNCF's, best {ratios[base.strip()]['best']}x, "
                f"per round {ratios[base.strip()]['median_of_round_ratios']}x"
            )
    result.update({"speed": speed, "speed_rewritten_vs_nncf": ratios})
    return result


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m bench.embedding_gather",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("graphs", type=Path, nargs="*", help="NNCF int8 text graphs as NNCF wrote them")
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--backends", nargs="+", default=["onnxruntime", "openvino"], choices=["onnxruntime", "openvino"])
    ap.add_argument("--child", nargs=2, metavar=("BACKEND", "GRAPH"), help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, default=RESULTS_DIR)
    args = ap.parse_args(argv)
    if args.rounds < 1 or args.threads < 1:
        ap.error(f"--rounds and --threads must be at least 1, got {args.rounds} and {args.threads}")
    if args.child:
        print(json.dumps(child(args.child[0], Path(args.child[1]), args.threads)))
        return 0
    if not args.graphs:
        ap.error("give at least one NNCF int8 text graph")
    missing = [str(g) for g in args.graphs if not g.is_file()]
    if missing:
        ap.error(f"no such graph file: {', '.join(missing)}")
    out: dict[str, Any] = {
        "benchmark": "embedding_gather",
        "command": command_line("bench.embedding_gather", argv),
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine_info(),
        "rounds": args.rounds,
        "threads": args.threads,
    }
    out["graphs"] = {str(g): compare(g, args.rounds, args.threads, args.backends) for g in args.graphs}
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "embedding_gather.json"
    path.write_text(json.dumps(out, indent=2) + "\n", encoding="utf-8")
    log(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
