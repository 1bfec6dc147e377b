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

    table = {"parity": parity.run, "image": speed.image, "text": speed.text, "e2e": e2e.run,
             "startup": startup.run, "variants": variants.run, "backends": backends.run_ctx}
    for name in names:
        t0 = time.perf_counter()
        table[name](ctx)
        log(f"{name} done in {time.perf_counter() - t0:.0f} s")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    ap.add_argument("--quick", action="store_true", help="smoke run: fewer images, rounds and variants")
    ap.add_argument("--only", nargs="+", choices=BENCHMARKS, help="run only these benchmarks")
    ap.add_argument("--arch", default="ViT-B-32", help="open_clip architecture (random weights)")
    ap.add_argument("--model-config", type=Path, help="open_clip config JSON for --arch (tiny test models)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--photos", type=int, default=48, help="how many multi-megapixel JPEGs (parity; e2e and RSS use up to 12 and 24)")
    ap.add_argument("--work-dir", type=Path, default=WORK_DIR, help="generated photos, graphs, bundles")
    ap.add_argument("--out", type=Path, default=RESULTS_DIR, help="where the results JSON go")
    ap.add_argument("--write-readme", type=Path, metavar="MD",
                    help="render the results in --out into this markdown file (no benchmark is run)")
    args = ap.parse_args(argv)
    if args.write_readme:
        from .report import write_readme

        print(write_readme(args.write_readme, args.out))
        return 0
    from .context import BenchContext

    ctx = BenchContext(arch=args.arch, seed=args.seed, model_config=args.model_config, quick=args.quick,
                       work_dir=args.work_dir, out_dir=args.out, photos=6 if args.quick else args.photos)
    t0 = time.perf_counter()
    run(list(args.only or BENCHMARKS), ctx)
    log(f"all done in {time.perf_counter() - t0:.0f} s; results in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
