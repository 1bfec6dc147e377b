"""The evaluation report (``clip-rt eval --report DIR``): ``summary.json`` (what ``--json``
writes, plus the chart list and fonts) and PNG charts: the accuracy of every run, a confusion
matrix per run, and per-class recall and precision with the runs side by side.

:func:`write_eval_report` is the one function that writes the folder; every file is staged and
the set replaces the folder's previous files together (a failure keeps them). The charts
follow ``clip_rt.outputs.charts``: matplotlib ``Figure`` objects (no pyplot state), user text
drawn literally in fonts that have its characters. Needs the [report] extra.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from typing import Any, Optional, Union

import numpy as np

from ..display import display_path
from ..errors import OutputError
from ..outputs import charts
from ..outputs.files import StagedFiles, check_regular_or_absent, output_error, probe_folder, reason
from ..outputs.records import dumps_json
from .evaluation import Evaluation
from .metrics import Scores

MAX_CLASSES_SHOWN = 30  # classes drawn in a chart (summary.json has them all): the largest ones
RUN_COLOURS = ("#3b75af", "#ef8636", "#519e3e", "#c53a32", "#8d69b8", "#84584e", "#d57dbe", "#7f7f7f")
FIXED_FILES = ("summary.json", "accuracy.png", "per_class_recall.png", "per_class_precision.png")


def confusion_file(run: str) -> str:
    return "confusion_" + re.sub(r"[^A-Za-z0-9_-]+", "_", run) + ".png"


def prepare_eval_report(folder: Union[str, os.PathLike[str]]) -> None:
    """Check, before the images are embedded, that the report can be written: matplotlib is
    installed, the folder can be created and written, no report file is a folder."""
    charts.require_matplotlib()
    target = os.fspath(folder)
    try:
        os.makedirs(target, exist_ok=True)
    except OSError as exc:
        raise output_error(target, exc, "report folder") from None
    if not os.path.isdir(target):
        raise output_error(target, NotADirectoryError(20, "not a folder"), "report folder")
    probe_folder(target, "report folder")
    for name in FIXED_FILES:
        check_regular_or_absent(os.path.join(target, name), "report file")


def write_eval_report(evaluation: Evaluation, folder: Union[str, os.PathLike[str]]) -> dict[str, Any]:
    """Write the report of *evaluation* into *folder*; returns the summary (also in
    summary.json). :class:`~clip_rt.errors.OutputError` when the folder cannot be written (its
    previous files are then kept)."""
    target = os.fspath(folder)
    prepare_eval_report(target)
    summary = evaluation.to_json()
    shown = _shown_classes(evaluation)
    names = [r.name for r in evaluation.runs]
    choice = charts.warn_missing_glyphs(shown + names, "the labels")
    files = {r.name: confusion_file(r.name) for r in evaluation.runs}
    for name in files.values():
        check_regular_or_absent(os.path.join(target, name), "report file")
    try:
        with StagedFiles(target, "report") as staged:
            with charts.chart_style(shown + names):
                accuracy_chart(staged.path("accuracy.png"), evaluation.runs, len(evaluation.embedded.paths))
                for run in evaluation.runs:
                    confusion_chart(staged.path(files[run.name]), run, shown)
                per_class_chart(staged.path("per_class_recall.png"), evaluation.runs, shown, "recall")
                per_class_chart(staged.path("per_class_precision.png"), evaluation.runs, shown, "precision")
            summary["charts"] = ["accuracy.png", *files.values(), "per_class_recall.png", "per_class_precision.png"]
            summary["fonts"] = choice.to_json()
            if len(shown) < len(evaluation.labels):
                summary["notes"] = [
                    *summary["notes"],
                    f"the charts show the {len(shown)} largest of {len(evaluation.labels)} classes",
                ]
            with open(staged.path("summary.json"), "w", encoding="utf-8") as f:
                f.write(dumps_json(summary, indent=2) + "\n")
            _html(evaluation, target, staged, summary)
            staged.commit()
    except OSError as exc:
        raise OutputError(
            f"cannot write the report in {display_path(target)!r}: {reason(exc)}; the files it held before were kept"
        ) from None
    return summary


def _html(evaluation: Evaluation, folder: str, staged: StagedFiles, summary: dict[str, Any]) -> None:
    """report.html beside the charts: each image with its true and predicted class (the first
    run's), the right/wrong filters, and a confusion table per run."""
    from ..outputs.html_report import Chart, Matrix, write_html_report
    from ..outputs.records import Record

    run = evaluation.primary
    e = evaluation.embedded
    records = [
        Record(
            path=path,
            label=evaluation.labels[int(run.predicted[i])],
            score=None if run.confidence is None else round(float(run.confidence[i]), 6),
        )
        for i, path in enumerate(e.paths)
    ]
    records += [Record(path=path, error=why) for path, why in e.failed]
    truths: list[Optional[str]] = [evaluation.labels[int(t)] for t in e.truth] + [None] * len(e.failed)
    matrices = [Matrix(f"Confusion: {r.name}", r.labels, r.labels, r.confusion.tolist()) for r in evaluation.runs]
    charts_shown = [Chart(name, name.removesuffix(".png").replace("_", " ")) for name in summary["charts"]]
    from ..outputs.report import summarise

    page = summarise(records, evaluation.labels, {**evaluation.model, "labels": evaluation.labels})
    page["notes"] = [evaluation.advice(), *summary.get("notes", [])]  # what the numbers mean for the choice
    write_html_report(
        folder,
        records,
        page,
        charts_shown,
        labels=evaluation.labels,
        truths=truths,
        matrices=matrices,
        title=f"Evaluation of {run.name}",
        staged=staged,
    )


def _shown_classes(evaluation: Evaluation) -> list[str]:
    labels = evaluation.labels
    if len(labels) <= MAX_CLASSES_SHOWN:
        return list(labels)
    support = evaluation.primary.confusion.sum(axis=1)
    keep = sorted(np.argsort(-support, kind="stable")[:MAX_CLASSES_SHOWN])
    return [labels[i] for i in keep]


def _figure(width: float, height: float) -> Any:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height))


