"""Parity of each bundle precision with open_clip fp32 on real photos.

Weights are random (seeded), so absolute zero-shot accuracy means nothing here; what is
measured is agreement between precisions of the *same* model on the *same* inputs: embedding
max abs diff and min cosine, and whether the zero-shot top-1 label (LABELS x SIMPLE) matches.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from clip_rt_fixtures.photos import LABELS

from .common import log, target, write_result
from .context import PRECISIONS, BenchContext
from .reference import SIMPLE, compare, ensemble, zeroshot_top1


def run(ctx: BenchContext) -> dict[str, Any]:
    import clip_rt

    ref = ctx.reference
    prompts = [t.format(label) for label in LABELS for t in SIMPLE]
    rows = []
    sims = np.sort(ref.image_embeds @ ref.class_embeds.T, axis=1)
    margins = sims[:, -1] - sims[:, -2]
    variants = [(p, p, ctx.bundle) for p in PRECISIONS]
    for label, precision, bundle in variants:
        log(f"parity {label}")
        model = clip_rt.load(bundle, precision=precision, threads=2, cache=False)
        # The image graph on open_clip's own pixels: the graph alone.
        graph_img = model.session("image").run({"pixel_values": ref.pixels})[0]
        text = model.encode_text(prompts)
        # The whole runtime: clip_rt decoding + preprocessing + tokeniser + both graphs.
        rt_img = model.encode_image(ref.paths)
        rt_top1 = zeroshot_top1(rt_img, ensemble(text, len(SIMPLE)))
        # Random weights put the classes close together (cosine margins down to 1e-4), so a
        # flip is reported with the torch fp32 margin it had to overcome.
        # Batch independence: each input alone vs within a batch (graph on 8 photos; runtime text).
        x = ref.pixels[:8]
        together = model.session("image").run({"pixel_values": x})[0]
        alone = np.concatenate([model.session("image").run({"pixel_values": x[i : i + 1]})[0] for i in range(len(x))])
        some = prompts[:: max(1, len(prompts) // 8)][:8]
        text_alone = np.concatenate([model.encode_text([p]) for p in some])
        batch_diff = {
            "image": float(f"{np.abs(together - alone).max():.3g}"),
            "text": float(f"{np.abs(model.encode_text(some) - text_alone).max():.3g}"),
        }
        quant = {
            enc: (q.kind if (q := model.manifest.quantization_of(precision, enc)) else None)
            for enc in ("image", "text")
        }
        flips = [
            {
                "photo": ref.paths[i].name,
                "fp32_label": LABELS[ref.top1[i]],
                "label": LABELS[rt_top1[i]],
                "fp32_top1_margin": round(float(margins[i]), 5),
            }
            for i in np.flatnonzero(rt_top1 != ref.top1)
        ]
        rows.append(
            {
                "precision": label,
                "image": {**compare(graph_img, ref.image_embeds), "samples": len(graph_img)},
                "text": {**compare(text, ref.text_embeds), "samples": len(text)},
                "runtime_image": compare(rt_img, ref.image_embeds),
                "top1_agreement": round(float(np.mean(rt_top1 == ref.top1)), 4),
                "images": len(rt_top1),
                "top1_flips": flips,
                "batch_max_abs_diff": batch_diff,
                "quantization": quant,
            }
        )
    int8 = next(r for r in rows if r["precision"] == "int8")
    targets = [
        target("int8 top-1 agreement with torch fp32", int8["top1_agreement"], 0.99),
        target("int8 image min cosine vs torch fp32 (real photos)", int8["image"]["min_cosine"], 0.999),
        target("int8 text min cosine vs torch fp32", int8["text"]["min_cosine"], 0.999),
        target(
            "int8 image alone vs in a batch of 8, max abs diff",
            int8["batch_max_abs_diff"]["image"],
            1e-5,
            higher_is_better=False,
        ),
        target(
            "int8 text alone vs in a batch of 8, max abs diff",
            int8["batch_max_abs_diff"]["text"],
            1e-5,
            higher_is_better=False,
        ),
    ]
    result = {
        **ctx.result_meta(),
        "labels": len(LABELS),
        "templates": "SIMPLE",
        "rows": rows,
        "targets": targets,
        "fp32_top1_margin": {"min": round(float(margins.min()), 5), "median": round(float(np.median(margins)), 5)},
    }
    write_result("parity", result, ctx.out_dir)
    return result
