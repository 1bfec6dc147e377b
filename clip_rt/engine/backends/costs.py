"""What a backend costs a run beyond its steady speed, and the choice for a run of known size.

A short run (one `clip-rt classify` of a few photos) pays for starting a backend: importing its
library, creating the session (OpenVINO compiles, or loads its compiled-model cache), and the
first call (shape planning). A backend that is 2x faster per image can lose such a run by
seconds. The decision table (``choices.json``) therefore holds, per CPU class, the start-up
measured in fresh processes by ``python -m bench.startup_costs``::

    "startup": {"<isa class>": {"<backend>": {"import_s": 0.4,
                                              "image int8": {"open_s": .., "first_call_s": .., "hold_mb": ..},
                                              "text int8": {...}},
                                 "source": "startup-<isa class>"}}

and :func:`choose_for_job` ranks the pairs of (image, text) candidates by the time the run is
predicted to take: each backend's import once, each used encoder's session start and first
call, and its items at the row's steady speed (batch-1 speed for fewer images than a batch).
Where two predictions are within :data:`TIE` of each other the one that holds less memory wins;
in low-memory mode memory decides first. Nothing measured for this CPU class: None (the
caller keeps the steady-speed choice).
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Optional

TIE = 0.05  # predictions this close are a tie, decided by memory
FOLDER_BATCH = 8  # the image rows' speed is measured at batch 8 (a folder's batches)


@dataclass(frozen=True)
class StartCost:
    """One encoder's start on one backend, warm caches, in a fresh process."""

    open_s: float  # creating the session (compiling, or loading the compiled-model cache)
    first_call_s: float  # the first call's time beyond a steady one (shape planning, arena growth)
    hold_mb: float  # resident memory the session adds once it has run


@dataclass(frozen=True)
class Estimate:
    seconds: float
    hold_mb: float
    parts: dict[str, float]  # "import openvino", "image", "text": seconds each


def startup_of(table: Mapping[str, Any], isa_class: str) -> dict[str, Any]:
    block = table.get("startup", {}).get(isa_class, {})
    return block if isinstance(block, dict) else {}


def start_cost(startup: Mapping[str, Any], choice: Any) -> Optional[StartCost]:
    entry = startup.get(choice.backend, {}).get(f"{choice.encoder} {choice.mode_label}")
    if not isinstance(entry, dict):
        return None
    try:
        return StartCost(float(entry["open_s"]), float(entry["first_call_s"]), float(entry["hold_mb"]))
    except (KeyError, TypeError, ValueError):  # a malformed entry: as if not measured
        return None


def items_per_s(row: Mapping[str, Any], encoder: str, count: int) -> float:
    """The row's speed for *count* items: images fewer than a batch run as one latency call at
    their own size, for which the batch-1 speed is the closer figure where it was measured."""
    if encoder == "image" and count < FOLDER_BATCH and row.get("batch1_images_per_s"):
        return float(row["batch1_images_per_s"])
    return float(row["items_per_s"])


def estimate(pair: Mapping[str, Any], counts: Mapping[str, int], startup: Mapping[str, Any]) -> Optional[Estimate]:
    """Predicted seconds and memory of a run: *pair* maps encoder -> Candidate; *counts* the items
    each encoder gets (0: never opened). None where a used candidate has no start-up figures."""
    parts: dict[str, float] = {}
    hold = 0.0
    for encoder, cand in pair.items():
        n = counts.get(encoder, 0)
        if n <= 0:
            continue
        start = start_cost(startup, cand.choice)
        if start is None:
            return None
        backend = cand.choice.backend
        imported = float(startup.get(backend, {}).get("import_s", 0.0))
        parts.setdefault(f"import {backend}", imported)
        parts[encoder] = start.open_s + start.first_call_s + n / items_per_s(cand.row, encoder, n)
        hold += start.hold_mb
    return Estimate(sum(parts.values()), hold, parts)


def choose_for_job(
    found: Mapping[str, Sequence[Any]],
    table: Mapping[str, Any],
    isa_class: str,
    workload: Any,
    *,
    low_memory: bool = False,
) -> Optional[dict[str, Any]]:
    """Per encoder, the EncoderChoice for this run, its reason saying why in one line; None when
    this CPU class has no start-up figures or the run's size is not known (steady speed then
    decides). *found*: per encoder, the candidates of ``choose.encoder_candidates`` (fastest
    first)."""
    startup = startup_of(table, isa_class)
    if not startup:
        return None
    counts = _counts(workload, low_memory)
    if counts is None:
        return None
    # At most the fastest candidate per backend and encoder: a slower row of the same backend
    # costs the same start-up and more per item.
    options = {enc: _best_per_backend(cands) for enc, cands in found.items()}
    scored = []
    for image, text in itertools.product(options["image"], options["text"]):
        pair = {"image": image, "text": text}
        est = estimate(pair, counts, startup)
        if est is not None:
            scored.append((est, pair))
    if not scored:
        return None
    if low_memory:
        least = min(e.hold_mb for e, _ in scored)
        pool = [s for s in scored if s[0].hold_mb <= least * (1 + TIE)]
        best_est, best = min(pool, key=lambda s: s[0].seconds)
    else:
        fastest = min(e.seconds for e, _ in scored)
        pool = [s for s in scored if s[0].seconds <= fastest * (1 + TIE)]
        best_est, best = min(pool, key=lambda s: (s[0].hold_mb, s[0].seconds))
    steady = {enc: found[enc][0] for enc in found}
    steady_est = estimate(steady, counts, startup)
    out = {}
    for enc in ("image", "text"):
        cand = best[enc]
        why = _why(enc, cand, steady[enc], counts, best_est, steady_est, startup, workload, low_memory)
        out[enc] = replace(cand.choice, reason=why)
    return out


