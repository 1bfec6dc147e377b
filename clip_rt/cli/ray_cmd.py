"""`clip-rt ray embed|classify PATHS -o OUT`: the same work on Ray Data, into Parquet parts."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Callable, Optional, TypeVar

import click

from ..display import display_path, printable
from ..outputs.records import error_reason
from ..settings import default_model
from .common import MODEL_DEFAULT_HELP, echo_err, label_options
from .group import main
from .heads import head_option, labels_and_templates, read_head

if TYPE_CHECKING:
    from ..adapt.head import Head

if TYPE_CHECKING:
    from ..zeroshot import LabelsArg

F = TypeVar("F", bound=Callable[..., Any])


@main.group("ray")
def ray_group() -> None:
    """Embed or classify many images on Ray Data (needs clip-rt[ray]): a local Ray on this
    machine by default, a cluster with --address. Output: a folder of Parquet parts; a rerun
    skips what is already written (docs/scale.md)."""


def job_options(f: F) -> F:
    opts = [
        click.argument("paths", nargs=-1, required=True),
        click.option(
            "--output",
            "-o",
            required=True,
            type=click.Path(file_okay=False),
            help="Output folder of Parquet parts (created; rerunning resumes it).",
        ),
        click.option(
            "--model",
            "-m",
            "model_name",
            default=None,
            metavar="NAME|DIR",
            help="Bundle name, alias or directory: the same directory must exist on every node, "
            "unless --ship-bundle. " + MODEL_DEFAULT_HELP,
        ),
        click.option(
            "--precision",
            type=click.Choice(["fp32", "fp16", "int8"]),
            default=None,
            help="Graph precision; default: the bundle's best for the CPU.",
        ),
        click.option("--provider", default=None, metavar="NAME", help="ONNX Runtime provider on the workers."),
        click.option(
            "--batch-size",
            type=click.IntRange(min=1),
            default=8,
            show_default=True,
            help="Images per inference batch inside an actor.",
        ),
        click.option("--draft", is_flag=True, help="Reduced-scale JPEG decoding, as `classify --draft`."),
        click.option(
            "--address",
            default=None,
            envvar="RAY_ADDRESS",
            metavar="ADDR",
            help="Ray cluster to use (e.g. 10.0.0.5:6379, ray://head:10001, auto); default "
            "(and RAY_ADDRESS unset): a local Ray on this machine, on 127.0.0.1.",
        ),
        click.option(
            "--num-cpus",
            type=click.IntRange(min=1),
            default=None,
            help="CPUs of the local Ray (default: all cores); ignored with --address.",
        ),
        click.option(
            "--actors",
            type=click.IntRange(min=1),
            default=None,
            help="Model copies (default: the cluster's CPUs / --cpus-per-actor).",
        ),
        click.option(
            "--cpus-per-actor",
            type=click.IntRange(min=1),
            default=1,
            show_default=True,
            help="CPUs reserved per actor, also its ONNX Runtime threads.",
        ),
        click.option(
            "--part-rows",
            type=click.IntRange(min=1),
            default=10_000,
            show_default=True,
            help="Rows per Parquet part: the unit a killed job loses and a rerun redoes.",
        ),
        click.option(
            "--ship-bundle",
            is_flag=True,
            help="Send the image graph through Ray's object store (once per node) instead of "
            "reading the bundle directory on every node.",
        ),
        click.option("--overwrite", is_flag=True, help="Delete what the output folder holds and start over."),
    ]
    for opt in reversed(opts):
        f = opt(f)
    return f


@ray_group.command("embed")
@job_options
def embed_cmd(**kw: Any) -> None:
    """Embed the images in PATHS (files, folders, or s3://... style URIs read by Ray) into
    Parquet: path, width, height, embedding, error. Exit status 1 if some images failed."""
    _run(kw, labels=None, templates=())


@ray_group.command("classify")
@job_options
@label_options
@head_option
def classify_cmd(
    labels_csv: Optional[str],
    labels_file: Optional[str],
    template_list: tuple[str, ...],
    template_set: Optional[str],
    head_path: Optional[str],
    **kw: Any,
) -> None:
    """Zero-shot classify the images in PATHS (or with a fitted --head) into Parquet: the embed
    columns plus label, score and scores (one probability per label). Exit status 1 if some
    images failed."""
    head = read_head(head_path)  # a damaged head file fails before Ray starts
    labels, templates = labels_and_templates(head, labels_csv, labels_file, template_list, template_set)
    _run(kw, labels=labels, templates=templates, head=head)


def _run(
    kw: dict[str, Any], *, labels: Optional[LabelsArg], templates: Optional[Sequence[str]], head: Optional[Head] = None
) -> None:
    from ..scale import ray as scale_ray

    model = kw["model_name"] or default_model().value  # CLIP_RT_MODEL / config.toml, before Ray starts
    if head is not None:
        scale_ray.check_head(head, model)  # a head of another bundle: refused before Ray starts
    started = scale_ray.init(kw["address"], num_cpus=kw["num_cpus"])
    try:
        result = scale_ray.run_job(
            list(kw["paths"]),
            kw["output"],
            model,
            labels=labels,
            templates=templates or (),
            part_rows=kw["part_rows"],
            overwrite=kw["overwrite"],
            precision=kw["precision"],
            actors=kw["actors"],
            cpus_per_actor=kw["cpus_per_actor"],
            batch_size=kw["batch_size"],
            draft=kw["draft"],
            providers=[kw["provider"]] if kw["provider"] else None,
            ship_bundle=kw["ship_bundle"],
            head=head,
        )
    finally:
        if started:
            scale_ray.shutdown()
    echo_err(
        f"{result['rows']} images in {display_path(result['output'])} ({result['new']} new, "
        f"{result['done_before']} already done), {result['failed']} failed, {result['parts']} parts"
    )
    nodes = result.get("nodes") or {}
    if len(nodes) > 1:  # which node computed what, on a cluster (one node: the line above says it all)
        for node_id, entry in sorted(nodes.items(), key=lambda kv: (-kv[1]["rows"], kv[0])):
            echo_err(f"  node {entry['ip']} ({node_id[:12]}): {entry['rows']} rows, {entry['failed']} failed")
    for path, error in result["failed_examples"]:
        echo_err(f"  failed: {display_path(path)}: {printable(error_reason(path, error or ''))}")
    if result["failed"] > len(result["failed_examples"]):
        echo_err(f"  ... and {result['failed'] - len(result['failed_examples'])} more (the error column)")
    if result["failed"]:
        sys.exit(1)
