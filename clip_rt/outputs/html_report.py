"""``report.html``: the batch report as a page (``classify --report DIR``; any caller with
records and a summary, such as a labelled-set evaluation, through :func:`write_html_report`).

The page needs no network: its script and style are inline (a Content-Security-Policy admits
only those, by hash, and images from the report folder), the charts are the PNG files beside it,
and the thumbnails are small JPEGs in ``DIR/thumbnails/`` (one per image, made from the image
as the run decoded it), loaded lazily. Everything per image travels in one JSON blob that the
page's script pages through: the gallery shows 48 images per class at a time, the table
50 rows per page, so 10,000 images stay quick to open.

Sections: the run and the summary, optional count tables (a confusion matrix: :class:`Matrix`),
the charts, a gallery per class (most or least confident first), and a results table that sorts
and filters. Per-image ground truth (*truths*) adds a "true class" column and right/wrong
filters.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Callable, Optional, Union
from urllib.parse import quote

from ..display import display_path
from ..errors import InputError, OutputError
from . import thumbnails as thumbs
from .files import StagedFiles, check_owned_folder, check_regular_or_absent, reason
from .html_page import asset, csp_hash, esc, fill, script_json
from .records import Record, error_reason

REPORT_HTML = "report.html"
GALLERY_PAGE = 48  # images per class and page (the script's own constant must match)
FAILED_LISTED = 20  # failed files named in the summary; the table lists them all


@dataclass(frozen=True)
class Chart:
    """An image file in the report folder, shown with its title."""

    file: str
    title: str


@dataclass(frozen=True)
class Matrix:
    """A table of counts between two lists of classes. For a confusion matrix: *rows* are the
    true classes, *columns* the predicted ones, ``counts[i][j]`` the images of class i
    predicted as j; the diagonal is highlighted when the two lists are the same."""

    title: str
    rows: Sequence[str]
    columns: Sequence[str]
    counts: Sequence[Sequence[int]]
    row_axis: str = "true class"
    column_axis: str = "predicted"
    note: str = ""

    def __post_init__(self) -> None:
        if len(self.counts) != len(self.rows) or any(len(r) != len(self.columns) for r in self.counts):
            shape = f"{len(self.counts)} rows of {sorted({len(r) for r in self.counts})} columns"
            raise InputError(
                f"matrix {self.title!r}: expected {len(self.rows)} rows of {len(self.columns)} counts "
                f"(one per row and column class); got {shape}"
            )
        for row in self.counts:
            for c in row:
                if isinstance(c, bool) or not isinstance(c, int) or c < 0:
                    raise InputError(f"matrix {self.title!r}: counts must be non-negative integers, got {c!r}")


def check_html_report(folder: str) -> None:
    """Before any inference: report.html can be replaced and the thumbnails folder is absent or
    clip-rt's own."""
    check_regular_or_absent(os.path.join(folder, REPORT_HTML), "report file")
    check_owned_folder(os.path.join(folder, thumbs.FOLDER), thumbs.MARKER, "report thumbnails folder")


def write_html_report(
    folder: Union[str, os.PathLike[str]],
    records: Sequence[Record],
    summary: Mapping[str, Any],
    charts: Sequence[Chart] = (),
    *,
    labels: Optional[Sequence[str]] = None,
    truths: Optional[Sequence[Optional[str]]] = None,
    matrices: Sequence[Matrix] = (),
    title: str = "Classification report",
    staged: Optional[StagedFiles] = None,
    thumbnail_size: int = thumbs.THUMBNAIL_SIZE,
    progress: Optional[Callable[[int], None]] = None,
) -> str:
    """Write ``report.html`` and its ``thumbnails/`` folder into *folder*; returns the page's path.

    *records*: one per image, in input order (:class:`~clip_rt.outputs.records.Record`; the
    failed ones are listed with their error). *summary*: as :func:`clip_rt.outputs.report.summarise`
    makes it. *charts*: image files already in *folder*. *labels*: the classes in order (default:
    as the records name them). *truths*: the true class of each record (None where unknown), for
    an evaluation; *matrices*: count tables such as a confusion matrix. *staged*: write into
    these staged files (committed by the caller with the rest of a report); otherwise the page
    and thumbnails replace the previous ones together, or not at all. *progress(n)*: called as
    thumbnails are made. Raises :class:`~clip_rt.errors.OutputError` when the folder cannot be
    written."""
    folder = os.fspath(folder)
    if truths is not None and len(truths) != len(records):
        raise InputError(
            f"{len(records)} records but {len(truths)} truths: expected one true class (or None) per record"
        )
    if thumbnail_size < 16:
        raise InputError(f"thumbnail_size must be at least 16 pixels, got {thumbnail_size}")
    check_html_report(folder)
    if staged is not None:
        return _write(
            folder, staged, records, summary, charts, labels, truths, matrices, title, thumbnail_size, progress
        )
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot write the report in {display_path(folder)!r}: {reason(exc)}") from None
    with StagedFiles(folder, "report") as own:
        try:
            path = _write(
                folder, own, records, summary, charts, labels, truths, matrices, title, thumbnail_size, progress
            )
        except OSError as exc:  # full disk, I/O error: the staged files are gone, the old ones kept
            raise OutputError(
                f"cannot write the report in {display_path(folder)!r}: {reason(exc)}; "
                "the files it held before were kept"
            ) from None
        own.commit()
    return path