def _counts(workload: Any, low_memory: bool) -> Optional[dict[str, int]]:
    if workload is None or not workload.short:
        if low_memory:  # memory decides; counts only weigh the time among equals
            return {"image": FOLDER_BATCH, "text": FOLDER_BATCH}
        return None
    images, prompts = workload.images, workload.prompts
    if images is None and prompts is None:
        return None
    # An unknown count in a short run: as large as a folder, so that speed weighs as it should.
    return {
        "image": FOLDER_BATCH * 25 if images is None else images,
        "text": FOLDER_BATCH * 10 if prompts is None else prompts,
    }


def _best_per_backend(cands: Sequence[Any]) -> list[Any]:
    seen: dict[str, Any] = {}
    for cand in cands:
        seen.setdefault(cand.choice.backend, cand)
    return list(seen.values())


def _steady(cand: Any) -> str:
    """The candidate's measured steady speed, as its table row gives it."""
    row = cand.row
    ratios = [f"{v:g}x {k[2:]}" for k, v in row.items() if k.startswith("x ") and isinstance(v, (int, float))]
    extra = f", {ratios[0]}" if ratios else ""
    return f"{row['items_per_s']:g} {row.get('unit', 'items/s')} in steady work{extra}"


def _why(
    encoder: str,
    cand: Any,
    steady: Any,
    counts: Mapping[str, int],
    est: Estimate,
    steady_est: Optional[Estimate],
    startup: Mapping[str, Any],
    workload: Any,
    low_memory: bool,
) -> str:
    n = counts.get(encoder, 0)
    what = "images" if encoder == "image" else "prompts"
    run = workload.describe() if workload is not None and workload.short else "this run"
    if n <= 0:
        return f"not used in {run}; " + cand.choice.reason
    if low_memory:
        rival = (
            ""
            if cand.choice.backend == steady.choice.backend
            else f", less than {steady.choice.backend} {steady.choice.precision} (the fastest in steady work)"
        )
        return f"low-memory mode: holds the least memory ({est.hold_mb:.0f} MB predicted{rival}); {_steady(cand)}"
    if cand.choice.backend == steady.choice.backend and cand.choice.precision == steady.choice.precision:
        return f"fastest for {run}: about {est.seconds:.1f} s predicted; {_steady(cand)}"
    rival = f"{steady.choice.backend} {steady.choice.precision}"
    text = f"finishes {run} first: about {est.seconds:.1f} s predicted"
    if steady_est is not None:
        text += f", against {steady_est.seconds:.1f} s with {rival}"
    start_c, start_s = start_cost(startup, cand.choice), start_cost(startup, steady.choice)
    if start_c is not None and start_s is not None:
        text += (
            f", which starts in {_total_start(start_s, steady, startup):.1f} s against "
            f"{_total_start(start_c, cand, startup):.1f} s"
        )
        cross = crossover(cand, steady, start_c, start_s, encoder, startup)
        if cross is not None:
            text += f" and is faster from about {cross} {what}"
    return f"{text}; {_steady(cand)}"


def _total_start(start: StartCost, cand: Any, startup: Mapping[str, Any]) -> float:
    imported = float(startup.get(cand.choice.backend, {}).get("import_s", 0.0))
    return imported + start.open_s + start.first_call_s


def crossover(
    cheap: Any, fast: Any, start_cheap: StartCost, start_fast: StartCost, encoder: str, startup: Mapping[str, Any]
) -> Optional[int]:
    """The item count from which *fast* (more start-up, less per item) wins, or None if never."""
    extra = _total_start(start_fast, fast, startup) - _total_start(start_cheap, cheap, startup)
    per_cheap = 1.0 / items_per_s(cheap.row, encoder, FOLDER_BATCH)
    per_fast = 1.0 / items_per_s(fast.row, encoder, FOLDER_BATCH)
    if extra <= 0 or per_fast >= per_cheap:
        return None
    return max(1, int(round(extra / (per_cheap - per_fast))))
