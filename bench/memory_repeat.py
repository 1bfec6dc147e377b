"""``python -m bench.memory_repeat IMAGE BUNDLE [BUNDLE ...]``: peak RSS of the README's one-image
classify (``--low-memory --backend onnxruntime``, labels ``cat,dog,car``) on each bundle, natively,
in a fresh ``CLIP_RT_HOME``, then the same command again in that home (the labels' embeddings
come from the prompt cache and the text session is never opened).

It runs scripts/arm64-check's own classify child (``guest.CLASSIFY_CHILD`` through
``guest.Runner.child``: the process's VmHWM, the sessions it opened, its wall time), so the
figures are the check's ``one_image_lowmem`` and ``one_image_repeat`` runs without qemu, on this
interpreter's venv. Writes results/memory_repeat.json (``--out`` elsewhere); RSS does not depend
on the machine's load.
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

RUNS = ("one_image_lowmem", "one_image_repeat")


def measure(image: Path, bundle: Path, work: Path) -> dict[str, Any]:
    plan = {"venv": str(Path(sys.executable).parent.parent), "out": str(work)}
    home = work / "home"
    out: dict[str, Any] = {}
    for what in RUNS:
        args = [
            "classify",
            str(image.resolve()),
            "--labels",
            "cat,dog,car",
            "--model",
            str(bundle.resolve()),
            "-o",
            str(work / f"{what}.jsonl"),
            "--low-memory",
            "--backend",
            "onnxruntime",
        ]
        out[what] = run_arm64_guest("classify", plan, str(home), *args)
        if out[what].get("exit"):
            raise SystemExit(
                f"{bundle}: the {what} classify failed (exit {out[what]['exit']}): {out[what].get('stderr', '')}"
            )
        log(
            f"{bundle} {what}: "
            + json.dumps({k: out[what].get(k) for k in ("exit", "peak_rss_mb", "opened", "process_wall_s")})
        )
    return out


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m bench.memory_repeat", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("image", type=Path, help="the photo to classify")
    ap.add_argument("bundles", type=Path, nargs="+", help="bundles (slim int8 ones, as a device has)")
    ap.add_argument("--out", type=Path, default=RESULTS_DIR)
    args = ap.parse_args(argv)
    if not args.image.is_file():
        ap.error(f"no such image file: {args.image}")
    missing = [str(b) for b in args.bundles if not (b / "manifest.json").is_file()]
    if missing:
        ap.error(f"not a bundle (no manifest.json): {', '.join(missing)}")
    result: dict[str, Any] = {
        "benchmark": "memory_repeat",
        "command": command_line("bench.memory_repeat", argv),
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine_info(),
        "image": str(args.image),
        "bundles": {},
    }
    for bundle in args.bundles:
        with tempfile.TemporaryDirectory(prefix="clip-rt-memory-") as tmp:
            result["bundles"][str(bundle)] = measure(args.image, bundle, Path(tmp))
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "memory_repeat.json"
    path.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    log(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
