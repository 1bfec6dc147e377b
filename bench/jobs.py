"""The job a user runs, end to end: a fresh ``clip-rt classify`` process per run, per job size and
backend, wall time and peak memory, side by side.

    python -m bench.jobs --bundle DIR [--sizes 1 13 200] [--rounds 3] [--backends auto onnxruntime openvino]

Each run is what a user types: ``clip-rt classify FOLDER -m BUNDLE -l <5 labels> -o OUT.jsonl``
(plus ``--backend B`` for a forced backend; ``auto`` is the default choice), in a new process:
import, load, compile or load from the cache, tokenise and encode the labels, decode the JPEGs
(6-MP photos from ``bench/photos.py``), encode, write. The labels are new in every run, so the
text encoder always runs; the compiled-model cache is warm (one warm-up run per case first).
Runs go in rotating order; each figure is the median over rounds (best beside it). Peak RSS is
the child's own (``wait4`` rusage; the parent is a small process). The default's choice is read
from the output's run description.

The result (``results/jobs-<isa class>.json``) says, per size, how the default compares with the
fastest backend forced by hand: ``default_vs_fastest`` (wall-time ratio of medians; the goal is
at most 1.10) and its peak RSS against the caps (one photo 350 MB, 200 photos 600 MB).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from .common import RESULTS_DIR, WORK_DIR, log, write_result

LABELS = ("cat", "dog", "car", "tree", "rocket")
RSS_CAPS_MB = {1: 350, 200: 600}
GOAL_RATIO = 1.10


def _folder(size: int) -> Path:
    from clip_rt_fixtures.photos import make_jpegs

    folder = WORK_DIR / "jobs" / f"photos-{size}"
    if not folder.is_dir() or len(list(folder.glob("*.jpg"))) != size:
        folder.mkdir(parents=True, exist_ok=True)
        for old in folder.glob("*.jpg"):
            old.unlink()
        make_jpegs(folder, size)
    return folder


def run_once(
    bundle: Path, folder: Path, backend: str, tag: str, home: str, extra_env: dict[str, str]
) -> dict[str, Any]:
    """One fresh `clip-rt classify` process: wall seconds, peak RSS (MB), what ran."""
    out_dir = tempfile.mkdtemp(prefix="clip-rt-job-")
    out = os.path.join(out_dir, "run.jsonl")
    labels = ",".join(f"{label} {tag}" for label in LABELS)  # new prompts every run
    cmd = [sys.executable, "-m", "clip_rt", "classify", str(folder), "-m", str(bundle), "-l", labels, "-o", out]
    if backend != "auto":
        cmd += ["--backend", backend]
    env = {**os.environ, "CLIP_RT_HOME": home, **extra_env}
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"classify ({backend}) failed: {err.strip()[-600:]}")
    with open(out + ".clip-rt.json", encoding="utf-8") as f:
        runtime = json.load(f).get("runtime", {})
    return {
        "wall_s": wall,
        "peak_rss_mb": usage.ru_maxrss / 1024,
        "image": runtime.get("image", {}).get("backend"),
        "text": runtime.get("text", {}).get("backend"),
    }


def measure(
    bundle: Path, sizes: list[int], backends: list[str], rounds: int, extra_env: dict[str, str]
) -> dict[str, Any]:
    home = tempfile.mkdtemp(prefix="clip-rt-jobs-home-")
    cases = [(n, b) for n in sizes for b in backends]
    folders = {n: _folder(n) for n in sizes}
    for n, b in cases:  # fills the compiled-model cache and the verified-files record
        run_once(bundle, folders[n], b, "warm-up", home, extra_env)
    samples: dict[tuple[int, str], list[dict[str, Any]]] = {c: [] for c in cases}
    for r in range(rounds):
        order = cases[r % len(cases) :] + cases[: r % len(cases)]
        for n, b in order:
            samples[(n, b)].append(run_once(bundle, folders[n], b, f"r{r}-{b}-{n}", home, extra_env))
        log(f"round {r + 1}/{rounds}: " + ", ".join(f"{n}/{b} {samples[(n, b)][-1]['wall_s']:.2f} s" for n, b in cases))
    rows = []
    for (n, b), got in samples.items():
        rows.append(
            {
                "images": n,
                "backend": b,
                "wall_s_median": round(statistics.median(s["wall_s"] for s in got), 3),
                "wall_s_best": round(min(s["wall_s"] for s in got), 3),
                "peak_rss_mb_median": round(statistics.median(s["peak_rss_mb"] for s in got), 1),
                "ran": {"image": got[-1]["image"], "text": got[-1]["text"]},
                "rounds": len(got),
            }
        )
    return {"rows": rows, "summary": summarise(rows)}


def summarise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per size: the default against the fastest forced backend, and its memory against the cap."""
    out = []
    for n in sorted({r["images"] for r in rows}):
        at = [r for r in rows if r["images"] == n]
        default = next((r for r in at if r["backend"] == "auto"), None)
        forced = [r for r in at if r["backend"] != "auto"]
        if default is None or not forced:
            continue
        fastest = min(forced, key=lambda r: r["wall_s_median"])
        ratio = default["wall_s_median"] / fastest["wall_s_median"]
        entry = {
            "images": n,
            "default_ran": default["ran"],
            "fastest_forced": fastest["backend"],
            "default_vs_fastest": round(ratio, 3),
            "goal": GOAL_RATIO,
            "met": ratio <= GOAL_RATIO,
            "default_peak_rss_mb": default["peak_rss_mb_median"],
        }
        cap = RSS_CAPS_MB.get(n)
        if cap is not None:
            entry.update({"rss_cap_mb": cap, "rss_met": default["peak_rss_mb_median"] <= cap})
        out.append(entry)
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.jobs", description=__doc__.split("\n\n")[0])
    ap.add_argument("--bundle", type=Path, required=True)
    ap.add_argument("--sizes", type=int, nargs="+", default=[1, 13, 200])
    ap.add_argument("--backends", nargs="+", default=["auto", "onnxruntime", "openvino"])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--tag", default="", help="results/jobs-<isa class>-<tag>.json")
    ap.add_argument("--out", type=Path, default=RESULTS_DIR)
    args = ap.parse_args(argv)
    if args.rounds < 1 or any(n < 1 for n in args.sizes):
        ap.error("--rounds and --sizes must be at least 1")
    from clip_rt.engine.cpu import detect_cpu

    env = {k: v for k, v in os.environ.items() if k == "ONEDNN_MAX_CPU_ISA"}
    isa = detect_cpu().isa_class
    label = (
        f"{isa}-as-vnni"
        if env.get("ONEDNN_MAX_CPU_ISA", "").upper() == "AVX512_CORE_VNNI" and isa == "x86-amx"
        else isa
    )
    result = measure(args.bundle, args.sizes, args.backends, args.rounds, env)
    name = f"jobs-{label}" + (f"-{args.tag}" if args.tag else "")
    path = write_result(
        name, {"isa_class": label, "bundle": args.bundle.name, "labels": len(LABELS), **result}, args.out
    )
    log(f"wrote {path}")
    for s in result["summary"]:
        log(
            f"{s['images']:>4} images: default ({s['default_ran']['image']}) {s['default_vs_fastest']:.2f}x "
            f"the fastest forced ({s['fastest_forced']}); peak {s['default_peak_rss_mb']:.0f} MB"
            + (f" (cap {s['rss_cap_mb']})" if "rss_cap_mb" in s else "")
        )


if __name__ == "__main__":
    main()