def _write(
    folder: str,
    staged: StagedFiles,
    records: Sequence[Record],
    summary: Mapping[str, Any],
    charts: Sequence[Chart],
    labels: Optional[Sequence[str]],
    truths: Optional[Sequence[Optional[str]]],
    matrices: Sequence[Matrix],
    title: str,
    size: int,
    progress: Optional[Callable[[int], None]],
) -> str:
    thumb_dir = staged.folder_path(thumbs.FOLDER, thumbs.MARKER)
    made = thumbs.write_thumbnails(thumb_dir, [r.path if r.ok else None for r in records], size=size, progress=progress)
    data = _data(folder, records, made, labels, truths, size)
    page = render(title, summary, charts, matrices, data)
    with open(staged.path(REPORT_HTML), "w", encoding="utf-8") as f:
        f.write(page)
    return os.path.join(folder, REPORT_HTML)


# -- the page ------------------------------------------------------------------------------
def render(
    title: str, summary: Mapping[str, Any], charts: Sequence[Chart], matrices: Sequence[Matrix], data: Mapping[str, Any]
) -> str:
    """The page's HTML: the template with its style, script, data and static sections."""
    style = asset("clip_rt.outputs", "html/report.css")
    script = asset("clip_rt.outputs", "html/report.js")
    csp = (
        "default-src 'none'; img-src 'self' file: data:; "
        f"style-src {csp_hash(style)}; script-src {csp_hash(script)}; base-uri 'none'; form-action 'none'"
    )
    from ..version import __version__

    return fill(
        asset("clip_rt.outputs", "html/report.html"),
        {
            "CSP": esc(csp),
            "TITLE": esc(title),
            "VERSION": esc(__version__),
            "STYLE": style,
            "SCRIPT": script,
            "RUN": _run_html(summary.get("run")),
            "SUMMARY": _summary_html(summary),
            "MATRICES": "".join(_matrix_html(m, i) for i, m in enumerate(matrices)),
            "MATRIX_LINKS": "".join(f'<a href="#matrix-{i}">{esc(m.title)}</a>' for i, m in enumerate(matrices)),
            "CHARTS": _charts_html(charts),
            "DATA": script_json(data),
        },
    )


def _data(
    folder: str,
    records: Sequence[Record],
    made: Sequence[thumbs.Thumbnail],
    labels: Optional[Sequence[str]],
    truths: Optional[Sequence[Optional[str]]],
    size: int,
) -> dict[str, Any]:
    """Everything per image, column by column (compact at 10,000 images)."""
    names = list(labels or [])
    index = {lab: i for i, lab in enumerate(names)}

    def label_id(lab: Optional[str]) -> int:
        if lab is None:
            return -1
        if lab not in index:
            index[lab] = len(names)
            names.append(lab)
        return index[lab]

    here = os.path.abspath(folder)
    data: dict[str, Any] = {
        "thumbDir": thumbs.FOLDER,
        "thumbSize": size,
        "galleryPage": GALLERY_PAGE,
        "path": [display_path(r.path) for r in records],
        "href": [_href(here, r.path) for r in records],
        "label": [label_id(r.label) if r.ok else -1 for r in records],
        "score": [r.score if r.ok else None for r in records],
        "width": [r.width for r in records],
        "height": [r.height for r in records],
        "error": [display_path(error_reason(r.path, r.error)) if r.error is not None else None for r in records],
        "thumb": [t.file for t in made],
        "thumbError": [t.error if r.ok else None for r, t in zip(records, made)],
    }
    if truths is not None:
        data["truth"] = [label_id(t) for t in truths]
    data["labels"] = names  # last: truths may add classes
    return data


def _href(here: str, path: str) -> Optional[str]:
    """A link from the report folder to the original file, percent-encoded byte for byte (so no
    file name can become a ``javascript:`` or other URL); None for what is not a file path."""
    if path.startswith("<") and path.endswith(">"):  # "<image 3>": results given without paths
        return None
    try:
        rel = os.path.relpath(os.path.abspath(path), here)
    except ValueError:  # another drive (Windows)
        return None
    return quote(os.fsencode(rel.replace(os.sep, "/")), safe="/")


def _run_html(run: Any) -> str:
    if not isinstance(run, Mapping):
        return ""
    facts = []
    if run.get("model"):
        facts.append(("model", str(run["model"])))
    if run.get("precision"):
        facts.append(("precision", str(run["precision"])))
    if run.get("scoring"):
        facts.append(("scores", str(run["scoring"])))
    labels = run.get("labels")
    if labels:
        facts.append(("classes", str(len(labels))))
    templates = run.get("templates")
    if templates:
        facts.append(("prompt templates", str(len(templates))))
    return "".join(f'<span class="fact"><span class="key">{esc(k)}</span> {esc(v)}</span>' for k, v in facts)


