"""`clip-rt classify`: zero-shot classification of many images, streamed records, resume, report."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, Optional, TypeVar

import click
import numpy as np

from ..display import display_path, printable
from ..errors import OutputError
from ..inputs.discover import discover, no_images_found, path_key
from ..outputs import records as rec_mod
from ..outputs.files import stdout_sink
from ..outputs.record_output import RecordOutput, recorded_precision
from ..outputs.records import Record, RecordWriter
from .common import (
    ModelArgs,
    check_precision_follows,
    echo_err,
    label_options,
    model_identity,
    model_options,
    progress_bar,
    runtime_summary,
    short_run,
    skip_errors_option,
    warn_if_single_label,
)
from .group import main
from .heads import classifier_for, head_identity, head_option, labels_and_templates, read_head

if TYPE_CHECKING:
    from ..results import ImageEmbedding
    from ..zeroshot import EmbeddingClassifier

Item = TypeVar("Item")


@main.command("classify")
@click.argument("paths", nargs=-1, required=True, type=click.Path())
@label_options
@click.option(
    "--top-k",
    "top_k",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Also list the K best labels (table; `top_k` key in JSON/JSONL).",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(rec_mod.FORMATS),
    default=None,
    help="Output format; default: from -o's extension, else table.",
)
@click.option(
    "--output", "-o", type=click.Path(dir_okay=False), default=None, help="Write records here instead of stdout."
)
@click.option("--resume", is_flag=True, help="Skip inputs already recorded in -o (CSV or JSONL) and append the rest.")
@click.option(
    "--report",
    "report_dir",
    type=click.Path(file_okay=False),
    default=None,
    help="Also write results.csv, summary.json, charts and report.html (a page with thumbnails) to this "
    "folder (needs clip-rt[report]).",
)
@click.option(
    "--contact-sheet",
    "contact_n",
    type=click.IntRange(min=0),
    default=24,
    show_default=True,
    help="Images in the report's contact sheet.",
)
@click.option(
    "--csv-bom/--no-csv-bom",
    default=None,
    help="Start CSV output with a UTF-8 BOM (for spreadsheet programs). Default: no BOM in -o; in the "
    "report's results.csv, a BOM when a label is not ASCII.",
)
@skip_errors_option
@head_option
@model_options()
def classify_cmd(
    paths: tuple[str, ...],
    labels_csv: Optional[str],
    labels_file: Optional[str],
    template_list: tuple[str, ...],
    template_set: Optional[str],
    top_k: int,
    fmt: Optional[str],
    output: Optional[str],
    resume: bool,
    report_dir: Optional[str],
    contact_n: int,
    csv_bom: Optional[bool],
    skip_errors: bool,
    head_path: Optional[str],
    model: ModelArgs,
) -> None:
    """Classify images among LABELS (or with a fitted --head). PATHS: image files, folders
    (searched recursively), or `-` to read paths from stdin, one per line (at most 256 MB;
    $CLIP_RT_MAX_PATH_LIST_MB raises it).

    Exit status: 0 all images classified, 1 some could not be read (each still gets a record
    with its `error`; so does a folder that could not be listed; --skip-errors makes this 0), no
    images were found under PATHS, or a model/input error, 2 bad usage.
    """
    head = read_head(head_path)  # a damaged head file fails before the model loads
    # names, or {name: own prompts}; with --head, the head's
    label_spec, templates = labels_and_templates(head, labels_csv, labels_file, template_list, template_set)
    labels = list(label_spec)
    warn_if_single_label(labels)
    fmt = rec_mod.infer_format(output, fmt)
    if resume and not output:
        raise click.UsageError("--resume needs --output FILE (the run to continue)")
    if resume and fmt not in rec_mod.RESUMABLE:
        raise click.UsageError(f"--resume works with csv or jsonl output, not {fmt}")
    if top_k > len(labels):
        raise click.UsageError(f"--top-k {top_k} is more than the {len(labels)} labels given")
    if report_dir:
        from ..outputs.charts import require_matplotlib

        require_matplotlib()  # fail before hours of inference, not after
    walk_errors: list[tuple[str, str]] = []
    inputs = discover(paths, errors=walk_errors)
    if not inputs and not walk_errors:  # before the model loads: nothing to do is a mistake, said at once
        raise no_images_found(paths)
    _refuse_inputs_as_outputs(inputs, labels_file, output, report_dir, stdin="-" in paths)
    unlisted_folders: dict[str, tuple[str, str]] = {}  # by path_key: a folder named twice fails once
    for folder, reason in walk_errors:
        unlisted_folders.setdefault(path_key(folder), (folder, reason))

    # A resumed run continues in the precision its output was written with (as `search` does).
    recorded = recorded_precision(output) if resume and output and os.path.exists(output) else None
    check_precision_follows(
        model.options.precision,
        recorded,
        f"--resume output {display_path(output or '')!r}",
        "start a new output (another -o, or without --resume)",
    )
    batch_size = model.batch_size
    prompts = 0 if head else _prompt_count(label_spec, templates)  # a head brings its class embeddings
    clip = model.load(workload=short_run(images=len(inputs), prompts=prompts), follow_precision=recorded)
    classifier = classifier_for(clip, head, label_spec, templates)  # a head of another bundle: refused here
    clip.release("text")  # class embeddings are ready: free the text graph's memory
    clip.session("image")  # a damaged image graph fails here, before -o is truncated
    identity = {**model_identity(clip), "labels": label_spec, "templates": list(templates), **head_identity(head)}
    # ClipModel.scoring (stand-in models are CLIP-like); a head's scores are a softmax over its labels
    scoring = classifier.scoring if head else getattr(clip, "scoring", "softmax")
    if scoring != "softmax":
        # Scores of another kind than the CLIP softmax: say so in the run description beside the
        # output (older descriptions have no such key: they are all softmax).
        identity["scoring"] = scoring
    if scoring != "softmax":  # CLIP's softmax is the default; errors stay one stderr line (tests/test_outputs.py)
        from ..zeroshot import describe_scoring

        echo_err(f"scores: {describe_scoring(scoring)}")
    # What ran is recorded with the run, but a resume on another backend is still the same run.
    runtime = runtime_summary(clip)
    described = {**identity, "runtime": runtime} if runtime else identity

    if report_dir:  # the folder can be written: checked before any inference, too
        from ..outputs.report import prepare_report

        prepare_report(report_dir)
    target = RecordOutput(output, fmt, resume=resume) if output else None
    if target:  # checks the folder, the sidecar, the lock; reads what --resume skips; truncates nothing
        target.prepare(identity, labels, described)
    done: list[Record] = target.done if target else []
    append = bool(target and target.append)
    # Keys, not raw strings: `photos/a.jpg` recorded by one run is `./photos/a.jpg` in the next.
    done_keys = {path_key(r.path) for r in done}
    todo = [p for p in inputs if path_key(p) not in done_keys]
    # A folder that could not be listed gets a failed record (first, as it is known before any
    # inference), so the run exits 1 instead of silently classifying less.
    unlisted = [
        Record(path=folder, error=reason) for key, (folder, reason) in unlisted_folders.items() if key not in done_keys
    ]

    # Every new record is kept only for --report; otherwise only the failed ones, so that
    # memory stays flat over millions of images.
    new: list[Record] = []
    n_new = 0
    try:
        stream = target.open() if target else stdout_sink()
        writer = RecordWriter(fmt, stream, labels, top_k=top_k, write_header=not append, bom=bool(csv_bom))
        writer.write_batch(unlisted)
        n_new += len(unlisted)
        new.extend(unlisted)
        with progress_bar(len(todo), "classifying") as bar:
            for batch in _batches(clip.iter_images(todo, batch_size=batch_size), batch_size):
                out = _classify_batch(classifier, batch, top_k)
                writer.write_batch(out)
                n_new += len(out)
                new.extend(out if report_dir else [r for r in out if not r.ok])
                bar.update(len(out))
        writer.close()
        if target:
            target.commit()
    except OutputError as exc:
        raise (target.fail(exc, written=n_new) if target else exc) from None
    finally:
        if target:
            target.release()

    by_key = {path_key(r.path): r for r in done + new}
    wanted = list(unlisted_folders) + [path_key(p) for p in inputs]
    everything = [by_key[k] for k in wanted if k in by_key]
    failed = [r for r in everything if not r.ok]
    n_done = len(done_keys.intersection(wanted))
    skipped = f", {n_done} already done" if done else ""
    echo_err(f"{n_done + n_new} processed, {len(failed)} failed{skipped}")
    for r in failed[:10]:
        echo_err(f"  failed: {display_path(r.path)}: {printable(rec_mod.error_reason(r.path, r.error or ''))}")
    if len(failed) > 10:
        echo_err(f"  ... and {len(failed) - 10} more (see the records' error field)")
    if report_dir:
        from ..outputs.report import write_report

        with progress_bar(len(everything), "thumbnails") as bar:
            summary = write_report(
                everything,
                report_dir,
                labels,
                identity={**described, "scoring": scoring},
                contact_sheet=contact_n,
                bom=csv_bom,
                progress=bar.update,
            )
        fonts = ", ".join(summary["fonts"]["families"])
        echo_err(f"report written to {display_path(report_dir)} (chart fonts: {fonts})")
    if failed and not skip_errors:
        sys.exit(1)


def _prompt_count(labels: Any, templates: Sequence[str]) -> int:
    """Prompts the classifier encodes: each label through every template, or its own prompts."""
    if isinstance(labels, dict):
        return sum(len(own) if own else len(templates) for own in labels.values())
    return len(labels) * len(templates)


def _refuse_inputs_as_outputs(
    inputs: Sequence[str], labels_file: Optional[str], output: Optional[str], report_dir: Optional[str], *, stdin: bool
) -> None:
    """Before anything is opened for writing: no output (-o, its description, a report file,
    or standard output when the records go there) is one of the files this run reads."""
    from ..outputs.files import refuse_inputs_as_outputs
    from ..outputs.record_output import sidecar_path

    outputs: list[tuple[str, str]] = []
    if output:
        outputs += [(output, "output"), (sidecar_path(output), "run description")]
    if report_dir:
        from ..outputs.report import REPORT_FILES

        outputs += [(os.path.join(report_dir, name), "report file") for name in REPORT_FILES]
    refuse_inputs_as_outputs(
        outputs, [*inputs, *([labels_file] if labels_file else [])], stdin=stdin, stdout=output is None
    )


def _batches(items: Iterable[Item], size: int) -> Iterator[list[Item]]:
    batch: list[Item] = []
    for item in items:
        batch.append(item)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def _classify_batch(classifier: EmbeddingClassifier, items: Sequence[ImageEmbedding], top_k: int) -> list[Record]:
    ok = [it.embedding for it in items if it.embedding is not None and it.error is None]
    found = classifier.classify_embeddings(np.stack(ok), top_k=top_k) if ok else []
    results = iter(found)
    out = []
    for it in items:
        path = os.fspath(it.source)
        if it.embedding is None or it.error is not None:
            out.append(Record(path=path, width=it.width, height=it.height, error=it.error or "no embedding"))
            continue
        c = next(results)
        out.append(
            Record(
                path=path,
                label=c.label,
                score=round(float(c.score), 6),
                scores={k: round(float(v), 6) for k, v in c.scores.items()},
                width=it.width,
                height=it.height,
                top_k=[(lab, round(float(s), 6)) for lab, s in c.top_k],
            )
        )
    return out
