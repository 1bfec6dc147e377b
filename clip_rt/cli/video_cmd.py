"""`clip-rt video VIDEO --labels ...`: classify frames sampled every N seconds, report segments."""

from __future__ import annotations

from typing import Optional

import click
import numpy as np

from ..display import display_path, display_width, pad, printable
from ..options import Workload
from ..outputs.files import refuse_inputs_as_outputs
from ..outputs.records import dumps_json
from .common import ModelArgs, echo_err, label_options, model_options, warn_if_single_label
from .group import main
from .heads import classifier_for, head_option, labels_and_templates, read_head


@main.command("video")
@click.argument("video_path", metavar="VIDEO", type=click.Path(exists=True, dir_okay=False))
@label_options
@click.option(
    "--every",
    type=click.FloatRange(min=0, min_open=True),
    default=1.0,
    show_default=True,
    help="Seconds between sampled frames.",
)
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
@click.option("--frames", "show_frames", is_flag=True, help="Also list every sampled frame (table format).")
@head_option
@model_options()
def video_cmd(
    video_path: str,
    labels_csv: Optional[str],
    labels_file: Optional[str],
    template_list: tuple[str, ...],
    template_set: Optional[str],
    every: float,
    fmt: str,
    show_frames: bool,
    head_path: Optional[str],
    model: ModelArgs,
) -> None:
    """Classify frames of VIDEO sampled every --every seconds (needs clip-rt[video]). Prints the
    labelled segments (consecutive frames with the same top label: start, end, label, mean
    score) and the overall label (highest mean probability over all sampled frames)."""
    from ..inputs import video

    head = read_head(head_path)  # a damaged head file fails before the model loads
    # names, or {name: own prompts}; with --head, the head's
    label_spec, templates = labels_and_templates(head, labels_csv, labels_file, template_list, template_set)
    labels = list(label_spec)
    warn_if_single_label(labels)
    # The report goes to standard output: never into the video or labels file being read.
    refuse_inputs_as_outputs([], [video_path, *([labels_file] if labels_file else [])], stdout=True)
    video.require_av()
    duration = video.video_duration(video_path)
    frames_expected = int(duration // every) + 1 if duration else None  # unknown: planned as a long run
    batch_size = model.batch_size
    prompts = 0 if head else len(labels) * len(templates)
    clip = model.load(workload=Workload(images=frames_expected, prompts=prompts, lifetime="short"))
    classifier = classifier_for(clip, head, label_spec, templates)  # a head of another bundle: refused here

    times: list[float] = []
    tops: list[str] = []
    top_scores: list[float] = []
    probs: list[np.ndarray] = []
    batch: list[tuple[float, np.ndarray]] = []  # (time, preprocessed pixels): no full frame is kept

    def flush() -> None:
        embs = clip.encode_pixels(np.stack([pixels for _, pixels in batch]))
        for (t, _), c in zip(batch, classifier.classify_embeddings(embs, top_k=1)):
            times.append(t)
            tops.append(c.label)
            top_scores.append(float(c.score))
            probs.append(np.array([c.scores[lab] for lab in labels], dtype=np.float64))
        batch.clear()

    from PIL import Image

    # Frames get the images' pixel limit; with --draft they are scaled down while converted.
    frames = video.sample_frames(
        video_path, every, max_pixels=Image.MAX_IMAGE_PIXELS, shrink=clip.draft_size if clip.draft else None
    )
    for frame in frames:
        batch.append((frame.time, clip.preprocess(frame.image).pixels))
        if len(batch) >= batch_size:
            flush()
    if batch:
        flush()
    if not times:
        raise click.ClickException(f"no frames could be decoded from {display_path(video_path)!r}")

    duration = duration or times[-1]
    segs = video.segments(times, tops, top_scores, duration)
    label, score, mean_probs = video.overall(np.stack(probs), labels)
    if fmt == "json":
        click.echo(
            dumps_json(
                {
                    "video": video_path,
                    "every": every,
                    "duration": duration,
                    "overall": {
                        "label": label,
                        "score": round(score, 6),
                        "scores": {k: round(v, 6) for k, v in mean_probs.items()},
                    },
                    "segments": [
                        {
                            "start": round(s.start, 3),
                            "end": round(s.end, 3),
                            "label": s.label,
                            "mean_score": round(s.mean_score, 6),
                            "frames": s.frames,
                        }
                        for s in segs
                    ],
                    "frames": [
                        {"time": round(t, 3), "label": lab, "score": round(sc, 6)}
                        for t, lab, sc in zip(times, tops, top_scores)
                    ],
                },
                indent=2,
            )
        )
    else:
        shown = {lab: printable(lab) for lab in labels}
        width = max(display_width(x) for x in list(shown.values()) + ["label"])  # CJK: 2 columns
        if show_frames:
            click.echo(f"{'time':>8}  {pad('label', width)}  score")
            for t, lab, sc in zip(times, tops, top_scores):
                click.echo(f"{t:8.2f}  {pad(shown[lab], width)}  {sc:.3f}")
            click.echo("")
        click.echo(f"{'start':>8}  {'end':>8}  {pad('label', width)}  {'mean':>5}  frames")
        for s in segs:
            click.echo(f"{s.start:8.2f}  {s.end:8.2f}  {pad(shown[s.label], width)}  {s.mean_score:5.3f}  {s.frames}")
        click.echo(f"overall: {printable(label)} ({score:.3f})")
    echo_err(f"{len(times)} frames sampled every {every:g}s from {duration:.2f}s of video, {len(segs)} segments")
