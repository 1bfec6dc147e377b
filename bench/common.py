"""Shared benchmark plumbing: machine facts, interleaved timing, result files."""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

BENCH_DIR = Path(__file__).resolve().parent
RESULTS_DIR = BENCH_DIR / "results"
WORK_DIR = BENCH_DIR / "work"  # generated photos and graphs; git-ignored


def machine_info() -> dict[str, Any]:
    """CPU model, cores, ISA flags that matter for int8/bf16, and library versions."""
    info: dict[str, Any] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
    }
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
    except OSError:
        cpuinfo = ""
    for line in cpuinfo.splitlines():
        if line.startswith("model name") and "cpu_model" not in info:
            info["cpu_model"] = line.split(":", 1)[1].strip()
        if line.startswith("flags") and "isa" not in info:
            flags = set(line.split(":", 1)[1].split())
            wanted = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_int8", "amx_bf16")
            info["isa"] = [f for f in wanted if f in flags]
    from . import isa

    # The ISA each library can use here (AMX hidden from oneDNN by ONEDNN_MAX_CPU_ISA, not from
    # onnxruntime), named in every result.
    info["isa_levels"] = isa.isa_levels(isa.cpu_flags())
    info["onednn_max_cpu_isa"] = os.environ.get("ONEDNN_MAX_CPU_ISA")
    versions = {}
    for mod in ("onnxruntime", "numpy", "torch", "open_clip", "PIL", "onnx", "openvino"):
        try:
            versions[mod] = __import__(mod).__version__
        except ImportError:
            continue
    info["versions"] = versions
    # The machine is shared: the load when the figure was written says how noisy it is.
    info["load_average_1_5_15min"] = [round(x, 2) for x in os.getloadavg()]
    return info


@dataclass
class Timer:
    """Runs candidates round-robin so shared-machine noise hits them alike; keeps every sample."""

    rounds: int
    samples: dict[str, list[float]] = field(default_factory=dict)
    # Untimed sleep before each sample: a thread pool that spins after its call (PyTorch's
    # OpenMP) otherwise takes the cores from whichever candidate comes next (seen: OpenVINO at
    # batch 1 right after torch, 66 vs 77 images/s).
    pause_s: float = 0.0
    # Round r starts at the r-th candidate (mod n), so no candidate always follows the same one:
    # in a fixed order, the same call timed twice (bench.text_queue's A/A sizes) came out 0.95-
    # 1.40x itself as the per-round median; rotated, 0.98-1.01x (bench/README.md, Method).
    rotate: bool = True

    def run(self, candidates: dict[str, Callable[[], Any]], warmup: int = 1) -> dict[str, float]:
        for fn in candidates.values():
            for _ in range(warmup):
                fn()
        items = list(candidates.items())
        for r in range(self.rounds):
            shift = r % len(items) if self.rotate and items else 0
            for name, fn in items[shift:] + items[:shift]:
                if self.pause_s:
                    time.sleep(self.pause_s)
                t0 = time.perf_counter()
                fn()
                self.samples.setdefault(name, []).append(time.perf_counter() - t0)
        return self.medians()

    def medians(self) -> dict[str, float]:
        return {k: statistics.median(v) for k, v in self.samples.items()}


def ratio(a: float, b: float) -> Optional[float]:
    return round(a / b, 3) if b else None


def target(name: str, measured: Optional[float], goal: float, higher_is_better: bool = True, unit: str = "") -> dict:
    """One target row: measured value, goal, met?, and the gap when not met."""
    sense = ">=" if higher_is_better else "<="
    if measured is None:
        return {
            "target": name,
            "goal": goal,
            "unit": unit,
            "sense": sense,
            "measured": None,
            "met": False,
            "gap": "not measured",
        }
    met = measured >= goal if higher_is_better else measured <= goal
    gap = None if met or not measured else round(goal / measured if higher_is_better else measured / goal, 2)
    return {
        "target": name,
        "goal": goal,
        "unit": unit,
        "sense": sense,
        "measured": float(f"{measured:.4g}") if abs(measured) < 1e-3 else round(measured, 4),
        "met": met,
        "gap_factor": gap,
    }


def write_result(name: str, payload: dict[str, Any], out_dir: Path = RESULTS_DIR) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    exe = Path(sys.executable)
    if exe.is_relative_to(Path.cwd()):  # a project venv (e.g. bench/work/venv-ov for OpenVINO)
        exe = exe.relative_to(Path.cwd())
    else:
        exe = Path(exe.name)
    payload = {
        "benchmark": name,
        "command": " ".join([str(exe), "-m", _module(), *map(_portable, sys.argv[1:])]),
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine_info(),
        **payload,
    }
    path = out_dir / f"{name}.json"
    path.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    return path


def command_line(module: str, argv: Optional[Sequence[str]]) -> str:
    """How to run this again: ``python -m MODULE ARGS``, with the arguments given to ``main``
    (else this process's), paths as their last component (see :func:`_portable`)."""
    args = list(argv) if argv is not None else sys.argv[1:]
    return " ".join(["python", "-m", module, *map(_portable, args)])


def _module() -> str:
    """``bench`` or ``bench.<module>``: how this run was started (``python -m ...``)."""
    main = Path(sys.argv[0]).resolve() if sys.argv and sys.argv[0] else None
    if main is not None and main.parent == BENCH_DIR and main.stem != "__main__":
        return f"bench.{main.stem}"
    return "bench"


def _portable(arg: str) -> str:
    """An absolute path argument as its last component: results name what was measured, not the
    folders of the machine it was measured on (they reach users through the decision table)."""
    return Path(arg).name if arg.startswith("/") else arg


def rewritten_copy(graph: Path, rewrite: Callable[[Any], int], folder: Path, nothing: str) -> tuple[Path, int]:
    """*graph* after *rewrite* (an in-place ModelProto rewrite that returns how many places it
    changed), saved in *folder*; exits with "<graph>: *nothing*" when it changed none."""
    import onnx

    model = onnx.load(str(graph))
    count = rewrite(model)
    if not count:
        raise SystemExit(f"{graph}: {nothing}")
    out = folder / "rewritten.onnx"
    onnx.save(model, str(out))
    return out, count


def run_arm64_guest(command: str, plan: dict[str, Any], *args: str) -> dict[str, Any]:
    """``python -m arm64check.guest COMMAND PLAN ARGS`` (scripts/arm64-check's measuring side, run
    as the check runs it on x86: a program with scripts/ on its PYTHONPATH, not imported here);
    the JSON it prints last."""
    scripts = BENCH_DIR.parent / "scripts"
    work = Path(plan["out"])
    work.mkdir(parents=True, exist_ok=True)
    plan_file = work / f"plan-{command}.json"
    plan_file.write_text(json.dumps(plan), encoding="utf-8")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (str(scripts), os.environ.get("PYTHONPATH")) if p))
    proc = subprocess.run(
        [sys.executable, "-m", "arm64check.guest", command, str(plan_file), *args],
        env=env,
        capture_output=True,
        text=True,
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode or not lines:
        raise SystemExit(f"arm64check.guest {command} failed (exit {proc.returncode}): {proc.stderr[-2000:]}")
    return json.loads(lines[-1])


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)
