"""Encoder throughput: image (batch 1/8/32) and text (80 prompts, 1000 class names), against
torch fp32 and bf16, with the ISA each candidate ran on and its % of that ISA's peak.

Candidates run round-robin in one process (see common.Timer); figures are medians, with the
best sample kept too because the machine is shared.
"""

from __future__ import annotations

from typing import Any, Optional

import numpy as np

from . import isa
from .candidates import Candidate, image_candidates, peak_fraction, text_candidates, torch_bf16_copy
from .common import Timer, log, ratio, target, write_result
from .context import BenchContext

CLASS_NAME = "golden retriever"


def _summary(timer: Timer, items: int) -> dict[str, dict[str, float]]:
    return {
        name: {
            "median_s": round(float(np.median(s)), 5),
            "best_s": round(min(s), 5),
            "items_per_s": round(items / float(np.median(s)), 2),
            "best_items_per_s": round(items / min(s), 2),
            "rounds": len(s),
        }
        for name, s in timer.samples.items()
    }


def _annotate(rows: dict[str, dict], cands: dict[str, Candidate], macs: Optional[float], host: dict) -> None:
    """Library, precision, ISA unit and % of that unit's peak (best sample) for each row."""
    for name, row in rows.items():
        meta = cands[name].meta()
        row.update(meta)
        row["peak"] = peak_fraction(row["best_items_per_s"], meta["unit"], macs, host["clock_ghz"], host["cores"])


def host_info(ctx: BenchContext) -> dict[str, Any]:
    import os

    ghz, source = (ctx.clock_ghz, "--clock-ghz") if ctx.clock_ghz else isa.clock_ghz()
    return {**isa.summary(), "clock_ghz": ghz, "clock_source": source, "cores": int(ctx.threads or os.cpu_count() or 1)}


def _x(rows: dict, a: str, b: str) -> Optional[float]:
    """Speed-up of *a* over *b* on best samples (contention slows torch far more than
    onnxruntime, so median ratios on a loaded machine flatter clip-rt)."""
    if a not in rows or b not in rows:
        return None
    return ratio(rows[b]["best_s"], rows[a]["best_s"])


def image(ctx: BenchContext) -> dict[str, Any]:
    import torch

    torch.set_num_threads(2)
    tm = ctx.torch_model
    bf16 = torch_bf16_copy(tm.model)
    h, w = tm.image_size
    batches = {1: 8, 8: 4} if ctx.quick else {1: 10, 8: 6, 32: 2}
    host = host_info(ctx)
    macs = isa.vit_image_macs(tm.model)
    out: dict[str, Any] = {}
    rng = np.random.default_rng(0)
    for batch, rounds in batches.items():
        x = ctx.reference.pixels[:batch]
        if len(x) < batch:  # more than the photos: fill with noise
            x = np.concatenate([x, rng.standard_normal((batch - len(x), 3, h, w), dtype=np.float32)])
        x = np.ascontiguousarray(x)
        cands = image_candidates(ctx, batch, x, bf16)
        log(f"image throughput, batch {batch}, {rounds} rounds, {len(cands)} candidates")
        timer = Timer(rounds)
        with torch.inference_mode():
            timer.run({k: c.run for k, c in cands.items()}, warmup=1 if batch < 32 else 0)
        rows = _summary(timer, batch)
        _annotate(rows, cands, macs, host)
        for row_name, row in rows.items():
            row["x_torch_fp32"] = _x(rows, row_name, "torch fp32")
            row["x_torch_bf16"] = _x(rows, row_name, "torch bf16")
            if batch == 8 and cands[row_name].embed is not None:
                row.update(_accuracy(cands[row_name].embed, ctx))
        out[str(batch)] = rows
    targets = image_targets(out, host)
    result = {
        **ctx.result_meta(),
        "unit": "images/s",
        "host": host,
        "macs_per_image": macs,
        "batches": out,
        "targets": targets,
    }
    write_result("image_speed" + ctx.result_suffix, result, ctx.out_dir)
    return result


def _accuracy(embed: Any, ctx: BenchContext) -> dict[str, Any]:
    """Min cosine vs torch fp32 on the photos, and an image alone vs in a batch of 8: the
    same graph can round differently on another library (OpenVINO runs float parts in bf16
    on AMX hosts by default)."""
    ref = ctx.reference
    got = np.concatenate([embed(ref.pixels[i : i + 8]) for i in range(0, len(ref.pixels), 8)])
    unit = lambda a: a / np.linalg.norm(a, axis=-1, keepdims=True)  # noqa: E731
    cos = np.sum(unit(got.astype(np.float64)) * unit(ref.image_embeds.astype(np.float64)), axis=-1)
    x = ref.pixels[:8]
    alone = np.concatenate([embed(x[i : i + 1]) for i in range(len(x))])
    return {
        "min_cosine": round(float(cos.min()), 6),
        "batch_max_abs_diff": float(f"{np.abs(embed(x) - alone).max():.3g}"),
    }


