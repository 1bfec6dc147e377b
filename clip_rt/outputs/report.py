"""The batch report (`classify --report DIR`, :func:`clip_rt.write_report`): results.csv,
summary.json, PNG charts, and report.html with its thumbnails folder (html_report.py).

Aspect ratio, one definition: ``ratio = long side / short side`` (so a portrait 3:4 image is
4:3). A type (1:1, 4:3, 3:2, 16:9) matches when the ratio is within ASPECT_TOLERANCE (2 %,
relative) of it; otherwise "other". The nearest two types, 4:3 and 3:2, are 12.5 % apart, so
no ratio matches two. Orientation uses the same rule: **square** is exactly the 1:1 type
(within 2 %), otherwise **landscape** (wider than high) or **portrait**; so "square" and
"1:1" always agree.

All files (and the thumbnails folder) are written to temporary names first and renamed
together at the end: a report that fails (full disk ...) leaves the folder's previous files
as they were.
"""

from __future__ import annotations

import dataclasses
import json
import os
import stat
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Callable, Optional, Union

import numpy as np

from ..display import display_path
from ..errors import InputError, OutputError
from ..inputs.images import DECODE_ERRORS
from . import charts, html_report
from .files import StagedFiles, check_regular_or_absent, output_error, probe_folder, reason
from .fonts import INSTALL_HINT
from .records import Record, RecordWriter, dumps_json

ASPECT_TYPES: tuple[tuple[str, float], ...] = (("1:1", 1.0), ("4:3", 4 / 3), ("3:2", 1.5), ("16:9", 16 / 9))
ASPECT_TOLERANCE = 0.02
MAX_BARS = 40  # classes drawn in the per-class charts (summary.json has them all)
CHARTS = (
    "class_distribution.png",
    "class_mean_score.png",
    "aspect_types.png",
    "aspect_ratio_hist.png",
    "image_size_hist.png",
    "contact_sheet.png",
)
REPORT_FILES = ("results.csv", "summary.json", html_report.REPORT_HTML) + CHARTS
CHART_TITLES = {
    "class_distribution.png": "Images per class",
    "class_mean_score.png": "Mean top-1 score per class",
    "aspect_types.png": "Aspect-ratio types",
    "aspect_ratio_hist.png": "Width / height ratio",
    "image_size_hist.png": "Image size in pixels",
    "contact_sheet.png": "Contact sheet",
}


def aspect_type(width: int, height: int) -> str:
    long_side, short_side = max(width, height), min(width, height)
    if short_side <= 0:
        return "other"
    ratio = long_side / short_side
    for name, target in ASPECT_TYPES:
        if abs(ratio / target - 1) <= ASPECT_TOLERANCE:
            return name
    return "other"


def orientation(width: int, height: int) -> str:
    """``square`` (the 1:1 type, within the tolerance), else ``landscape`` or ``portrait``."""
    if aspect_type(width, height) == "1:1":
        return "square"
    return "landscape" if width > height else "portrait"


def _stats(values: Sequence[float]) -> dict[str, Optional[float]]:
    if not len(values):
        return {"min": None, "mean": None, "median": None, "max": None}
    arr = np.asarray(values, dtype=np.float64)
    whole = all(isinstance(v, (int, np.integer)) for v in values)  # pixels: min and max stay integers
    lo, hi = (int(arr.min()), int(arr.max())) if whole else (float(arr.min()), float(arr.max()))
    return {"min": lo, "mean": float(arr.mean()), "median": float(np.median(arr)), "max": hi}


