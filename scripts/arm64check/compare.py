"""aarch64 against x86: the same inputs through the same bundle on both, compared here.

What each comparison proves and its bound:

- ``pixels``: preprocessing (decode, resize, crop, normalise) is the same code on another
  CPU; bound 1e-6, the README's preprocessing bound (measured: identical).
- ``token_ids``: tokenisation, exact.
- ``fp32``: the exact path; aarch64 within ``FP32_BOUND`` (1e-5) of x86, max abs difference.
- ``int8`` (and fp16 when the bundle has it): ARM's int8 kernels are not x86's, so equality is
  not expected. The bar is the export's own parity gate: the aarch64 embeddings must pass the
  tolerance the export applied against torch (``manifest.parity[precision][encoder].tolerance``,
  e.g. ``min_cosine >= 0.999``), measured here against x86 fp32, which equals torch within 2e-7
  (README), and, where the gate has ``batch_max_abs_diff``, the same batch independence (inputs
  encoded alone vs in a batch, on aarch64). The drift from x86's int8 output is reported beside
  it, with the figure the export measured against torch for scale.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Optional

import numpy as np

FP32_BOUND = 1e-5
PIXEL_BOUND = 1e-6


def max_abs(a: np.ndarray, b: np.ndarray) -> float:
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {a.shape} vs {b.shape}")
    return float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64)))) if a.size else 0.0


def min_cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Smallest row-wise cosine similarity between two (N, D) arrays."""
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {a.shape} vs {b.shape}")
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    na, nb = np.linalg.norm(a64, axis=1), np.linalg.norm(b64, axis=1)
    if np.any(na == 0) or np.any(nb == 0):
        return 0.0  # an all-zero embedding (what qemu's default CPU produced) is never close
    return float(np.min(np.sum(a64 * b64, axis=1) / (na * nb)))


TOLERANCE_KEYS = ("max_abs_diff", "min_cosine", "batch_max_abs_diff")


def passes(tolerance: Mapping[str, float], diff: float, cosine: float, batch_diff: Optional[float] = None) -> bool:
    """The export's gate (validate.py's tolerance keys): every bound given must hold.
    ``batch_max_abs_diff``: an input encoded alone vs in a batch (static int8 is batch-independent)."""
    if not tolerance:
        raise ValueError("empty tolerance: nothing to check against")
    unknown = set(tolerance) - set(TOLERANCE_KEYS)
    if unknown:
        raise ValueError(f"unknown tolerance keys {sorted(unknown)}; expected some of {', '.join(TOLERANCE_KEYS)}")
    ok = True
    if "max_abs_diff" in tolerance:
        ok &= diff <= tolerance["max_abs_diff"]
    if "min_cosine" in tolerance:
        ok &= cosine >= tolerance["min_cosine"]
    if "batch_max_abs_diff" in tolerance:
        if batch_diff is None:
            raise ValueError("the gate checks batch independence, but no alone-vs-batch figure was measured")
        ok &= batch_diff <= tolerance["batch_max_abs_diff"]
    return bool(ok)


def batch_diff(arrays: Mapping[str, np.ndarray], key: str) -> Optional[float]:
    """Largest difference between the first rows encoded in batches (``key``) and the same rows
    encoded one at a time (``key + '_alone'``); None when not measured."""
    alone = arrays.get(key + "_alone")
    if alone is None:
        return None
    return max_abs(arrays[key][: len(alone)], alone)