def image_targets(out: dict[str, Any], host: dict[str, Any]) -> list[dict]:
    """Issue 10's goals for the host kind this run saw (see bench/README.md)."""
    b8, b1 = out.get("8", {}), out.get("1", {})
    amx_visible = host["levels"]["onednn_int8"] == "amx_int8"
    if amx_visible:
        return [
            target(
                "[AMX host] image clip-rt default vs torch bf16, batch 8",
                _x(b8, "clip-rt default", "torch bf16"),
                2.0,
                unit="x",
            ),
            target(
                "[AMX host] image clip-rt default vs torch fp32, batch 8",
                _x(b8, "clip-rt default", "torch fp32"),
                6.0,
                unit="x",
            ),
            target(
                "[AMX host] image clip-rt default vs torch bf16, batch 1",
                _x(b1, "clip-rt default", "torch bf16"),
                3.0,
                unit="x",
            ),
        ]
    # VNNI host, or AMX hidden from oneDNN: onnxruntime still sees AMX under
    # ONEDNN_MAX_CPU_ISA, so an onnxruntime figure here is not a VNNI figure.
    default_lib = b8.get("clip-rt default", {}).get("library")
    label = "[VNNI" + (" / AMX hidden" if host.get("onednn_max_cpu_isa") else "") + "]"
    if host.get("onednn_max_cpu_isa") and host["host"] == "AMX" and default_lib == "onnxruntime":
        ov = [k for k in b8 if k.startswith("openvino int8")]
        best = max(ov, key=lambda k: b8[k]["best_items_per_s"]) if ov else None
        row = target(
            f"{label} image {best or 'openvino int8'} vs torch fp32, batch 8 (onnxruntime ignores "
            "ONEDNN_MAX_CPU_ISA: its rows still use AMX)",
            _x(b8, best, "torch fp32") if best else None,
            3.0,
            unit="x",
        )
        return [row]
    return [
        target(
            f"{label} image clip-rt default vs torch fp32, batch 8",
            _x(b8, "clip-rt default", "torch fp32"),
            3.0,
            unit="x",
        )
    ]


def class_names(ctx: BenchContext, n: int) -> list[str]:
    """*n* real words from the CLIP BPE vocabulary (no class list ships offline)."""
    enc = ctx.torch_model.tokenizer.encoder  # type: ignore[attr-defined]
    words = [t[:-4] for t in enc if t.endswith("</w>") and t[:-4].isalpha() and len(t) >= 8]
    return words[1000 : 1000 + n]


def text(ctx: BenchContext) -> dict[str, Any]:
    import torch

    import clip_rt

    torch.set_num_threads(2)
    tm = ctx.torch_model
    bf16 = torch_bf16_copy(tm.model)
    host = host_info(ctx)
    prompt_sets = {"80 ImageNet templates": [t.format(CLASS_NAME) for t in clip_rt.templates.IMAGENET]}
    if not ctx.quick:
        prompt_sets["1000 class names"] = [f"a photo of a {c}." for c in class_names(ctx, 1000)]
    out: dict[str, Any] = {}
    for name, prompts in prompt_sets.items():
        cands = text_candidates(ctx, prompts, bf16)
        cached = clip_rt.load(ctx.bundle, threads=2, cache="memory")
        cached.encode_text(prompts)  # fill the cache: the timed calls are repeat runs
        cands["clip-rt default, cached"] = Candidate(lambda p=prompts, m=cached: m.encode_text(p), "memory", "-", None)
        rounds = 5 if len(prompts) <= 100 else 1
        log(f"text speed, {name}, {rounds} rounds, {len(cands)} candidates")
        timer = Timer(rounds)
        with torch.inference_mode():
            timer.run({k: c.run for k, c in cands.items()}, warmup=1 if len(prompts) <= 100 else 0)
        rows = _summary(timer, len(prompts))
        ids = tm.tokenizer(prompts)
        tokens = int((ids.argmax(dim=1) + 1).max())
        macs = isa.text_macs(tm.model, tokens)
        _annotate(rows, cands, macs, host)
        for row_name, row in rows.items():
            row["x_open_clip"] = _x(rows, row_name, "open_clip encode_text (context 77, fp32)")
            row["x_torch_bf16_trimmed"] = _x(rows, row_name, "torch bf16, trimmed")
        out[name] = {"trimmed_tokens": tokens, "rows": rows}
    t80 = out["80 ImageNet templates"]["rows"]
    targets = [
        target(
            "text clip-rt default (uncached) vs torch bf16 on trimmed prompts, 80 prompts",
            _x(t80, "clip-rt default", "torch bf16, trimmed"),
            1.5,
            unit="x",
        ),
        target(
            "text clip-rt default (uncached) vs open_clip encode_text, 80 prompts",
            _x(t80, "clip-rt default", "open_clip encode_text (context 77, fp32)"),
            25.0,
            unit="x",
        ),
        target(
            "text clip-rt default (cached) vs open_clip encode_text, 80 prompts",
            _x(t80, "clip-rt default, cached", "open_clip encode_text (context 77, fp32)"),
            25.0,
            unit="x",
        ),
    ]
    result = {**ctx.result_meta(), "unit": "prompts/s", "host": host, "sets": out, "targets": targets}
    write_result("text_speed" + ctx.result_suffix, result, ctx.out_dir)
    return result
