"""``python -m bench.text_queue --bundle DIR``: prompts as latency calls against the same prompts
through the text backend's throughput queue (``clip_rt/engine/text_batches.py``), side by side
in one process, on the bundle's text session (default: OpenVINO, the int8 graph).

For each call size (real prompts: the 80 ImageNet templates over class names, tokenised by the
bundle's tokenizer, sorted and trimmed as the runtime does): best and median prompts/s of both
ways, the median of the per-round ratios (the machine is shared), and the largest difference
between their embeddings. Writes ``results/text_queue-<isa class>.json``, which
``python -m bench.backends --write-table`` reads: a text row whose backend, graph and compute were
measured here runs prompt batches through the queue when the queue was faster at 80 prompts:
its best sample, and the median of the per-round ratios by at least MIN_GAIN (sizes too small to
queue make the same calls both ways: an A/A control of the run's noise).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path
from typing import Any

import numpy as np

from .common import RESULTS_DIR, Timer, log, write_result

CLASS_NAMES = (
    "golden retriever",
    "tabby cat",
    "red double-decker bus",
    "espresso",
    "mountain bike",
    "lighthouse",
    "grand piano",
    "sunflower",
)
DECIDING_SIZE = 80  # the backend bench's text figure: 80 prompts
# The per-round median must clear the noise, not just 1.0: at 4-8 prompts, where both ways make
# the same calls, per-round medians reached 0.95-1.40 in a fixed round order (12 rounds of
# ~20-40 ms; 0.95-1.01 since the order rotates, bench/README.md).
MIN_GAIN = 1.1


def _prompts(n: int) -> list[str]:
    import clip_rt

    out = [t.format(c) for c in CLASS_NAMES for t in clip_rt.templates.IMAGENET]
    if n > len(out):
        raise SystemExit(f"--sizes: at most {len(out)} prompts, got {n}")
    return out[:n]


def measure(model: Any, sizes: list[int], rounds: int, pause: float) -> dict[str, Any]:
    from clip_rt.engine.text_batches import encode_token_rows, queue_pays

    session = model.session("text")
    dynamic = model.manifest.text.dynamic_sequence
    tokenizer = model.tokenizer()  # the bench times the session, not tokenising
    sizes_out: dict[str, Any] = {}
    for n in sizes:
        tokens = tokenizer.encode_batch(_prompts(n))

        def run(queued: bool, tokens: Any = tokens) -> np.ndarray:
            return encode_token_rows(session, tokens.ids, tokens.lengths, batch_size=64, dynamic=dynamic, queued=queued)

        diff = float(np.abs(run(True) - run(False)).max())
        timer = Timer(rounds, pause_s=pause)
        timer.run({"latency": lambda: run(False), "queue": lambda: run(True)})
        lat, que = timer.samples["latency"], timer.samples["queue"]
        per_round = [a / b for a, b in zip(lat, que)]
        sizes_out[str(n)] = {
            # below the queue's threshold both ways make the same latency calls: an A/A control
            # that shows this run's noise
            "same_calls": not queue_pays(n, session.queue_depth),
            "tokens_max": int(tokens.lengths.max()),
            "latency_prompts_per_s_best": round(n / min(lat), 1),
            "latency_prompts_per_s_median": round(n / statistics.median(lat), 1),
            "queue_prompts_per_s_best": round(n / min(que), 1),
            "queue_prompts_per_s_median": round(n / statistics.median(que), 1),
            "queue_x_latency_best": round(min(lat) / min(que), 3),
            "queue_x_latency_per_round_median": round(statistics.median(per_round), 3),
            "max_abs_diff": diff,
        }
        log(f"{n} prompts: {sizes_out[str(n)]}")
    return sizes_out


def _rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _queue_cost(model: Any, session: Any) -> dict[str, Any]:
    """What the queue costs before its first call: compiling the throughput model (OpenVINO
    compiles a model per performance mode) and the memory it keeps, measured around the first
    queued call after the latency model has run (OpenVINO's compiled-model cache in
    ``$CLIP_RT_HOME/cache/openvino`` makes a repeat compile cheaper)."""
    import time

    from clip_rt.engine.text_batches import encode_token_rows

    tokens = model.tokenizer().encode_batch(_prompts(DECIDING_SIZE))
    dynamic = model.manifest.text.dynamic_sequence
    encode_token_rows(session, tokens.ids, tokens.lengths, batch_size=64, dynamic=dynamic, queued=False)
    before = _rss_mib()
    t0 = time.perf_counter()
    encode_token_rows(session, tokens.ids, tokens.lengths, batch_size=64, dynamic=dynamic, queued=True)
    first = time.perf_counter() - t0
    return {
        "first_queued_call_s": round(first, 2),
        "rss_added_mib": round(_rss_mib() - before, 1),
        "note": "the first queued call compiles the throughput model (or loads it from the cache)",
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.text_queue", description=__doc__.split("\n\n")[0])
    ap.add_argument("--bundle", type=Path, required=True)
    ap.add_argument("--backend", default="openvino")
    ap.add_argument("--precision", default="int8")
    ap.add_argument("--sizes", type=int, nargs="+", default=[4, 8, 16, 32, 80, 320])
    ap.add_argument("--rounds", type=int, default=12)
    ap.add_argument("--pause", type=float, default=0.05)
    ap.add_argument("--out", type=Path, default=RESULTS_DIR)
    args = ap.parse_args(argv)
    if any(n < 1 for n in args.sizes):
        ap.error(f"--sizes: prompt counts must be at least 1, got {args.sizes}")
    if DECIDING_SIZE not in args.sizes:
        ap.error(f"--sizes must include {DECIDING_SIZE} (the size the decision table uses)")

    import clip_rt
    from clip_rt.engine.backends.choose import int8_scheme

    from .backends import _isa_label

    model = clip_rt.load(args.bundle, backend=args.backend, precision=args.precision, cache=False)
    choice = model.plan.text
    graph = choice.graph_precision
    if graph == "int8":
        graph = f"int8-{int8_scheme(model.manifest, 'text')}"
    session = model.session("text")
    label = _isa_label()
    cost = _queue_cost(model, session)
    log(f"{label}: text on {choice.summary()}, queue depth {session.queue_depth}")
    if session.queue_depth < 2:
        log("this text backend has no throughput queue (depth 1): both ways are the same calls")
    sizes = measure(model, args.sizes, args.rounds, args.pause)
    deciding = sizes[str(DECIDING_SIZE)]
    payload = {
        "command": " ".join(["python", "-m", "bench.text_queue", *(argv if argv is not None else sys.argv[1:])]),
        "env": {k: os.environ[k] for k in ("ONEDNN_MAX_CPU_ISA",) if k in os.environ},
        "isa_class": label,
        "candidate": {
            "backend": choice.backend,
            "graph": graph,
            "compute": choice.compute,
            "precision": choice.precision,
        },
        "session": session.describe(),
        "queue_depth": session.queue_depth,
        "queue_cost": cost,
        "rounds": args.rounds,
        "sizes": sizes,
        "queue_faster": (
            deciding["queue_x_latency_best"] > 1.0 and deciding["queue_x_latency_per_round_median"] >= MIN_GAIN
        ),
        "rule": (
            f"queued where, at {DECIDING_SIZE} prompts, the queue's best sample beats latency's and the "
            f"median of the per-round ratios is >= {MIN_GAIN}"
        ),
    }
    path = write_result(f"text_queue-{label}", payload, args.out)
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
