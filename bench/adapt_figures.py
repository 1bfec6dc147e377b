"""``python -m bench.adapt_figures BUNDLE [--precision int8]``: the figures of docs/adapt.md.

On two labelled sets (clip_rt_fixtures.labelled_sets: a generated 4-class set of solid colours and
gradient directions, and crops of four scikit-image photographs), for 2, 4, 8 and 16 training
images per class: ``clip_rt.adapt.fit`` (5-fold cross-validation, seed 0) and then
``clip_rt.adapt.evaluate`` on a held-out set of 10 images per class (another seed): the
cross-validated and held-out accuracy of zero-shot and of the head, the chosen C and blend.
Writes results/adapt.json (``--out`` elsewhere). Accuracies do not depend on the machine's load.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path
from typing import Any, Callable

from .common import RESULTS_DIR, WORK_DIR, log, machine_info

SHOTS = (2, 4, 8, 16)
HELD_OUT = 10


def run(bundle: Path, precision: str | None, work: Path) -> dict[str, Any]:
    import clip_rt
    from clip_rt import adapt
    from clip_rt_fixtures import labelled_sets

    model = clip_rt.load(bundle, precision=precision, cache=False)
    kinds: dict[str, Callable[..., Path]] = {
        "generated": labelled_sets.generated_set,
        "photos": labelled_sets.photo_set,
    }
    out: dict[str, Any] = {}
    for kind, make in kinds.items():
        test = make(work / kind / "test", HELD_OUT, seed=100)
        rows = []
        for shots in SHOTS:
            train = make(work / kind / f"train-{shots}", shots, seed=shots)
            fitted = adapt.fit(model, train, seed=0)
            head = fitted.head
            ev = adapt.evaluate(model, test, head=head)
            runs = {r.name: r for r in ev.runs}
            row = {
                "shots": shots,
                "train_images": head.training.images,
                "folds": head.training.folds,
                "C": head.training.c,
                "blend": head.blend,
                "cv": {
                    "zero_shot": head.cv.zero_shot_accuracy,
                    "probe": head.cv.probe_accuracy,
                    "head": head.cv.head_accuracy,
                },
                "held_out": {
                    "images": ev.primary.images,
                    "zero_shot": runs["zero-shot:head"].accuracy,
                    "head": runs["head"].accuracy,
                },
                "fit_advice": head.advice(),
                "eval_advice": ev.advice(),
            }
            log(f"{kind} {shots} shots: {row['held_out']} blend {head.blend} C {head.training.c:g}")
            rows.append(row)
        out[kind] = {
            "classes": list(adapt.read_labelled_set(test).labels),
            "held_out_per_class": HELD_OUT,
            "runs": rows,
        }
    return {
        "bundle": model.manifest.name,
        "fingerprint": model.manifest.fingerprint,
        "precision": model.precision,
        "weights": model.manifest.pretrained or "not pretrained (random weights)",
        "sets": out,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("bundle", type=Path)
    ap.add_argument("--precision", default=None)
    ap.add_argument("--out", type=Path, default=RESULTS_DIR / "adapt.json")
    args = ap.parse_args()
    work = WORK_DIR / "adapt"
    shutil.rmtree(work, ignore_errors=True)
    result = {
        "command": "python -m bench.adapt_figures " + " ".join(sys.argv[1:]),
        "machine": machine_info(),
        **run(args.bundle, args.precision, work),
    }
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    log(f"wrote {args.out}")


if __name__ == "__main__":
    main()
