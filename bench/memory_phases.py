"""Where a one-image classify's peak memory goes: RSS and the peak of each phase, in the order
`clip-rt classify` runs them (imports, tokenizer, text session, class embeddings, text released,
image session, decode + image run). Linux only (VmRSS/VmHWM; the peak is reset between phases
through /proc/self/clear_refs). Not timed; run it on an idle machine or under the heavy lock:

    python -m bench.memory_phases BUNDLE IMAGE [--low-memory] [--labels cat,dog,car]

with an empty $CLIP_RT_HOME (a warm prompt cache skips the tokenizer and the text session).
docs/devices.md#memory has the figures.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
from typing import Any


def _status() -> tuple[float, float]:
    values = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                values[key] = int(value.split()[0]) / 1024
    return values["VmRSS"], values["VmHWM"]


class Phases:
    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []

    def mark(self, name: str) -> None:
        rss, hwm = _status()
        self.rows.append({"phase": name, "rss_mib": round(rss, 1), "peak_mib": round(hwm, 1)})
        with open("/proc/self/clear_refs", "w") as f:  # "5": reset the peak (VmHWM) to the current RSS
            f.write("5")

    @property
    def peak_mib(self) -> float:
        return max(r["peak_mib"] for r in self.rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("bundle")
    p.add_argument("image")
    p.add_argument("--labels", default="cat,dog,car")
    p.add_argument("--low-memory", action="store_true", help="as clip-rt --low-memory")
    p.add_argument("--json", action="store_true", help="one JSON object instead of the table")
    args = p.parse_args(argv)
    ph = Phases()
    ph.mark("start (python)")
    import numpy  # noqa: F401
    import PIL.Image  # noqa: F401

    ph.mark("import numpy, PIL")
    import onnxruntime  # noqa: F401

    ph.mark("import onnxruntime")
    import tokenizers  # noqa: F401

    ph.mark("import tokenizers")
    import clip_rt.cli  # noqa: F401
    from clip_rt.model import load

    ph.mark("import clip_rt (cli, model)")
    model = load(args.bundle, low_memory=args.low_memory)  # the CLI's low-memory mode, as `--low-memory`
    ph.mark("load (manifest, CPU plan)")
    model.tokenizer()
    ph.mark("tokenizer")
    model.session("text")
    ph.mark("text session")
    classifier = model.classifier(args.labels.split(","))
    ph.mark("class embeddings (prompt cache)")
    model.release("text")
    gc.collect()
    ph.mark("text released")
    model.session("image")
    ph.mark("image session")
    items = list(model.iter_images([args.image]))
    if items[0].error:
        raise SystemExit(f"{args.image}: {items[0].error}")
    ph.mark("decode + image run")
    result = classifier.classify_embeddings(items[0].embedding[None, :])[0]
    ph.mark("scores")
    out = {
        "bundle": args.bundle,
        "image": args.image,
        "low_memory": args.low_memory,
        "label": result.label,
        "peak_mib": ph.peak_mib,
        "phases": ph.rows,
    }
    if args.json:
        print(json.dumps(out))
    else:
        for r in ph.rows:
            print(f"{r['phase']:34s} RSS {r['rss_mib']:7.1f} MiB   peak in the phase {r['peak_mib']:7.1f} MiB")
        print(f"peak {ph.peak_mib:.1f} MiB; label {result.label}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