def summarise(
    records: Sequence[Record], labels: Sequence[str], identity: Optional[dict[str, Any]] = None
) -> dict[str, Any]:
    ok = [r for r in records if r.ok]
    per_class: dict[str, dict[str, Any]] = {}
    for lab in labels:
        scores = [r.score for r in ok if r.label == lab and r.score is not None]
        per_class[lab] = {"count": len(scores), "mean_score": float(np.mean(scores)) if scores else None}
    sized = [(int(r.width), int(r.height)) for r in records if r.width and r.height]
    types = {name: 0 for name, _ in ASPECT_TYPES}
    types["other"] = 0
    orient = {"portrait": 0, "landscape": 0, "square": 0}
    for w, h in sized:
        types[aspect_type(w, h)] += 1
        orient[orientation(w, h)] += 1
    return {
        **({"run": identity} if identity else {}),
        "images": len(records),
        "classified": len(ok),
        "failed": len(records) - len(ok),
        "classes": per_class,
        "failed_files": [{"path": r.path, "error": r.error} for r in records if not r.ok],
        "pixels": {
            "images": len(sized),
            "width": _stats([w for w, _ in sized]),
            "height": _stats([h for _, h in sized]),
        },
        "aspect_ratio": {
            "types": types,
            "tolerance": ASPECT_TOLERANCE,
            "rule": "ratio = long side / short side, matched to each type within the relative tolerance "
            "(portrait counts as its landscape type); square = the 1:1 type, else landscape "
            "(width > height) or portrait",
            "width_over_height": _stats([w / h for w, h in sized]),
            **orient,
        },
    }


# -- any results in, records out ---------------------------------------------------------
def as_records(
    results: Iterable[object], paths: Optional[Sequence[Union[str, os.PathLike[str]]]] = None
) -> list[Record]:
    """:class:`Record` objects from *results*: records, JSON records (dicts, as in a JSONL
    output), or result objects with ``label``/``score``/``scores`` (``Classification`` from
    :meth:`ClipModel.classify`, with *paths* giving their images in the same order; objects
    that carry ``path`` or ``source``, ``width``, ``height``, ``error`` are used as they are).
    Sizes that are missing are read from the image headers."""
    items = list(results)
    if paths is not None and len(paths) != len(items):
        raise InputError(f"{len(items)} results but {len(paths)} paths: expected one path per result")
    out = []
    for i, item in enumerate(items):
        given = os.fspath(paths[i]) if paths is not None else None
        if isinstance(item, Record):
            rec = item
        elif isinstance(item, dict):
            rec = Record.from_json({"path": given, **item} if given is not None else item)
        elif hasattr(item, "scores"):
            path = given or getattr(item, "path", None) or getattr(item, "source", None)
            rec = Record(
                path=os.fspath(path) if isinstance(path, (str, os.PathLike)) else f"<image {i}>",
                label=getattr(item, "label", None),
                score=getattr(item, "score", None),
                scores=dict(getattr(item, "scores", None) or {}),
                width=getattr(item, "width", None),
                height=getattr(item, "height", None),
                error=getattr(item, "error", None),
            )
        else:
            raise InputError(
                f"result {i}: expected a Record, a JSON record (dict) or a classification result "
                f"with label/score/scores; got {type(item).__name__}"
            )
        if given is not None and rec.path != given:
            rec = dataclasses.replace(rec, path=given)
        if rec.ok and (rec.width is None or rec.height is None):
            size = image_size(rec.path)
            if size:
                rec = dataclasses.replace(rec, width=size[0], height=size[1])
        out.append(rec)
    return out


def image_size(path: str) -> Optional[tuple[int, int]]:
    """Width and height (after EXIF orientation) from the image header, without decoding; None
    for anything that is not a readable regular image file."""
    from PIL import Image

    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            return None  # a FIFO would block, a device would never end
        with Image.open(path) as im:
            w, h = im.size
            orientation_tag = im.getexif().get(0x0112, 1)
    except (
        Image.DecompressionBombError,
    ) + DECODE_ERRORS:  # what reading a header can raise too  # the size is then unknown, nothing more
        return None
    return (h, w) if orientation_tag in (5, 6, 7, 8) else (w, h)


def infer_labels(records: Sequence[Record]) -> list[str]:
    """Labels in order of first appearance in the records' scores (or their top-1 labels)."""
    seen: dict[str, None] = {}
    for r in records:
        for lab in list(r.scores) + ([r.label] if r.label else []):
            seen.setdefault(lab, None)
    return list(seen)