def _save(fig: Any, path: str) -> None:
    fig.savefig(path, format="png", dpi=charts.DPI, bbox_inches="tight")


def accuracy_chart(path: str, runs: Sequence[Scores], images: int) -> None:
    k = runs[0].top_k
    charts.bar_chart(
        path,
        [r.name for r in runs],
        [r.accuracy for r in runs],
        title=f"Top-1 accuracy on {images} labelled images",
        xlabel="top-1 accuracy",
        percent_axis=True,
        texts=[f"{charts.percent(r.accuracy)} (top-{k} {charts.percent(r.top_k_accuracy)})" for r in runs],
    )


def confusion_chart(path: str, run: Scores, shown: Sequence[str]) -> None:
    """Rows: the true class, columns: the predicted one; colour: the share of the row (so a
    small class reads as clearly as a large one), the count written in each cell."""
    idx = [run.labels.index(lab) for lab in shown]
    counts = run.confusion[np.ix_(idx, idx)]
    totals = run.confusion[idx].sum(axis=1, keepdims=True)
    share = np.divide(counts, np.maximum(totals, 1))
    n = len(shown)
    side = min(14.0, max(4.0, 0.45 * n + 2.5))
    fig = _figure(side + 1.5, side)
    ax = fig.subplots()
    image = ax.imshow(share, cmap="Blues", vmin=0.0, vmax=1.0)
    ticks = list(range(n))
    ax.set_xticks(ticks)
    ax.set_yticks(ticks)
    ax.set_xticklabels([charts.label_text(lab, 24) for lab in shown], rotation=60, ha="right")
    ax.set_yticklabels([charts.label_text(lab, 24) for lab in shown])
    if n <= 20:
        for i in range(n):
            for j in range(n):
                if counts[i, j]:
                    ax.text(
                        j,
                        i,
                        str(int(counts[i, j])),
                        ha="center",
                        va="center",
                        fontsize=8,
                        color="white" if share[i, j] > 0.6 else "black",
                    )
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(f"{run.name}: top-1 {charts.percent(run.accuracy)} on {run.images} images")
    bar = fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    bar.set_label("share of the true class")
    _save(fig, path)


def per_class_chart(path: str, runs: Sequence[Scores], shown: Sequence[str], which: str) -> None:
    """Horizontal bars per class, one colour per run; a class with no value (never predicted,
    for precision; no images, for recall) has no bar."""
    n, m = len(shown), len(runs)
    fig = _figure(8.0, max(2.5, 0.32 * n * max(1, m) + 1.5))
    ax = fig.subplots()
    height = 0.8 / m
    base = np.arange(n)[::-1]
    for j, run in enumerate(runs):
        by_label = {c.label: c for c in run.per_class()}
        values = [getattr(by_label[lab], which) for lab in shown]
        ys = base + 0.4 - height * (j + 0.5)
        ax.barh(
            ys,
            [v if v is not None else 0.0 for v in values],
            height=height,
            label=run.name,
            color=RUN_COLOURS[j % len(RUN_COLOURS)],
        )
    ax.set_yticks(base)
    ax.set_yticklabels([charts.label_text(lab) for lab in shown])
    ax.set_xlim(0, 1.0)
    from matplotlib.ticker import PercentFormatter

    ax.xaxis.set_major_formatter(PercentFormatter(1.0))
    ax.set_xlabel(which)
    ax.set_title(f"Per-class {which}" + ("" if which == "recall" else " (no bar: never predicted)"))
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    ax.spines[["top", "right"]].set_visible(False)
    _save(fig, path)