def _percent(value: Optional[float]) -> str:
    if value is None:
        return "–"
    return f"{100 * value:.1f}%" if value == 0 or value >= 0.01 else f"{100 * value:.2g}%"


def _summary_html(summary: Mapping[str, Any]) -> str:
    images, classified, failed = summary.get("images", 0), summary.get("classified", 0), summary.get("failed", 0)
    parts = [
        '<div class="cards">',
        f'<div class="card"><span class="big" id="count-images">{images}</span> images</div>',
        f'<div class="card"><span class="big" id="count-classified">{classified}</span> classified</div>',
        f'<div class="card{" bad" if failed else ""}"><span class="big" id="count-failed">{failed}</span> '
        "could not be read</div>",
        "</div>",
    ]
    classes = summary.get("classes") or {}
    if classes:
        rows = []
        for name, info in classes.items():
            count = info.get("count", 0)
            share = _percent(count / classified) if classified else "–"
            rows.append(
                f'<tr><th scope="row">{esc(name)}</th><td class="num">{count}</td>'
                f'<td class="num">{share}</td><td class="num">{_percent(info.get("mean_score"))}</td></tr>'
            )
        parts.append(
            '<table class="classes"><caption>Classes (top-1)</caption><thead><tr><th scope="col">class</th>'
            '<th scope="col">images</th><th scope="col">share</th><th scope="col">mean score</th></tr>'
            f"</thead><tbody>{''.join(rows)}</tbody></table>"
        )
    pixels = summary.get("pixels") or {}
    aspect = summary.get("aspect_ratio") or {}
    if pixels.get("images"):
        w, h = pixels.get("width") or {}, pixels.get("height") or {}
        parts.append(
            '<table class="sizes"><caption>Image sizes (pixels)</caption><thead><tr><th></th>'
            '<th scope="col">min</th><th scope="col">median</th><th scope="col">max</th></tr></thead><tbody>'
            + "".join(
                f'<tr><th scope="row">{name}</th><td class="num">{_num(s.get("min"))}</td>'
                f'<td class="num">{_num(s.get("median"))}</td><td class="num">{_num(s.get("max"))}</td>'
                "</tr>"
                for name, s in (("width", w), ("height", h))
            )
            + "</tbody></table>"
        )
        shapes = [(k, aspect.get(k, 0)) for k in ("landscape", "portrait", "square")]
        types = list((aspect.get("types") or {}).items())
        parts.append(
            '<p class="shapes">'
            + ", ".join(f"{n} {esc(k)}" for k, n in shapes)
            + "; aspect ratios: "
            + ", ".join(f"{esc(k)} {n}" for k, n in types)
            + "</p>"
        )
    failures = summary.get("failed_files") or []
    if failures:
        items = "".join(
            f'<li><span class="file">{esc(display_path(str(f.get("path", ""))))}</span>: '
            f"{esc(display_path(error_reason(str(f.get('path', '')), str(f.get('error', '')))))}</li>"
            for f in failures[:FAILED_LISTED]
        )
        more = (
            f"<p>... and {len(failures) - FAILED_LISTED} more: show them with the table's “could not be read” "
            "filter.</p>"
            if len(failures) > FAILED_LISTED
            else ""
        )
        parts.append(
            f'<details class="failures" open><summary>Could not be read ({len(failures)})</summary>'
            f"<ul>{items}</ul>{more}</details>"
        )
    for note in summary.get("notes") or []:
        parts.append(f'<p class="note">{esc(note)}</p>')
    return "".join(parts)


def _num(value: Any) -> str:
    if value is None:
        return "–"
    return f"{value:g}" if isinstance(value, float) else str(value)


def _charts_html(charts: Sequence[Chart]) -> str:
    if not charts:
        return "<p>No charts.</p>"
    return "".join(
        f'<figure class="chart"><img src="{esc(quote(c.file))}" alt="{esc(c.title)}" loading="lazy">'
        f"<figcaption>{esc(c.title)}</figcaption></figure>"
        for c in charts
    )


def _matrix_html(m: Matrix, i: int) -> str:
    peak = max((c for row in m.counts for c in row), default=0)
    square = list(m.rows) == list(m.columns)
    head = "".join(f'<th scope="col">{esc(c)}</th>' for c in m.columns)
    body = []
    for r, (name, row) in enumerate(zip(m.rows, m.counts)):
        cells = []
        for c, count in enumerate(row):
            heat = 0 if not peak or not count else 1 + min(8, int(8 * count / peak))
            cls = f"heat{heat}" + (" diag" if square and r == c else "")
            cells.append(f'<td class="num {cls}">{count}</td>')
        body.append(f'<tr><th scope="row">{esc(name)}</th>{"".join(cells)}</tr>')
    note = f'<p class="note">{esc(m.note)}</p>' if m.note else ""
    return (
        f'<section id="matrix-{i}" class="matrix"><h2>{esc(m.title)}</h2>{note}<div class="scroll">'
        f'<table><thead><tr><th class="axes">{esc(m.row_axis)} \\ {esc(m.column_axis)}</th>{head}</tr></thead>'
        f"<tbody>{''.join(body)}</tbody></table></div></section>"
    )
