"""Where an export's time and memory go, phase by phase, and what the whole command costs.

    python -m bench.export_phases [--arch ViT-B-32] [--model-config FILE.json] [--label NAME]
    python -m bench.export_phases --cli [--exe PATH/TO/clip-rt] [--arch ViT-B-32] [--label NAME]

The first form runs ``export_bundle`` in this process (random weights, seed 0, int8) and
records every phase's wall time, CPU time (user + sys) and peak RSS (the peak is reset at each
phase start through /proc/self/clear_refs; Linux only), plus the int8 gate's margins (each
graph's min cosine against its gate). ``--cli`` runs ``clip-rt export`` as a child process, as a
user would, and records its wall time, CPU time and peak RSS as the kernel counts them for the
child (what ``/usr/bin/time -v`` prints), plus the phase times of its plain-line output.
Each run is stored under ``runs[<label or arch>(-cli)]`` of results/export_phases.json, with the
machine (ISA, load average); other runs in the file are kept. The machine is shared: the CPU
seconds say more than the wall time when the load average is above the core count.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

from .common import RESULTS_DIR, WORK_DIR, log, machine_info

RESULT = "export_phases"
PLAIN_LINE = re.compile(r"^(?P<title>.+?)(?:\.\.\. |: )(?:done in|failed after) (?P<time>[0-9.]+ s|\d+ min \d+ s)")


def _seconds(text: str) -> float:
    if "min" in text:
        minutes, _, rest = text.partition(" min ")
        return int(minutes) * 60 + float(rest.split()[0])
    return float(text.split()[0])


def margins(bundle: Path) -> dict[str, dict[str, float]]:
    """Per int8 graph: min cosine, the gate's bound and the margin between them (and against the
    default gate, where the export was given a looser one: the tiny test model)."""
    from clip_rt.bundle.manifest import read_manifest
    from clip_rt_export.validate import tolerance_for

    m = read_manifest(bundle)
    out = {}
    for encoder, fig in m.parity.get("int8", {}).items():
        bound = fig.tolerance.get("min_cosine")
        out[encoder] = {
            "min_cosine": round(fig.min_cosine, 6),
            "gate": bound,
            "margin": round(fig.min_cosine - bound, 6) if bound is not None else None,
            "top1_agreement": fig.top1_agreement,
            "batch_max_abs_diff": fig.batch_max_abs_diff,
        }
        default = tolerance_for("int8", encoder)["min_cosine"]
        if default != bound:
            out[encoder]["default_gate"] = default
            out[encoder]["default_margin"] = round(fig.min_cosine - default, 6)
        q = m.quantization_of("int8", encoder)
        if q is not None and q.calibration is not None:
            out[encoder]["calibration_samples"] = q.calibration.samples
    return out


def in_process(arch: str, model_config: Optional[Path], out: Path, min_cosine: Optional[float]) -> dict[str, Any]:
    from clip_rt_export import export_bundle
    from clip_rt_export.progress import ExportProgress, StreamDisplay

    progress = ExportProgress(StreamDisplay(sys.stderr), measure_memory=True)
    cpu0, t0 = os.times(), time.perf_counter()
    export_bundle(
        arch,
        pretrained="none",
        precisions=("int8",),
        seed=0,
        output=out,
        model_config=model_config,
        force=True,
        progress=progress,
        int8_min_cosine=min_cosine,
    )
    wall = time.perf_counter() - t0
    cpu1 = os.times()
    phases = [r.as_dict() for r in progress.records]
    peaks = [p["peak_rss_mib"] for p in phases if "peak_rss_mib" in p]
    return {
        "mode": "in-process export_bundle (phase peaks: VmHWM reset at each phase start)",
        "wall_s": round(wall, 1),
        "cpu_s": round((cpu1.user - cpu0.user) + (cpu1.system - cpu0.system), 1),
        "peak_rss_mib": max(peaks) if peaks else None,
        "phases": phases,
        "int8_gate": margins(out),
    }


def as_child(
    arch: str, model_config: Optional[Path], out: Path, min_cosine: Optional[float], exe: Optional[Path] = None
) -> dict[str, Any]:
    """*exe*: the ``clip-rt`` to run (default: this environment's), e.g. another checkout's, for a
    before/after pair measured the same way."""
    if exe is None:
        exe = Path(sys.executable).with_name("clip-rt")
    elif not exe.is_file():
        raise SystemExit(f"--exe {exe}: no such file")
    cmd = [
        str(exe) if exe.exists() else "clip-rt",
        "export",
        arch,
        "--pretrained",
        "none",
        "--seed",
        "0",
        "--precision",
        "int8",
        "-o",
        str(out),
        "--force",
    ]
    if model_config is not None:
        cmd += ["--model-config", str(model_config)]
    if min_cosine is not None:
        cmd += ["--int8-min-cosine", str(min_cosine)]
    log(" ".join(cmd))
    t0 = time.perf_counter()
    with tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, text=True)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        stdout = proc.stdout.read() if proc.stdout else ""
        err.seek(0)
        lines = err.read().splitlines()
    if proc.returncode != 0:
        raise SystemExit(f"clip-rt export failed ({proc.returncode}):\n" + "\n".join(lines[-20:]))
    phases = []
    for line in lines:
        found = PLAIN_LINE.match(line)
        if found:
            phases.append({"title": found["title"], "wall_s": _seconds(found["time"])})
    return {
        "mode": "clip-rt export as a child process (kernel's rusage of the child, as /usr/bin/time -v)",
        "command": " ".join(["clip-rt", *cmd[1:]]),
        "wall_s": round(wall, 1),
        "user_s": round(usage.ru_utime, 1),
        "sys_s": round(usage.ru_stime, 1),
        "cpu_s": round(usage.ru_utime + usage.ru_stime, 1),
        "peak_rss_mib": round(usage.ru_maxrss / 1024, 1),
        "stdout": stdout.strip(),
        "stderr_lines": lines,
        "phases": phases,
        "int8_gate": margins(out),
    }


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", default="ViT-B-32")
    p.add_argument(
        "--model-config", type=Path, default=None, help="an open_clip config JSON (tests/data/tiny-clip.json)"
    )
    p.add_argument("--int8-min-cosine", type=float, default=None, help="the export's gate override (the tiny model)")
    p.add_argument("--cli", action="store_true", help="run `clip-rt export` as a child process")
    p.add_argument(
        "--exe", type=Path, default=None, help="with --cli: the clip-rt to run (default: this environment's)"
    )
    p.add_argument("--label", default=None, help="key of this run in the results (default: the arch, -cli)")
    p.add_argument("--keep", action="store_true", help="keep the exported bundle in bench/work/")
    args = p.parse_args(argv)

    out = WORK_DIR / f"export-phases-{args.arch}"
    load_before = [round(x, 2) for x in os.getloadavg()]
    if args.cli:
        run = as_child(args.arch, args.model_config, out, args.int8_min_cosine, args.exe)
        run["exe"] = str(args.exe) if args.exe else "this environment's clip-rt"
    elif args.exe is not None:
        raise SystemExit("--exe is for --cli runs")
    else:
        run = in_process(args.arch, args.model_config, out, args.int8_min_cosine)
    run["load_average_before"] = load_before
    run["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    run["arch"] = args.arch
    run["model_config"] = str(args.model_config) if args.model_config else None
    run["when"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    run["cpu_count"] = os.cpu_count()
    if not args.keep:
        shutil.rmtree(out, ignore_errors=True)

    path = RESULTS_DIR / f"{RESULT}.json"
    previous = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
    runs = dict(previous.get("runs", {}))
    runs[args.label or (args.arch + ("-cli" if args.cli else ""))] = run
    payload = {
        "benchmark": RESULT,
        "command": " ".join(
            [Path(sys.executable).name, "-m", "bench.export_phases", *(argv if argv is not None else sys.argv[1:])]
        ),
        "when": run["when"],
        "machine": machine_info(),
        "runs": runs,
    }
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    log(f"{args.arch}: {run['wall_s']} s wall, {run['cpu_s']} s CPU, peak {run['peak_rss_mib']} MiB -> {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
