"""End-to-end zero-shot classification of a folder of multi-megapixel JPEGs, decode included,
against the origin's loop (open_clip, one image at a time, prompts re-encoded per image)."""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from clip_rt_fixtures.photos import LABELS

from .common import Timer, log, ratio, target, write_result
from .context import BenchContext
from .models import session_options
from .reference import SIMPLE


def origin_loop(ctx: BenchContext, paths: list) -> list[str]:
    """The workflow clip-rt replaces, as its users wrote it."""
    import torch
    from PIL import Image

    tm = ctx.torch_model
    prompts = [t.format(label) for label in LABELS for t in SIMPLE]
    labels = []
    with torch.no_grad():
        for p in paths:
            image = tm.preprocess(Image.open(p)).unsqueeze(0)
            img = tm.model.encode_image(image)
            txt = tm.model.encode_text(tm.tokenizer(prompts))
            img = img / img.norm(dim=-1, keepdim=True)
            txt = txt / txt.norm(dim=-1, keepdim=True)
            cls = txt.reshape(len(LABELS), len(SIMPLE), -1).mean(dim=1)
            cls = cls / cls.norm(dim=-1, keepdim=True)
            probs = (100.0 * img @ cls.T).softmax(dim=-1)
            labels.append(LABELS[int(probs.argmax())])
    return labels


def _runtime(ctx: BenchContext, precision: str, draft: bool) -> Callable[[list], list[str]]:
    import clip_rt

    bundle = ctx.bundle

    def classify(paths: list) -> list[str]:
        # A fresh model each call with no prompt cache: the text side is paid once per folder.
        model = clip_rt.load(
            bundle, precision=precision, threads=2, cache=False, draft=draft, session_options=session_options(2)
        )
        return [c.label for c in model.classify(paths, list(LABELS), SIMPLE, batch_size=8)]

    return classify


def draft_pixel_effect(ctx: BenchContext, paths: list) -> dict[str, float]:
    from clip_rt.bundle.manifest import read_manifest
    from clip_rt.inputs.preprocess import Preprocessor

    cfg = read_manifest(ctx.bundle).image
    full, draft = Preprocessor(cfg), Preprocessor(cfg, draft=True)
    diffs = np.stack([np.abs(full(full.load(p)) - draft(draft.load(p))) for p in paths])
    std = np.array(cfg.std, dtype=np.float32).reshape(1, 3, 1, 1)
    in_8bit = diffs * std * 255.0  # normalised units back to 0-255 pixel levels
    return {
        "max_abs_diff_levels": round(float(in_8bit.max()), 2),
        "mean_abs_diff_levels": round(float(in_8bit.mean()), 3),
    }


def run(ctx: BenchContext) -> dict[str, Any]:
    import torch

    torch.set_num_threads(2)
    paths = ctx.photo_paths[: 6 if ctx.quick else 12]
    cands: dict[str, Callable[[list], list[str]]] = {
        "origin loop (open_clip fp32)": lambda ps: origin_loop(ctx, ps),
        "clip-rt int8, draft": _runtime(ctx, "int8", True),
        "clip-rt int8": _runtime(ctx, "int8", False),
        "clip-rt fp32": _runtime(ctx, "fp32", False),
    }
    labels: dict[str, list[str]] = {}
    timer = Timer(rounds=1 if ctx.quick else 2)
    log(f"end-to-end on {len(paths)} JPEGs, {timer.rounds} rounds")
    timer.run({k: (lambda k=k, f=f: labels.__setitem__(k, f(paths))) for k, f in cands.items()}, warmup=0)
    origin = labels["origin loop (open_clip fp32)"]
    rows = {}
    for name, secs in timer.samples.items():
        agree = float(np.mean([a == b for a, b in zip(labels[name], origin)]))
        rows[name] = {
            "median_s": round(float(np.median(secs)), 3),
            "best_s": round(min(secs), 3),
            "images_per_s": round(len(paths) / float(np.median(secs)), 2),
            "top1_same_as_origin": round(agree, 4),
        }
    base = rows["origin loop (open_clip fp32)"]
    for row in rows.values():
        row["x_origin"] = ratio(row["images_per_s"], base["images_per_s"])
        row["x_origin_best"] = ratio(base["best_s"], row["best_s"])
    best = rows["clip-rt int8, draft"]
    targets = [
        target("end-to-end clip-rt int8, draft vs origin loop (best samples)", best["x_origin_best"], 5.0, unit="x"),
        target("end-to-end top-1 same as origin (int8, draft)", best["top1_same_as_origin"], 0.99),
    ]
    draft = draft_pixel_effect(ctx, paths)
    draft["top1_draft_vs_full_decode"] = round(
        float(np.mean([a == b for a, b in zip(labels["clip-rt int8, draft"], labels["clip-rt int8"])])), 4
    )
    result = {
        **ctx.result_meta(),
        "images": len(paths),
        "megapixels": ctx.megapixels,
        "labels": len(LABELS),
        "templates": "SIMPLE",
        "rows": rows,
        "draft_effect": draft,
        "targets": targets,
    }
    write_result("end_to_end", result, ctx.out_dir)
    return result