def wants_bom(labels: Sequence[str]) -> bool:
    """The report's default: a BOM when a label is not plain ASCII (CJK, accents ...), because
    spreadsheet programs read BOM-less CSV in the local code page and garble those."""
    return any(not lab.isascii() for lab in labels)


# -- writing -----------------------------------------------------------------------------
def prepare_report(folder: Union[str, Path], html: bool = True) -> None:
    """Create *folder* and check that the report can be written there, before the hours of
    inference that feed it: the folder can be written, no report file is a folder, and (*html*)
    a ``thumbnails`` folder there is one clip-rt made."""
    folder = os.fspath(folder)
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as exc:
        raise output_error(folder, exc, "report folder") from None
    if not os.path.isdir(folder):
        raise output_error(folder, NotADirectoryError(20, "not a folder"), "report folder")
    probe_folder(folder, "report folder")
    for name in REPORT_FILES:
        check_regular_or_absent(os.path.join(folder, name), "report file")
    if html:
        html_report.check_html_report(folder)


def write_report(
    results: Iterable[object],
    folder: Union[str, Path],
    labels: Optional[Sequence[str]] = None,
    *,
    paths: Optional[Sequence[Union[str, os.PathLike[str]]]] = None,
    identity: Optional[dict[str, Any]] = None,
    contact_sheet: int = 24,
    bom: Optional[bool] = None,
    html: bool = True,
    progress: Optional[Callable[[int], None]] = None,
) -> dict[str, Any]:
    """Write the batch report into *folder*: ``results.csv``, ``summary.json``, the charts and
    (*html*, the default) ``report.html`` with a ``thumbnails/`` folder beside it.

    *results*: see :func:`as_records` (classify records, JSONL dicts, or
    ``model.classify(...)`` results with *paths*). *labels*: the classes, in order (default:
    as they appear in the results' scores). *bom*: a UTF-8 BOM in results.csv (default: when a
    label is not ASCII). *contact_sheet*: thumbnails of the first N classified images (0: none).
    *progress(n)*: called as the page's thumbnails are made (one image decoded again each).
    Returns the summary (also in summary.json, with the chart list and the fonts used).
    Raises :class:`~clip_rt.errors.OutputError` when the folder cannot be written; the folder's
    previous files are then kept. Needs the [report] extra (matplotlib).
    """
    charts.require_matplotlib()
    records = as_records(results, paths)
    labels = list(labels) if labels is not None else infer_labels(records)
    folder = os.fspath(folder)
    from .files import refuse_inputs_as_outputs

    # A report file that is one of the reported images (a contact sheet classified as a photo
    # on the next run) is refused, not replaced.
    refuse_inputs_as_outputs(
        [(os.path.join(folder, name), "report file") for name in REPORT_FILES], [r.path for r in records]
    )
    prepare_report(folder, html)
    summary = summarise(records, labels, identity)
    shown, note = _shown_classes(labels, summary["classes"])
    ok = [r for r in records if r.ok]
    sheet = [(r.path, f"{r.label} {charts.percent(r.score or 0.0)}") for r in ok[:contact_sheet]]
    texts = list(shown) + [os.path.basename(p) for p, _ in sheet] + [c for _, c in sheet]
    choice = charts.warn_missing_glyphs(texts, "the labels and file names")
    try:
        _write_files(folder, summary, records, labels, shown, note, sheet, texts, choice, bom, html, progress)
    except OSError as exc:  # full disk, I/O error: the staged files are gone, the old ones kept
        raise OutputError(
            f"cannot write the report in {display_path(folder)!r}: {reason(exc)}; the files it held before were kept"
        ) from None
    return summary