def compare_embeddings(
    x86: Mapping[str, np.ndarray], arm: Mapping[str, np.ndarray], manifest_parity: Mapping[str, Any]
) -> dict[str, Any]:
    """Figures and verdicts for one model. *x86*/*arm*: the arrays ``guest.embed_here`` saved;
    *manifest_parity*: the bundle manifest's ``parity`` section (JSON form)."""
    out: dict[str, Any] = {"checks": {}}
    checks = out["checks"]
    if list(x86["names"]) != list(arm["names"]):
        raise ValueError("the two sides embedded different image files")
    d = max_abs(x86["pixels"], arm["pixels"])
    checks["pixels"] = {"max_abs_diff": d, "bound": PIXEL_BOUND, "passed": d <= PIXEL_BOUND}
    same = x86["token_ids"].shape == arm["token_ids"].shape and bool(np.array_equal(x86["token_ids"], arm["token_ids"]))
    checks["token_ids"] = {"identical": same, "passed": same}
    # image_<precision> and text_<precision>; image_<precision>_alone (batch rows) is not a precision
    precisions = sorted(
        {k.split("_", 1)[1] for k in x86 if k.startswith(("image_", "text_")) and not k.endswith("_alone")}
    )
    if "fp32" not in precisions:
        raise ValueError("the comparison needs the fp32 graphs (a full bundle, not a slim one)")
    for precision in precisions:
        for encoder in ("image", "text"):
            key = f"{encoder}_{precision}"
            if key not in arm:
                checks[key] = {"passed": False, "error": "missing on aarch64"}
                continue
            if precision == "fp32":
                d = max_abs(x86[key], arm[key])
                checks[key] = {
                    "max_abs_diff": d,
                    "min_cosine": min_cosine(x86[key], arm[key]),
                    "bound": FP32_BOUND,
                    "passed": d <= FP32_BOUND,
                }
                continue
            ref = x86[f"{encoder}_fp32"]
            fig = manifest_parity.get(precision, {}).get(encoder)
            if fig is None:
                checks[key] = {"passed": False, "error": f"the manifest has no {precision} {encoder} parity figure"}
                continue
            tol = fig["tolerance"]
            d_ref, c_ref = max_abs(ref, arm[key]), min_cosine(ref, arm[key])
            b_arm = batch_diff(arm, key)
            checks[key] = {
                "batch_max_abs_diff": b_arm,
                "x86_batch_max_abs_diff": batch_diff(x86, key),
                "vs_fp32": {"max_abs_diff": d_ref, "min_cosine": c_ref},
                "x86_vs_fp32": {"max_abs_diff": max_abs(ref, x86[key]), "min_cosine": min_cosine(ref, x86[key])},
                "vs_x86_same_precision": {
                    "max_abs_diff": max_abs(x86[key], arm[key]),
                    "min_cosine": min_cosine(x86[key], arm[key]),
                },
                "export_measured": {"max_abs_diff": fig["max_abs_diff"], "min_cosine": fig["min_cosine"]},
                "gate": dict(tol),
                "passed": passes(tol, d_ref, c_ref, b_arm),
            }
    out["passed"] = all(c["passed"] for c in checks.values())
    return out


def load_npz(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


def read_records(path: Path) -> dict[str, dict[str, Any]]:
    """classify's JSONL records keyed by file name."""
    out = {}
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if line.strip():
            rec = json.loads(line)
            out[Path(rec["path"]).name] = rec
    return out


def compare_records(x86: Mapping[str, Mapping[str, Any]], arm: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """Top-1 agreement and the largest probability difference between two classify runs.

    Reported, not gated: with random weights the class probabilities are nearly equal, so a
    label can flip on a difference far inside the int8 parity gate."""
    if set(x86) != set(arm):
        missing = sorted(set(x86) ^ set(arm))[:5]
        return {"passed": False, "error": f"different files classified (e.g. {missing})"}
    errors = [name for name in x86 if x86[name].get("error") or arm[name].get("error")]
    common = [n for n in x86 if n not in errors]
    same = sum(1 for n in common if x86[n]["label"] == arm[n]["label"])
    diff = max(
        (abs(x86[n]["scores"][lab] - arm[n]["scores"][lab]) for n in common for lab in x86[n]["scores"]), default=0.0
    )
    return {
        "images": len(x86),
        "errors": len(errors),
        "top1_agreement": same / len(common) if common else 0.0,
        "max_score_diff": diff,
        "passed": not errors and len(common) > 0,
    }
