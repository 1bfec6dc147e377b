"""`clip-rt fit DIR -o HEAD`: a few-shot head on labelled images (numpy only; docs/adapt.md)."""

from __future__ import annotations

import sys
from typing import Optional

import click

from ..display import display_path
from .common import ModelArgs, echo_err, model_options, progress_bar, resolve_templates, short_run, skip_errors_option
from .eval_cmd import report_failed
from .group import main


@main.command("fit", short_help="Fit a few-shot head on labelled images (use it with --head).")
@click.argument("dataset", metavar="DIR|CSV", type=click.Path(exists=True))
@click.option(
    "--output",
    "-o",
    required=True,
    type=click.Path(dir_okay=False),
    metavar="HEAD",
    help="The head file to write (an existing one is replaced only once the new head is complete).",
)
@click.option(
    "--template",
    "template_list",
    multiple=True,
    metavar="TEXT",
    help="Prompt template with {} for the label, for the zero-shot part (repeatable).",
)
@click.option(
    "--templates",
    "template_set",
    type=click.Choice(["simple", "imagenet"]),
    default=None,
    help="Built-in template set for the zero-shot part (default: simple).",
)
@click.option(
    "--folds",
    type=click.IntRange(min=2),
    default=5,
    show_default=True,
    help="Stratified cross-validation folds (fewer when a class has fewer images).",
)
@click.option(
    "--seed",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Shuffles the images into folds; the same seed and images give the same head.",
)
@click.option(
    "--blend/--no-blend",
    default=True,
    show_default=True,
    help="Blend the probe with the zero-shot classifier, the weight chosen by cross-validation "
    "(0 = zero-shot alone is a candidate, so the head never does worse than zero-shot on the "
    "training folds); --no-blend: the probe alone.",
)
@skip_errors_option
@model_options()
def fit_cmd(
    dataset: str,
    output: str,
    template_list: tuple[str, ...],
    template_set: Optional[str],
    folds: int,
    seed: int,
    blend: bool,
    skip_errors: bool,
    model: ModelArgs,
) -> None:
    """Fit a few-shot head on labelled images: DIR holds one subfolder per class (its name is the
    label), or is a CSV file of path,label rows; at least 2 images per class. The head is a
    logistic-regression probe on the image embeddings, blended with zero-shot, its L2 strength
    and blend chosen by cross-validation. Use it with `classify/eval/video --head HEAD`.

    Exit status: 0 every image read, 1 some could not be read (the head is fitted and written
    without them; --skip-errors makes this 0) or a model/input error, 2 bad usage.
    """
    from ..adapt.dataset import read_labelled_set
    from ..adapt.fitting import fit
    from ..adapt.head import summary_lines
    from ..adapt.probe import check_trainable
    from ..outputs.files import check_target

    templates = resolve_templates(template_list, template_set)
    labelled = read_labelled_set(dataset)
    check_trainable(labelled.counts(), folds)  # a class of one image fails before the model loads
    check_target(output, "head file")  # before the images are embedded, not after
    for note in labelled.notes:
        echo_err(f"note: {note}")
    batch_size = model.batch_size
    prompts = len(labelled.counts()) * len(templates)  # the zero-shot part's class embeddings
    clip = model.load(workload=short_run(images=len(labelled.items), prompts=prompts))
    with progress_bar(len(labelled.items), "embedding") as bar:
        result = fit(
            clip,
            labelled,
            templates=templates,
            folds=folds,
            seed=seed,
            blend=blend,
            batch_size=batch_size,
            progress=bar.update,
        )
    result.head.save(output)
    for line in summary_lines(result.head, display_path(output)):
        click.echo(line)
    if result.head.training.folds < folds:
        echo_err(
            f"note: {result.head.training.folds} folds instead of {folds}: the smallest class has "
            f"{min(result.head.training.per_class.values())} images"
        )
    report_failed(len(result.embedded.paths), result.failed)
    if result.failed and not skip_errors:
        sys.exit(1)
