"""`clip-rt eval DIR`: zero-shot template sets and a fitted head measured on labelled images."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any, Optional

import click

from ..display import display_path, printable
from ..errors import InputError
from ..outputs.records import dumps_json, error_reason
from .common import ModelArgs, echo_err, model_options, progress_bar, short_run, skip_errors_option
from .group import main
from .heads import read_head

SET_HELP = (
    "Built-in template set(s) to compare side by side: simple, imagenet (comma-separated or repeated), one "
    "accuracy each. Default: simple; none with --head (it brings its own zero-shot part, evaluated too)."
)


def template_sets(names: Sequence[str], custom: Sequence[str]) -> list[Any]:
    """--templates names and --template texts (one more set, ``custom``), checked now (exit 2)."""
    from ..adapt.evaluation import TemplateSet, builtin_sets

    wanted = [n.strip().lower() for arg in names for n in arg.split(",") if n.strip()]
    if names and not wanted:
        raise click.UsageError("--templates is empty: expected set names such as simple,imagenet")
    if len(set(wanted)) != len(wanted):
        raise click.UsageError(f"--templates names a set twice: {', '.join(names)}")
    try:
        sets = builtin_sets(wanted)
    except InputError as exc:
        raise click.UsageError(str(exc)) from None
    if custom:
        bad = [t for t in custom if "{}" not in t]
        if bad:
            raise click.UsageError(f"template {bad[0]!r} has no {{}} placeholder for the label")
        sets.append(TemplateSet("custom", tuple(custom)))
    return sets


@main.command("eval", short_help="Measure zero-shot and a fitted head on labelled images.")
@click.argument("dataset", metavar="DIR|CSV", type=click.Path(exists=True))
@click.option("--templates", "set_names", multiple=True, metavar="NAME[,NAME]", help=SET_HELP)
@click.option(
    "--template",
    "template_list",
    multiple=True,
    metavar="TEXT",
    help='A prompt template with {} for the label (repeatable); together they are one more set, "custom".',
)
@click.option(
    "--head",
    "head_path",
    type=click.Path(dir_okay=False),
    default=None,
    metavar="HEAD",
    help="A head fitted by `clip-rt fit` on this bundle: evaluated with its own zero-shot part beside it "
    "(use images it was not fitted on). DIR's classes must be among its labels.",
)
@click.option(
    "--json",
    "json_path",
    type=click.Path(dir_okay=False),
    default=None,
    metavar="FILE",
    help='Write the figures as JSON: {"accuracy", "labels", "confusion" (rows true, columns predicted), '
    '"runs": [...] every run\'s figures, "failed", "predictions", ...}.',
)
@click.option(
    "--report",
    "report_dir",
    type=click.Path(file_okay=False),
    default=None,
    metavar="DIR",
    help="Also write summary.json and charts (accuracy, confusion matrices, per-class recall and "
    "precision) to this folder (needs clip-rt[report]).",
)
@skip_errors_option
@model_options()
def eval_cmd(
    dataset: str,
    set_names: tuple[str, ...],
    template_list: tuple[str, ...],
    head_path: Optional[str],
    json_path: Optional[str],
    report_dir: Optional[str],
    skip_errors: bool,
    model: ModelArgs,
) -> None:
    """Measure classification on labelled images: DIR holds one subfolder per class (its name is
    the label), or is a CSV file of path,label rows. Prints top-1 and top-5 accuracy (top-k for
    k classes when there are 5 or fewer), per-class precision and recall, the most confused
    pairs, and one line on what it means for zero-shot against a head.

    Exit status: 0 every image read, 1 some could not be read (each is listed; the figures are
    over the rest; --skip-errors makes this 0) or a model/input error, 2 bad usage.
    """
    from ..adapt.dataset import read_labelled_set
    from ..adapt.evaluation import evaluate

    head = read_head(head_path)  # a damaged head fails before anything else
    sets = template_sets(set_names, template_list)
    labelled = read_labelled_set(dataset)
    if json_path:
        from ..outputs.files import check_target

        check_target(json_path, "--json file")  # before hours of inference, not after
    if report_dir:
        from ..adapt.report import prepare_eval_report

        prepare_eval_report(report_dir)
    for note in labelled.notes:
        echo_err(f"note: {note}")
    batch_size = model.batch_size
    clip = model.load(workload=short_run(images=len(labelled.items), prompts=len(labelled.counts())))
    with progress_bar(len(labelled.items), "embedding") as bar:
        result = evaluate(
            clip, labelled, head=head, template_sets=sets or None, batch_size=batch_size, progress=bar.update
        )
    for line in result.lines():
        click.echo(line)
    report_failed(len(result.embedded.paths), result.failed)
    if json_path:
        from ..outputs.files import atomic_file

        with atomic_file(json_path, "w", "--json file") as f:
            f.write(dumps_json(result.to_json(), indent=2) + "\n")
    if report_dir:
        from ..adapt.report import write_eval_report

        write_eval_report(result, report_dir)
        echo_err(f"report written to {display_path(report_dir)}")
    if result.failed and not skip_errors:
        sys.exit(1)


def report_failed(done: int, failed: Sequence[tuple[str, str]]) -> None:
    echo_err(f"{done + len(failed)} processed, {len(failed)} failed")
    for path, error in failed[:10]:
        echo_err(f"  failed: {display_path(path)}: {printable(error_reason(path, error))}")
    if len(failed) > 10:
        echo_err(f"  ... and {len(failed) - 10} more (see --json's failed list)")
