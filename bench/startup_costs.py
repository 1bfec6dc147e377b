"""What each backend costs to start and to hold, per encoder, in fresh processes: the figures the
runtime's job-aware choice predicts a run's time with (``clip_rt/engine/backends/costs.py``).

    python -m bench.startup_costs --bundle DIR [--rounds 5]

For every mode the decision table offers on this CPU class and the bundle has (backend and
precision, as ``clip_rt.load(backend=..., precision=...)`` chooses them), and each encoder, a
child process times: importing the backend's library (beyond clip_rt, onnxruntime and numpy,
which every run imports), creating the session (``model.prepare``: files, contract, compile or
compiled-model cache), the first call (one image of pixels; 5 new prompts) and a second, steady
one; and the resident memory the encoder added once it ran. One warm-up child per mode fills the
caches first; the rounds then run in rotating order and each figure is the median (the best
beside it). A cold start (empty compiled-model cache) is timed once per mode too, and reported,
not used: a machine pays it once.

Writes ``results/startup-<isa class>.json``; ``python -m bench.backends --write-table`` folds it
into the decision table's ``startup`` section.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from .common import RESULTS_DIR, log, write_result

_CHILD = r"""
import json, sys, time
def rss():
    status = dict(line.split(":", 1) for line in open("/proc/self/status") if ":" in line)
    return int(status["VmRSS"].split()[0]) / 1024
bundle, backend, precision, encoder, tag = sys.argv[1:6]
import numpy, onnxruntime, clip_rt
base_mb = rss()
t0 = time.perf_counter()
if backend == "openvino":
    import openvino
import_s = time.perf_counter() - t0
model = clip_rt.load(bundle, backend=backend, precision=precision, cache=False)
t0 = time.perf_counter()
model.prepare([encoder])
open_s = time.perf_counter() - t0
h, w = model.manifest.image.size
if encoder == "image":
    x = numpy.zeros((1, 3, h, w), numpy.float32)
    call = lambda: model.encode_pixels(x)
else:
    words = [f"{tag} photo {i}" for i in range(5)]
    call = lambda: model.encode_text([f"a {w}." for w in words])
t0 = time.perf_counter(); call(); first_s = time.perf_counter() - t0
words = [f"{tag} picture {i}" for i in range(5)]
t0 = time.perf_counter(); call(); steady_s = time.perf_counter() - t0
choice = model.plan.encoder(encoder)
print(json.dumps({"import_s": import_s, "open_s": open_s, "first_s": first_s, "steady_s": steady_s,
                  "hold_mb": rss() - base_mb, "mode": choice.mode_label, "backend": choice.backend,
                  "compute": choice.compute}))
"""


def _child(bundle: Path, backend: str, precision: str, encoder: str, home: str, tag: str) -> dict[str, Any]:
    env = {**os.environ, "CLIP_RT_HOME": home}
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, str(bundle), backend, precision, encoder, tag],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    if out.returncode != 0:
        raise RuntimeError(f"{backend} {precision} {encoder}: child failed: {out.stderr.strip()[-800:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def modes(bundle: Path) -> list[tuple[str, str]]:
    """(backend, precision) pairs the decision table offers on this CPU class for this bundle."""
    from clip_rt.bundle.manifest import read_manifest
    from clip_rt.engine.backends.choose import installed_backends, load_table
    from clip_rt.engine.cpu import detect_cpu

    manifest = read_manifest(bundle)
    isa = detect_cpu().isa_class
    installed = installed_backends()
    found: list[tuple[str, str]] = []
    for row in load_table().get("rows", []):
        if row.get("isa") != isa or row["backend"] not in installed:
            continue
        graph = "int8" if row["graph"].startswith("int8") else row["graph"]
        precision = "bf16" if graph == "fp32" and row.get("compute") == "bf16" else graph
        if graph in manifest.graphs and (row["backend"], precision) not in found:
            found.append((row["backend"], precision))
    for precision in ("int8", "fp32"):  # onnxruntime's fallback choice, measured or not
        if precision in manifest.graphs and ("onnxruntime", precision) not in found:
            found.append(("onnxruntime", precision))
    return found


def measure(bundle: Path, rounds: int, only: list[tuple[str, str]]) -> dict[str, Any]:
    warm_home = tempfile.mkdtemp(prefix="clip-rt-startup-")
    cases = [(b, p, e) for b, p in only for e in ("image", "text")]
    cold: dict[str, Any] = {}
    for b, p, e in cases:
        fresh = tempfile.mkdtemp(prefix="clip-rt-cold-")
        cold[f"{b} {p} {e}"] = _child(bundle, b, p, e, fresh, "cold")  # empty caches: what a first run pays
        _child(bundle, b, p, e, warm_home, "warm-up")
        log(f"cold {b} {p} {e}: {cold[f'{b} {p} {e}']}")
    samples: dict[str, list[dict[str, Any]]] = {f"{b} {p} {e}": [] for b, p, e in cases}
    for r in range(rounds):
        order = cases[r % len(cases) :] + cases[: r % len(cases)]  # rotating order
        for b, p, e in order:
            samples[f"{b} {p} {e}"].append(_child(bundle, b, p, e, warm_home, f"round{r}"))
        log(f"round {r + 1}/{rounds} done")
    rows = []
    for (b, p, e), key in zip(cases, samples):
        got = samples[key]
        first_extra = [max(0.0, s["first_s"] - s["steady_s"]) for s in got]

        def med(name: str, values: list[float] | None = None) -> float:
            return round(statistics.median(values if values is not None else [s[name] for s in got]), 4)

        rows.append(
            {
                "backend": b,
                "precision": p,
                "encoder": e,
                "mode": got[0]["mode"],
                "compute": got[0]["compute"],
                "import_s": med("import_s"),
                "open_s": med("open_s"),
                "first_call_s": med("", first_extra),
                "steady_call_s": med("steady_s"),
                "hold_mb": round(statistics.median(s["hold_mb"] for s in got), 1),
                "best": {"open_s": round(min(s["open_s"] for s in got), 4), "first_call_s": round(min(first_extra), 4)},
                "cold_open_s": round(cold[key]["open_s"], 4),
                "cold_first_s": round(cold[key]["first_s"], 4),
                "rounds": len(got),
            }
        )
    return {"rows": rows}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.startup_costs", description=__doc__.split("\n\n")[0])
    ap.add_argument("--bundle", type=Path, required=True, help="a bundle with the graphs to measure (fp32, int8)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--only", nargs="+", metavar="BACKEND:PRECISION", help="e.g. openvino:int8 onnxruntime:int8")
    ap.add_argument("--out", type=Path, default=RESULTS_DIR)
    args = ap.parse_args(argv)
    if args.rounds < 1:
        ap.error("--rounds must be at least 1")
    from clip_rt.engine.cpu import detect_cpu

    chosen = [tuple(x.split(":", 1)) for x in args.only] if args.only else modes(args.bundle)
    result = measure(args.bundle, args.rounds, chosen)  # type: ignore[arg-type]
    isa = detect_cpu().isa_class
    path = write_result(f"startup-{isa}", {"isa_class": isa, "bundle": args.bundle.name, **result}, args.out)
    log(f"wrote {path}")
    for row in result["rows"]:
        log(
            f"{row['backend']:>12} {row['mode']:<10} {row['encoder']:<5} import {row['import_s']:.2f} s, "
            f"open {row['open_s']:.2f} s, first call +{row['first_call_s']:.2f} s, hold {row['hold_mb']:.0f} MB "
            f"(cold open {row['cold_open_s']:.2f} s)"
        )


if __name__ == "__main__":
    main()
