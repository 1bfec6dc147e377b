"""Cold start (fresh process: import, load, first result) and peak RSS, int8 bundle."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from clip_rt_fixtures.photos import LABELS

from .common import log, target, write_result
from .context import BenchContext

_CHILD = r"""
import json, sys, time
t0 = time.perf_counter()
import clip_rt
bundle, precision, batch, paths = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4:]
model = clip_rt.load(bundle, precision=precision, threads=2, draft=True)
t_load = time.perf_counter()
labels = %r
results = model.classify(paths, labels, batch_size=batch)
t_end = time.perf_counter()
# VmHWM, not getrusage's ru_maxrss: Linux carries ru_maxrss over execve, so a child of a
# large parent (this benchmark holds torch models) would report the parent's peak.
status = dict(line.split(":", 1) for line in open("/proc/self/status") if ":" in line)
print(json.dumps({"import_load_s": t_load - t0, "in_process_s": t_end - t0, "first_label": results[0].label,
                  "maxrss_mb": int(status["VmHWM"].split()[0]) / 1024,
                  "rss_end_mb": int(status["VmRSS"].split()[0]) / 1024}))
""" % (list(LABELS),)


# A folder the way users classify one: `clip-rt classify` (streaming, records written as they
# come), run in-process so that VmHWM is this process's own peak.
_CLI_CHILD = r"""
import json, sys, time, tempfile, os
t0 = time.perf_counter()
from clip_rt.cli import main
bundle, precision, batch, paths = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
out = os.path.join(tempfile.mkdtemp(), "run.jsonl")
try:
    main(["classify", *paths, "-l", %r, "-m", bundle, "--precision", precision, "--batch-size", batch,
          "--threads", "2", "--draft", "-o", out], standalone_mode=False)
except SystemExit as exc:
    if exc.code:
        raise
t_end = time.perf_counter()
first = json.loads(open(out).readline())
status = dict(line.split(":", 1) for line in open("/proc/self/status") if ":" in line)
print(json.dumps({"import_load_s": 0.0, "in_process_s": t_end - t0, "first_label": first["label"],
                  "maxrss_mb": int(status["VmHWM"].split()[0]) / 1024,
                  "rss_end_mb": int(status["VmRSS"].split()[0]) / 1024}))
""" % (",".join(LABELS),)


def _child(
    bundle: Path, precision: str, paths: list[Path], home: str, batch: int = 32, script: str = _CHILD
) -> dict[str, Any]:
    env = dict(os.environ, CLIP_RT_HOME=home, PYTHONDONTWRITEBYTECODE="1")
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", script, str(bundle), precision, str(batch), *map(str, paths)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"cold-start child failed ({proc.returncode}): {proc.stderr[-2000:]}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    out["process_wall_s"] = wall
    return {k: round(v, 3) if isinstance(v, float) else v for k, v in out.items()}


def run(ctx: BenchContext) -> dict[str, Any]:
    photos = ctx.photo_paths[:24]
    repeats = 1 if ctx.quick else 3
    rows: dict[str, list[dict[str, Any]]] = {}
    folder: dict[str, dict[str, Any]] = {}
    for label, bundle in (("int8", ctx.bundle),):
        first, repeat = f"{label}: first run (empty CLIP_RT_HOME)", f"{label}: repeat run (warm store)"
        for _ in range(repeats):
            with tempfile.TemporaryDirectory(prefix="clip-rt-bench-home-") as home:
                log(f"cold start {label}: fresh process, fresh home, then again with the same home")
                rows.setdefault(first, []).append(_child(bundle, "int8", photos[:1], home))
                rows.setdefault(repeat, []).append(_child(bundle, "int8", photos[:1], home))
        # The API's classify() (everything in one call) at batch 32 and the default 8, and the
        # `clip-rt classify` command (streaming; frees the text session once the labels are embedded).
        for batch in (32, 8):
            with tempfile.TemporaryDirectory(prefix="clip-rt-bench-home-") as home:
                log(f"peak RSS {label}: classify of {len(photos)} JPEGs, batch {batch}")
                folder[f"{label}, batch {batch}"] = {
                    "images": len(photos),
                    "batch_size": batch,
                    **_child(bundle, "int8", photos, home, batch),
                }
        with tempfile.TemporaryDirectory(prefix="clip-rt-bench-home-") as home:
            log(f"peak RSS {label}: clip-rt classify of {len(photos)} JPEGs, batch 8")
            folder[f"{label}, clip-rt classify, batch 8"] = {
                "images": len(photos),
                "batch_size": 8,
                **_child(bundle, "int8", photos, home, 8, _CLI_CHILD),
            }

    def med(rs: list[dict[str, Any]], key: str) -> float:
        vals = sorted(r[key] for r in rs)
        return vals[len(vals) // 2]

    summary = {
        name: {k: med(rs, k) for k in ("process_wall_s", "in_process_s", "import_load_s", "maxrss_mb")}
        for name, rs in rows.items()
    }
    first = summary["int8: first run (empty CLIP_RT_HOME)"]
    targets = [
        target(
            "cold start, one image, int8 (fresh process, empty home)",
            first["process_wall_s"],
            2.0,
            higher_is_better=False,
            unit="s",
        ),
        target(
            "peak RSS, int8, `clip-rt classify` of a folder, batch 8 (default)",
            folder["int8, clip-rt classify, batch 8"]["maxrss_mb"],
            400.0,
            higher_is_better=False,
            unit="MB",
        ),
        target(
            "peak RSS, int8, API classify() of a folder, batch 8 (default)",
            folder["int8, batch 8"]["maxrss_mb"],
            400.0,
            higher_is_better=False,
            unit="MB",
        ),
        target(
            "peak RSS, int8, API classify() of a folder, batch 32",
            folder["int8, batch 32"]["maxrss_mb"],
            400.0,
            higher_is_better=False,
            unit="MB",
        ),
    ]
    result = {**ctx.result_meta(), "runs": rows, "median": summary, "folder": folder, "targets": targets}
    write_result("startup", result, ctx.out_dir)
    return result
