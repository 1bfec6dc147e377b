"""The `classify --report DIR` folder: results.csv, summary.json and PNG charts.

Aspect-ratio types compare the long side over the short side (so a portrait 3:4 image counts
as 4:3) to 1:1, 4:3, 3:2 and 16:9, within a relative tolerance of ASPECT_TOLERANCE (2 %:
1.333 matches 1.307..1.360; the nearest two types, 4:3 and 3:2, are 12.5 % apart, so no
ratio matches two types). Anything else is "other".
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from . import charts
from .records import Record, RecordWriter, dumps_json

ASPECT_TYPES: tuple[tuple[str, float], ...] = (("1:1", 1.0), ("4:3", 4 / 3), ("3:2", 1.5), ("16:9", 16 / 9))
ASPECT_TOLERANCE = 0.02
MAX_BARS = 40  # classes drawn in the per-class charts (summary.json has them all)


def aspect_type(width: int, height: int) -> str:
    long_side, short_side = max(width, height), min(width, height)
    if short_side <= 0:
        return "other"
    ratio = long_side / short_side
    for name, target in ASPECT_TYPES:
        if abs(ratio / target - 1) <= ASPECT_TOLERANCE:
            return name
    return "other"


def summarise(records: Sequence[Record], labels: Sequence[str],
              identity: Optional[dict[str, Any]] = None) -> dict[str, Any]:
    ok = [r for r in records if r.ok]
    per_class: dict[str, dict[str, Any]] = {}
    for lab in labels:
        scores = [r.score for r in ok if r.label == lab and r.score is not None]
        per_class[lab] = {"count": len(scores), "mean_score": float(np.mean(scores)) if scores else None}
    sized = [r for r in records if r.width and r.height]
    ratios = np.array([r.width / r.height for r in sized], dtype=np.float64)  # type: ignore[operator]
    types = {name: 0 for name, _ in ASPECT_TYPES}
    types["other"] = 0
    for r in sized:
        types[aspect_type(r.width, r.height)] += 1  # type: ignore[arg-type]
    return {
        **({"run": identity} if identity else {}),
        "images": len(records),
        "classified": len(ok),
        "failed": len(records) - len(ok),
        "classes": per_class,
        "failed_files": [{"path": r.path, "error": r.error} for r in records if not r.ok],
        "aspect_ratio": {
            "types": types,
            "tolerance": ASPECT_TOLERANCE,
            "rule": "long side / short side compared to each type; portrait counts as its landscape type",
            "width_over_height": {
                "mean": float(ratios.mean()) if len(ratios) else None,
                "median": float(np.median(ratios)) if len(ratios) else None,
                "min": float(ratios.min()) if len(ratios) else None,
                "max": float(ratios.max()) if len(ratios) else None,
            },
            "portrait": int((ratios < 1).sum()),
            "landscape": int((ratios > 1).sum()),
            "square": int((ratios == 1).sum()),
        },
    }


def write_report(folder: str, records: Sequence[Record], labels: Sequence[str], *,
                 identity: Optional[dict[str, Any]] = None, contact_sheet: int = 24) -> dict[str, Any]:
    """Write the report folder; returns the summary (also in summary.json, with the chart list)."""
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "results.csv", "w", encoding="utf-8", errors="surrogateescape", newline="") as f:
        writer = RecordWriter("csv", f, labels)
        writer.write_batch(records)
        writer.close()
    summary = summarise(records, labels, identity)

    classes = summary["classes"]
    shown = list(labels)
    note = ""
    if len(shown) > MAX_BARS:  # a bar per class would make an unreadable, gigantic image
        shown = sorted(shown, key=lambda lab: -classes[lab]["count"])[:MAX_BARS]
        note = f", the {MAX_BARS} largest of {len(labels)} classes"
    made = [
        charts.bar_chart(out / "class_distribution.png", shown, [classes[lab]["count"] for lab in shown],
                         title=f"Images per class ({summary['classified']} classified{note})", xlabel="images"),
        charts.bar_chart(out / "class_mean_score.png", shown,
                         [classes[lab]["mean_score"] or 0.0 for lab in shown],
                         title=f"Mean top-1 score per class{note}", xlabel="mean score", percent=True, xlim=1.0,
                         texts=[None if classes[lab]["count"] else "no images" for lab in shown]),
    ]
    aspect = summary["aspect_ratio"]
    made.append(charts.pie_chart(out / "aspect_types.png", list(aspect["types"]), list(aspect["types"].values()),
                                 title=f"Aspect-ratio types (long/short side, ±{ASPECT_TOLERANCE:.0%})"))
    ratios = [r.width / r.height for r in records if r.width and r.height]  # type: ignore[operator]
    made.append(charts.histogram(out / "aspect_ratio_hist.png", ratios, title="Width / height ratio",
                                 xlabel="width / height (< 1: portrait)"))
    if contact_sheet > 0:
        items = [(r.path, f"{r.label} {r.score:.0%}" if r.ok else "error") for r in records[:contact_sheet]]
        if items:
            made.append(charts.contact_sheet(out / "contact_sheet.png", items))
    summary["charts"] = [p.name for p in made]
    if charts.missing_glyph_fonts():
        summary["notes"] = ["no CJK-capable font found: such labels may render as boxes "
                            "(Debian: apt-get install fonts-noto-cjk)"]
    (out / "summary.json").write_text(dumps_json(summary, indent=2) + "\n", encoding="utf-8")
    return summary


def load_summary(folder: str) -> dict[str, Any]:
    with open(os.path.join(folder, "summary.json"), encoding="utf-8") as f:
        return json.load(f)
