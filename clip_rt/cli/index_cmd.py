"""`clip-rt index DIR -o INDEX` and `clip-rt search INDEX "text" | --image Q`."""

from __future__ import annotations

import sys
from typing import Optional

import click

from ..display import display_path, printable, relative_to_cwd
from ..inputs.discover import no_images_found, walk_images
from ..outputs.records import dumps_json, error_reason
from ..outputs.search_index import check_model, default_model, recorded_precision, update_index
from .common import (
    ModelArgs,
    check_precision_follows,
    echo_err,
    model_options,
    progress_bar,
    short_run,
    skip_errors_option,
)
from .group import main


@main.command("index")
@click.argument("folder", type=click.Path(exists=True, file_okay=False))
@click.option(
    "--output",
    "-o",
    "index_dir",
    required=True,
    type=click.Path(dir_okay=True, file_okay=False),
    help="Index folder (created, or updated in place).",
)
@click.option("--rebuild", is_flag=True, help="Start over: ignore what the index holds (also allows another model).")
@skip_errors_option
@model_options()
def index_cmd(folder: str, index_dir: str, rebuild: bool, skip_errors: bool, model: ModelArgs) -> None:
    """Embed every image under FOLDER into an index for `clip-rt search`. Re-running embeds only
    new or changed files and drops deleted ones. Exit status 1 if some images could not be read
    (they are left out of the index and listed) or a folder could not be listed (its earlier
    entries are kept, and it is listed), unless --skip-errors; 1 also, with the index untouched,
    when FOLDER holds no images at all."""
    listing_errors: list[tuple[str, str]] = []
    total = len(walk_images(folder, listing_errors))
    if not total and not listing_errors:
        # Before the index is touched: an empty FOLDER (an unmounted drive, a typo) must not empty an index.
        raise no_images_found([folder])
    # Re-indexing continues in the index's precision (as `search` does); --rebuild starts over.
    recorded = None if rebuild else recorded_precision(index_dir)
    check_precision_follows(
        model.options.precision, recorded, f"index {display_path(index_dir)!r}", "rebuild it with --rebuild"
    )
    total = len(walk_images(folder))
    clip = model.load(workload=short_run(images=total), follow_precision=recorded)
    clip.prepare(("image",))  # a damaged or mismatched bundle fails here, before the index is touched
    with progress_bar(total, "indexing") as bar:
        index, stats = update_index(
            index_dir, folder, clip, batch_size=model.batch_size, rebuild=rebuild, on_progress=bar.update
        )
    kept = f", {stats.unlisted} kept from folders that could not be listed" if stats.unlisted else ""
    echo_err(
        f"{len(index.entries)} images indexed ({stats.added} new, {stats.changed} changed, "
        f"{stats.removed} removed, {stats.unchanged} unchanged{kept}), {len(stats.failed)} failed"
    )
    for path, reason in stats.failed[:10]:
        echo_err(f"  failed: {display_path(relative_to_cwd(path))}: {printable(error_reason(path, reason))}")
    if len(stats.failed) > 10:
        echo_err(f"  ... and {len(stats.failed) - 10} more")
    if stats.failed and not skip_errors:
        sys.exit(1)


@main.command("search")
@click.argument("index_dir", metavar="INDEX", type=click.Path(exists=True, file_okay=False))
@click.argument("text", required=False)
@click.option(
    "--image",
    "image_path",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help="Search with an image instead of a text.",
)
@click.option("--top-k", "-k", "top_k", type=click.IntRange(min=1), default=10, show_default=True)
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
@click.option(
    "--method",
    type=click.Choice(["auto", "exact", "ann"]),
    default="auto",
    show_default=True,
    help="exact: compare with every embedding; ann: approximate index (faiss HNSW, built on first "
    "use and kept beside the embeddings); auto: ann from 50,000 embeddings on.",
)
@click.option("--rebuild-ann", is_flag=True, help="Rebuild the approximate index even if it is current.")
@model_options(model_default_help="Default: the bundle that made the embeddings.", batch_size=False)
def search_cmd(
    index_dir: str,
    text: Optional[str],
    image_path: Optional[str],
    top_k: int,
    fmt: str,
    method: str,
    rebuild_ann: bool,
    model: ModelArgs,
) -> None:
    """Rank the images in INDEX (a `clip-rt index` folder or a `clip-rt ray` output) by cosine
    similarity to TEXT (or to --image). Paths are shown relative to the current folder where they
    lie under it, else absolute. The model defaults to the one that made the embeddings; another
    bundle is refused."""
    from ..outputs import ann
    from ..outputs.collection import open_collection

    if bool(text) == bool(image_path):
        raise click.UsageError("give a query TEXT or --image FILE (one of them)")
    collection = open_collection(index_dir)
    clip = model.load(
        workload=short_run(images=0 if text else 1, prompts=1 if text else 0),
        follow_precision=collection.precision,
        default=default_model(collection),
    )
    check_model(collection, clip, index_dir)
    query = clip.encode_text([text])[0] if text else clip.encode_image([image_path])[0]
    hits, _how = ann.search(collection, query, top_k, mode=method, rebuild=rebuild_ann, on_message=echo_err)
    # Paths relative to the current folder where they lie under it, as `classify` shows them.
    hits = [(score, relative_to_cwd(path)) for score, path in hits]
    if fmt == "json":
        click.echo(dumps_json([{"rank": i, "score": round(s, 6), "path": p} for i, (s, p) in enumerate(hits, 1)]))
        return
    click.echo(f"{'rank':>4}  {'score':>7}  path")
    for i, (score, path) in enumerate(hits, 1):
        click.echo(f"{i:>4}  {score:7.4f}  {display_path(path)}")
