"""``python -m bench.install_sizes``: what ``pip install clip-rt`` and each extra put on disk.

For the runtime alone and for each extra, a fresh virtual environment (no system site-packages)
gets the project's wheel installed from this checkout, as a user's ``pip install`` would resolve
it; the size of its site-packages (file sizes summed, the empty venv's own pip subtracted) and
its largest distributions are recorded in results/install_sizes.json, which the README's install
table is generated from (``python -m bench.readme``).

It downloads what pip resolves (several GB for ``[export]``: PyPI's torch for Linux x86_64 brings
the CUDA libraries, on a CPU-only machine too) into ``--work-dir``'s pip cache, so a second run
is quick; delete the work folder afterwards to get the space back.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

from .common import BENCH_DIR, RESULTS_DIR, WORK_DIR, log

ROOT = BENCH_DIR.parent
RUNTIME = "runtime"
# Distributions that are CUDA libraries: PyPI's Linux torch wheels depend on them.
CUDA_PREFIXES = ("nvidia-", "triton", "cuda-")
LARGEST = 6  # distributions listed per install

# Run inside the measured venv: every distribution with the bytes its files take.
_SIZES_SCRIPT = r"""
import json, os, sys
from importlib import metadata
site = sys.argv[1]
out = {}
for dist in metadata.distributions(path=[site]):
    total = 0
    for f in dist.files or ():
        p = os.path.join(site, str(f))
        if os.path.isfile(p) and not os.path.islink(p):
            total += os.path.getsize(p)
    out[dist.metadata["Name"]] = {"version": dist.version, "bytes": total}
print(json.dumps(out))
"""


def extras_of(pyproject: Path) -> list[str]:
    """The optional-dependency groups pyproject.toml declares, in file order."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python < 3.11
        import tomli as tomllib  # type: ignore[no-redef]
    data = tomllib.loads(pyproject.read_text(encoding="utf-8"))
    return list(data["project"]["optional-dependencies"])


def tree_bytes(folder: Path) -> int:
    """File bytes under *folder* (symbolic links not followed)."""
    total = 0
    for root, _dirs, files in os.walk(folder):
        for name in files:
            p = os.path.join(root, name)
            if not os.path.islink(p):
                total += os.path.getsize(p)
    return total


def site_packages(venv: Path) -> Path:
    found = sorted(venv.glob("lib/python*/site-packages")) or sorted(venv.glob("Lib/site-packages"))
    if not found:
        raise SystemExit(f"{venv}: no site-packages folder")
    return found[0]


def venv_python(venv: Path) -> Path:
    return venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def build_wheel(out: Path) -> Path:
    """The project's wheel, built once from this checkout (what ``pip install .`` installs)."""
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("clip_rt-*.whl"):
        old.unlink()
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(ROOT)], check=True)
    return next(out.glob("clip_rt-*.whl"))


def measure(target: str, wheel: Path, work: Path, env: dict[str, str]) -> dict[str, Any]:
    """Install the wheel (with *target*'s extra, or none for the runtime) into a new venv."""
    venv = work / f"venv-{target}"
    if venv.exists():
        shutil.rmtree(venv)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    site = site_packages(venv)
    empty = tree_bytes(site)  # pip (and setuptools on older Pythons) that every venv has
    spec = str(wheel) if target == RUNTIME else f"{wheel}[{target}]"
    t0 = time.perf_counter()
    subprocess.run([str(venv_python(venv)), "-m", "pip", "install", "-q", spec], check=True, env=env)
    install_s = time.perf_counter() - t0
    total = tree_bytes(site) - empty
    dists = json.loads(
        subprocess.run(
            [str(venv_python(venv)), "-c", _SIZES_SCRIPT, str(site)], check=True, capture_output=True, text=True
        ).stdout
    )
    for name in ("pip", "setuptools"):  # the empty venv's own
        dists.pop(name, None)
    largest = sorted(dists.items(), key=lambda kv: -kv[1]["bytes"])[:LARGEST]
    cuda = sum(d["bytes"] for n, d in dists.items() if n.lower().startswith(CUDA_PREFIXES))
    shutil.rmtree(venv)
    return {
        "spec": "clip-rt" if target == RUNTIME else f"clip-rt[{target}]",
        "installed_mb": round(total / 1e6, 1),
        "cuda_libraries_mb": round(cuda / 1e6, 1),
        "distributions": len(dists),
        "largest": [{"name": n, "version": d["version"], "mb": round(d["bytes"] / 1e6, 1)} for n, d in largest],
        "distributions_mb": {n: round(d["bytes"] / 1e6, 1) for n, d in sorted(dists.items())},
        "versions": {
            n: d["version"]
            for n, d in dists.items()
            if n.lower() in ("torch", "onnxruntime", "onnxruntime-gpu", "openvino", "ray", "numpy")
        },
        "install_s": round(install_s, 1),
    }


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m bench.install_sizes", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--extras",
        nargs="*",
        default=None,
        metavar="EXTRA",
        help="extras to measure (default: every one in pyproject.toml); the runtime alone always",
    )
    ap.add_argument(
        "--work-dir",
        type=Path,
        default=WORK_DIR / "install_sizes",
        help="venvs (removed after each measurement), the wheel and the pip cache",
    )
    ap.add_argument("--out", type=Path, default=RESULTS_DIR)
    ap.add_argument(
        "--merge",
        action="store_true",
        help="keep the other extras of an earlier install_sizes.json in --out (the runtime is measured "
        "again: every extra's added size is over this run's runtime figure)",
    )
    args = ap.parse_args(argv)
    known = extras_of(ROOT / "pyproject.toml")
    extras = known if args.extras is None else args.extras
    unknown = [e for e in extras if e not in known]
    if unknown:
        ap.error(f"no such extra: {', '.join(unknown)}; pyproject.toml has: {', '.join(known)}")
    work = args.work_dir.resolve()
    work.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PIP_CACHE_DIR": str(work / "pip-cache"), "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    wheel = build_wheel(work / "wheel")
    results: dict[str, Any] = {}
    for target in [RUNTIME, *extras]:
        log(f"installing {target} into a fresh venv")
        results[target] = measure(target, wheel, work, env)
        log(f"{target}: {results[target]['installed_mb']} MB")
    earlier = args.out / "install_sizes.json"
    if args.merge and earlier.is_file():
        kept = json.loads(earlier.read_text(encoding="utf-8"))["installs"]
        results = {**{k: v for k, v in kept.items() if k in known and k not in results}, **results}
        results = {k: results[k] for k in [RUNTIME, *known] if k in results}  # pyproject order
    runtime_mb = results[RUNTIME]["installed_mb"]
    for target, r in results.items():
        r["added_to_runtime_mb"] = round(r["installed_mb"] - runtime_mb, 1) if target != RUNTIME else 0.0
    given = list(argv) if argv is not None else sys.argv[1:]
    result = {
        "benchmark": "install_sizes",
        "command": " ".join(["python", "-m", "bench.install_sizes", *given]),
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {
            "platform": platform.platform(),
            "system": platform.system(),
            "arch": platform.machine(),
            "python": platform.python_version(),
        },
        "what": "site-packages of a fresh venv after `pip install` of the wheel with each extra (file "
        "bytes, 1 MB = 1e6 bytes, the empty venv's pip subtracted)",
        "installs": results,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "install_sizes.json"
    path.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    log(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
