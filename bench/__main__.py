"""``python -m bench``: every benchmark, results to bench/results/*.json (see bench/README.md)."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from .common import RESULTS_DIR, WORK_DIR, log

BENCHMARKS = ("parity", "image", "text", "e2e", "startup", "variants", "backends")


def run(names: list[str], ctx) -> None:  # noqa: ANN001 - BenchContext, imported lazily
    from . import backends, e2e, parity, speed, startup, variants

    table = {
        "parity": parity.run,
        "image": speed.image,
        "text": speed.text,
        "e2e": e2e.run,
        "startup": startup.run,
        "variants": variants.run,
        "backends": backends.run_ctx,
    }
    for name in names:
        t0 = time.perf_counter()
        table[name](ctx)
        log(f"{name} done in {time.perf_counter() - t0:.0f} s")


HIDDEN_SUFFIX = "_amx_hidden"


def rerun_amx_hidden(argv: list[str], args: argparse.Namespace) -> None:
    """The image/text speed benchmarks again in a child process with AMX hidden from oneDNN
    (the variable must be set before torch/OpenVINO load oneDNN, hence a new process)."""
    import os
    import subprocess

    from .isa import HIDE_AMX

    child = [a for a in argv if a != "--hide-amx"]
    if "--only" in child:  # replace the selection: only the speed benchmarks make sense here
        i = child.index("--only")
        j = i + 1
        while j < len(child) and not child[j].startswith("--"):
            j += 1
        del child[i:j]
    wanted = [b for b in (args.only or BENCHMARKS) if b in ("image", "text")] or ["image"]
    child += ["--only", *wanted, "--result-suffix", HIDDEN_SUFFIX]
    log(f"re-running {', '.join(wanted)} with {HIDE_AMX}")
    subprocess.run(
        [sys.executable, "-m", "bench", *child],
        env={**os.environ, **HIDE_AMX},
        check=True,
        cwd=Path(__file__).resolve().parents[1],
    )


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    ap.add_argument("--quick", action="store_true", help="smoke run: fewer images, rounds and variants")
    ap.add_argument("--only", nargs="+", choices=BENCHMARKS, help="run only these benchmarks")
    ap.add_argument("--arch", default="ViT-B-32", help="open_clip architecture (random weights)")
    ap.add_argument("--model-config", type=Path, help="open_clip config JSON for --arch (tiny test models)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--photos",
        type=int,
        default=48,
        help="how many multi-megapixel JPEGs (parity; e2e and RSS use up to 12 and 24)",
    )
    ap.add_argument("--work-dir", type=Path, default=WORK_DIR, help="generated photos, graphs, bundles")
    ap.add_argument("--out", type=Path, default=RESULTS_DIR, help="where the results JSON go")
    ap.add_argument(
        "--hide-amx",
        action="store_true",
        help="also re-run the image and text speed benchmarks in a subprocess with "
        "ONEDNN_MAX_CPU_ISA=AVX512_CORE_VNNI (a VNNI-only host for torch/OpenVINO; onnxruntime "
        "still uses AMX); results *_amx_hidden.json",
    )
    ap.add_argument("--result-suffix", default="", help=argparse.SUPPRESS)  # set by --hide-amx's child
    ap.add_argument(
        "--variants",
        nargs="+",
        default=(),
        metavar="NAME",
        help="image-graph variants for the variants benchmark (default: all; see bench/variants.py)",
    )
    ap.add_argument("--clock-ghz", type=float, help="CPU clock for the %% of peak (default: the reported clock)")
    ap.add_argument(
        "--write-readme",
        type=Path,
        metavar="MD",
        help="render the results in --out into this markdown file (no benchmark is run)",
    )
    ap.add_argument("--int8-min-cosine", type=float, help=argparse.SUPPRESS)  # export gate override (tiny test models)
    ap.add_argument("--megapixels", type=float, default=6.0, help=argparse.SUPPRESS)  # photo size (smoke tests)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.write_readme:
        from .report import write_readme

        print(write_readme(args.write_readme, args.out))
        return 0
    from .context import BenchContext

    ctx = BenchContext(
        arch=args.arch,
        seed=args.seed,
        model_config=args.model_config,
        quick=args.quick,
        work_dir=args.work_dir,
        out_dir=args.out,
        photos=min(6, args.photos) if args.quick else args.photos,
        megapixels=args.megapixels,
        result_suffix=args.result_suffix,
        clock_ghz=args.clock_ghz,
        int8_min_cosine=args.int8_min_cosine,
        variants=tuple(args.variants),
    )
    t0 = time.perf_counter()
    run(list(args.only or BENCHMARKS), ctx)
    if args.hide_amx:
        rerun_amx_hidden(argv if argv is not None else sys.argv[1:], args)
    log(f"all done in {time.perf_counter() - t0:.0f} s; results in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
