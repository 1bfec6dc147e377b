"""``python -m bench.scale``: scale-out figures, written to bench/results/scale.json.

- ``ray``: images/s of ``clip-rt ray embed`` on a local Ray cluster with 1 and 2 actors against
  the plain ``clip-rt index`` on the same folder, in the same run (ViT-B-32 bundle), plus Ray's
  own cost (start-up, memory per actor) and the largest embedding difference to the CLI.
- ``ann``: ANN candidates on a synthetic 1M x 512 CLIP-like set (bench/scale_ann.py): build
  time, memory, recall@10 against exact search, query latency.
- ``crossover``: exact search against the chosen ANN backend as the collection grows.

Each section is merged into scale.json, so they can be run one at a time (all under
``flock /work/locks/heavy`` on the shared machine).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from .common import RESULTS_DIR, WORK_DIR, log, machine_info

RESULT = RESULTS_DIR / "scale.json"


def merge_section(name: str, payload: dict[str, Any], path: Path = RESULT) -> Path:
    data: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {"benchmark": "scale"}
    payload = {
        "command": " ".join(["python", "-m", "bench.scale", *sys.argv[1:]]),
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine_info(),
        **payload,
    }
    data[name] = payload
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    return path


def run_ann(args: argparse.Namespace) -> None:
    from . import scale_ann

    work = args.work_dir / f"ann-{args.n}"
    stats = scale_ann.make_dataset(work, args.n)
    log(f"data set ready: {stats}")
    results = scale_ann.run_all(work, args.n, args.keys, args.threads)
    merge_section(
        f"ann_{args.n}", {"dataset": stats, "generator": scale_ann.__doc__.split("\n\n")[1], "candidates": results}
    )
    (work / "base.f32").unlink(missing_ok=True)  # 2 GB: regenerated (deterministically) when needed


def run_crossover(args: argparse.Namespace) -> None:
    from . import scale_crossover

    merge_section(
        "crossover", scale_crossover.run(args.work_dir / "crossover", args.sizes, exact_only=tuple(args.exact_only))
    )


def run_ray(args: argparse.Namespace) -> None:
    from . import scale_ray

    merge_section(
        "ray", scale_ray.run(args.work_dir / "ray", bundle=args.bundle, images=args.images, actors=args.actors)
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.scale", description=__doc__)
    sub = ap.add_subparsers(dest="what", required=True)
    a = sub.add_parser("ann", help="ANN candidates on a synthetic N x 512 set")
    a.add_argument("--n", type=int, default=1_000_000)
    a.add_argument("--keys", nargs="+", default=["faiss-hnsw", "faiss-ivf", "hnswlib", "usearch-i8"])
    a.add_argument("--threads", type=int, default=2)
    c = sub.add_parser("crossover", help="exact vs ANN search time as the collection grows")
    c.add_argument("--sizes", type=int, nargs="+", default=[10_000, 30_000, 100_000, 300_000])
    c.add_argument(
        "--exact-only",
        type=int,
        nargs="*",
        default=[1_000_000],
        help="sizes measured for exact search only (the ANN side at 1M: the `ann` section)",
    )
    r = sub.add_parser("ray", help="clip-rt ray embed (1 and 2 actors) against clip-rt index")
    r.add_argument("--bundle", default="/work/bundles/ViT-B-32-random")
    r.add_argument("--images", type=int, default=96)
    r.add_argument("--actors", type=int, nargs="+", default=[1, 2])
    for p in (a, c, r):
        p.add_argument("--work-dir", type=Path, default=WORK_DIR / "scale")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    {"ann": run_ann, "crossover": run_crossover, "ray": run_ray}[args.what](args)
    log(f"{args.what} done in {time.perf_counter() - t0:.0f} s; results in {RESULT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
