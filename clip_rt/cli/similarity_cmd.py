"""`clip-rt similarity IMAGE TEXT...`: probabilities of one image against texts (softmax over the
texts for CLIP models, a sigmoid per text for SigLIP models: the bundle's scoring)."""

from __future__ import annotations

import os
from typing import Optional

import click

from ..display import display_path, printable
from ..outputs.records import dumps_json
from .common import ModelArgs, echo_err, model_options, short_run
from .group import main


@main.command("similarity")
@click.argument("image", type=click.Path(exists=True, dir_okay=False))
@click.argument("texts", nargs=-1, required=True)
@click.option(
    "--plot",
    "plot_path",
    type=click.Path(dir_okay=False),
    default=None,
    help="Write a PNG: the image beside a bar chart of the probabilities (needs clip-rt[report]).",
)
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
@model_options(batch_size=False)
def similarity_cmd(image: str, texts: tuple[str, ...], plot_path: Optional[str], fmt: str, model: ModelArgs) -> None:
    """Probability of IMAGE matching each TEXT. CLIP models: softmax over the texts of the model's
    scaled cosine similarities (they sum to 1; add texts to compare against). SigLIP models
    (sigmoid scoring): each text's own probability, independent of the others."""
    if any(not t.strip() for t in texts):
        raise click.UsageError("TEXT arguments must not be empty")
    from ..outputs.files import refuse_inputs_as_outputs

    refuse_inputs_as_outputs([(plot_path, "plot")] if plot_path else [], [image], stdout=True)
    if plot_path:
        from ..outputs.charts import require_matplotlib
        from ..outputs.files import check_target, probe_folder

        require_matplotlib()
        check_target(plot_path, "plot")  # before any inference
        probe_folder(os.path.dirname(plot_path) or ".", "plot folder")
    clip = model.load(workload=short_run(images=1, prompts=len(texts)))
    probs = [float(p) for p in clip.similarity(image, list(texts))]
    if fmt == "json":
        click.echo(
            dumps_json(
                {
                    "image": image,
                    "scoring": clip.scoring,
                    "probabilities": {t: round(p, 6) for t, p in zip(texts, probs)},
                }
            )
        )
    else:
        from ..zeroshot import describe_scoring

        echo_err(f"scores: {describe_scoring(clip.scoring)}")
        click.echo(f"{'prob':>7}  text")
        for text, p in zip(texts, probs):
            click.echo(f"{100 * p:6.2f}%  {printable(text)}")
    if plot_path:
        from ..outputs.charts import plot_similarity
        from ..outputs.fonts import choose_fonts

        plot_similarity(
            image,
            list(texts),
            probs,
            plot_path,
            title=display_path(image) + (" (sigmoid per text)" if clip.scoring == "sigmoid" else ""),
        )
        fonts = ", ".join(choose_fonts(list(texts) + [display_path(image)]).families)
        echo_err(f"plot written to {display_path(plot_path)} (chart fonts: {fonts})")
