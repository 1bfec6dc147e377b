"""``python -m bench.memory_runs --image IMG --folder DIR BUNDLE [BUNDLE ...]``: scripts/arm64-check's
memory step natively, on this interpreter's venv: per bundle, the README's one-image classify
(default, ``--low-memory``, then ``--low-memory`` again with the labels in the prompt cache) and the
folder (default and ``--low-memory``), each in a fresh process, peak RSS (VmHWM) and the sessions
it opened.

It is the check's own code (``guest.Runner.memory``), so the figures are the check's x86 column
without building a root file system or running qemu: run it in a runtime-only venv (no OpenVINO,
as on a device: ``pip install clip_rt-*.whl``) to measure what a device's classify holds. Writes
results/memory_runs.json (``--out`` elsewhere); RSS does not depend on the machine's load.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

from .common import RESULTS_DIR, command_line, log, machine_info, run_arm64_guest


def measure(bundles: list[Path], image: Path, folder: Path, work: Path) -> dict[str, Any]:
    plan = {
        "venv": str(Path(sys.executable).parent.parent),
        "out": str(work),
        "models": [{"name": b.name, "slim": str(b.resolve())} for b in bundles],
        "classify": {
            "labels": "cat,dog,car",
            "one_image": str(image.resolve()),
            "folder": str(folder.resolve()),
            "lowmem": True,
        },
    }
    res = run_arm64_guest("memory", plan)
    if not res.get("ok", True):
        raise SystemExit(f"a classify run failed: {res.get('error')}")
    keep = ("exit", "peak_rss_mb", "opened", "process_wall_s", "args")
    return {
        "imports": res["imports"],
        "bundles": {
            name: {what: {k: run.get(k) for k in keep} for what, run in runs.items()}
            for name, runs in res["models"].items()
        },
    }


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m bench.memory_runs", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("bundles", type=Path, nargs="+", help="bundles (slim int8 ones, as a device has)")
    ap.add_argument("--image", type=Path, required=True, help="the photo of the one-image runs")
    ap.add_argument("--folder", type=Path, required=True, help="the folder of the folder runs")
    ap.add_argument("--out", type=Path, default=RESULTS_DIR)
    ap.add_argument("--name", default="memory_runs.json", help="file name under --out")
    args = ap.parse_args(argv)
    if not args.image.is_file():
        ap.error(f"no such image file: {args.image}")
    if not args.folder.is_dir():
        ap.error(f"no such folder: {args.folder}")
    missing = [str(b) for b in args.bundles if not (b / "manifest.json").is_file()]
    if missing:
        ap.error(f"not a bundle (no manifest.json): {', '.join(missing)}")
    names = [b.name for b in args.bundles]
    if len(set(names)) != len(names):
        ap.error(f"bundles are recorded by folder name, and these repeat one: {', '.join(map(str, args.bundles))}")
    import importlib.util

    result: dict[str, Any] = {
        "benchmark": "memory_runs",
        "command": command_line("bench.memory_runs", argv),
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine_info(),
        "python": sys.executable,
        "openvino_installed": importlib.util.find_spec("openvino") is not None,
        "image": str(args.image),
        "folder": str(args.folder),
        "images_in_folder": sum(1 for p in args.folder.iterdir() if p.is_file()),
    }
    with tempfile.TemporaryDirectory(prefix="clip-rt-memory-") as tmp:
        result.update(measure(args.bundles, args.image, args.folder, Path(tmp)))
    for name, runs in result["bundles"].items():
        log(f"{name}: " + ", ".join(f"{what} {run['peak_rss_mb']:.1f} MiB" for what, run in runs.items()))
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / args.name
    path.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    log(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