def _write_files(
    folder: str,
    summary: dict[str, Any],
    records: Sequence[Record],
    labels: Sequence[str],
    shown: list[str],
    note: str,
    sheet: list[tuple[str, str]],
    texts: list[str],
    choice: Any,
    bom: Optional[bool],
    html: bool,
    progress: Optional[Callable[[int], None]],
) -> None:
    with StagedFiles(folder, "report") as staged:
        with open(staged.path("results.csv"), "w", encoding="utf-8", errors="surrogateescape", newline="") as f:
            writer = RecordWriter("csv", f, labels, bom=wants_bom(labels) if bom is None else bom)
            writer.write_batch(records)
            writer.close()
        made = _charts(staged, summary, shown, note, sheet, records, texts)
        summary["charts"] = made
        summary["fonts"] = choice.to_json()
        if choice.missing:
            summary["notes"] = [
                f"no installed font has these characters, so they show as boxes: {choice.missing} ({INSTALL_HINT})"
            ]
        if html:
            shown_charts = [html_report.Chart(name, CHART_TITLES[name]) for name in made if name != "contact_sheet.png"]
            html_report.write_html_report(
                folder, records, summary, shown_charts, labels=labels, staged=staged, progress=progress
            )
            summary["html"] = html_report.REPORT_HTML
        with open(staged.path("summary.json"), "w", encoding="utf-8") as f:
            f.write(dumps_json(summary, indent=2) + "\n")
        staged.commit()


def _shown_classes(labels: Sequence[str], classes: dict[str, Any]) -> tuple[list[str], str]:
    """The classes the per-class charts draw: all of them when they fit, else the MAX_BARS
    largest of those that have images (an empty class among the "largest" says nothing)."""
    if len(labels) <= MAX_BARS:
        return list(labels), ""
    with_images = [lab for lab in labels if classes[lab]["count"] > 0]
    shown = sorted(with_images, key=lambda lab: -classes[lab]["count"])[:MAX_BARS]
    empty = len(labels) - len(with_images)
    note = f"; {empty} have no images" if empty else ""
    return shown, f", the {len(shown)} largest of {len(labels)} classes{note}"


def _charts(
    staged: StagedFiles,
    summary: dict[str, Any],
    shown: list[str],
    note: str,
    sheet: list[tuple[str, str]],
    records: Sequence[Record],
    texts: list[str],
) -> list[str]:
    classes = summary["classes"]
    aspect = summary["aspect_ratio"]
    sized = [(r.width, r.height) for r in records if r.width and r.height]
    with charts.chart_style(texts):
        charts.bar_chart(
            staged.path("class_distribution.png"),
            shown,
            [classes[lab]["count"] for lab in shown],
            title=f"Images per class ({summary['classified']} classified{note})",
            xlabel="images",
            counts=True,
        )
        charts.bar_chart(
            staged.path("class_mean_score.png"),
            shown,
            [classes[lab]["mean_score"] or 0.0 for lab in shown],
            title=f"Mean top-1 score per class{note}",
            xlabel="mean score",
            percent_axis=True,
            texts=[None if classes[lab]["count"] else "no images" for lab in shown],
        )
        charts.pie_chart(
            staged.path("aspect_types.png"),
            list(aspect["types"]),
            list(aspect["types"].values()),
            title=f"Aspect-ratio types (long/short side, ±{ASPECT_TOLERANCE:.0%})",
        )
        charts.histogram(
            staged.path("aspect_ratio_hist.png"),
            [w / h for w, h in sized],
            title="Width / height ratio",
            xlabel="width / height (< 1: portrait)",
        )
        charts.size_histograms(
            staged.path("image_size_hist.png"),
            [int(w) for w, _ in sized],
            [int(h) for _, h in sized],
            title=f"Image size in pixels ({len(sized)} images)",
        )
        made = list(CHARTS[:5])
        if sheet:
            charts.contact_sheet(staged.path("contact_sheet.png"), sheet)
            made.append("contact_sheet.png")
    return made


def load_summary(folder: str) -> dict[str, Any]:
    with open(os.path.join(folder, "summary.json"), encoding="utf-8") as f:
        return json.load(f)
