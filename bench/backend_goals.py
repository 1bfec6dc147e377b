"""Issue 10's goals, read off one ``python -m bench.backends`` result: the best runtime candidate
per figure (best samples, ratios to torch measured in the same run), % of the CPU's peak, met or
not. Printed by the bench and stored in the result file under ``goals``.

Goals: AMX host: image >= 6x torch fp32 and >= 2x torch bf16 at batch 8, >= 3x torch bf16 at
batch 1; text >= 1.5x torch bf16 (trimmed prompts) and >= 25x open_clip encode_text. VNNI-only
host or AMX hidden from oneDNN: image >= 3x torch fp32 at batch 8 (OpenVINO rows only there:
onnxruntime ignores ``ONEDNN_MAX_CPU_ISA`` and still used AMX). Every int8 row shipped: min cosine
>= 0.999 vs torch fp32 on real photos, alone vs batch <= 1e-5.
"""

from __future__ import annotations

from typing import Any, Optional

from . import isa

AMX_GOALS = (  # (encoder, batch key, baseline, goal, which runtime rows count)
    ("image", "8", "torch fp32", 6.0, "any"),
    ("image", "8", "torch bf16", 2.0, "any"),
    # Batch 1 two ways, each its own line: one call at a time (what a single `classify` waits
    # for), and single-image requests several in flight (a loaded server). torch runs one call.
    ("image", "1", "torch bf16", 3.0, "one call at a time"),
    ("image", "1", "torch bf16", 3.0, "single-image requests in flight"),
    ("text", "80", "torch bf16 trimmed", 1.5, "any"),
    ("text", "80", "open_clip fp32 (context 77)", 25.0, "any"),
)
VNNI_GOALS = (("image", "8", "torch fp32", 3.0, "any"),)
_REQUESTS = " [throughput, 1-image requests]"
_NOT_RUNTIME = ("dynamic-batch model]",)  # comparison rows: not what the runtime runs
MIN_COSINE = 0.999
BATCH_MAX_ABS = 1e-5
_BASELINES = ("torch", "open_clip")


def _counts(name: str, rows: str) -> bool:
    if name.endswith(_NOT_RUNTIME):
        return False
    if rows == "one call at a time":
        return "[throughput" not in name
    if rows == "single-image requests in flight":
        return name.endswith(_REQUESTS)
    return True


def _best(
    result: dict[str, Any], encoder: str, batch: str, as_vnni: bool, rows: str = "any"
) -> Optional[tuple[str, float]]:
    block = result.get(encoder)
    if not block or batch not in block["speed"]:
        return None
    backend_of = {r["candidate"]: r["backend"] for r in block["rows"]}
    best = None
    for name, s in block["speed"][batch].items():
        if name.startswith(_BASELINES) or not _counts(name, rows):
            continue
        base_name = name.split(" [")[0]
        if as_vnni and backend_of.get(base_name) != "openvino":
            continue
        if best is None or s["items_per_s_best"] > best[1]:
            best = (name, s["items_per_s_best"])
    return best


def goals(
    result: dict[str, Any], image_macs: Optional[float] = None, ghz: Optional[float] = None, cores: int = 2
) -> list[dict[str, Any]]:
    """One line per goal: target, candidate, measured ratio, met, and (image) % of peak."""
    as_vnni = str(result.get("isa_class", "")).endswith("-as-vnni") or result.get("isa_class") == "x86-avx512-vnni"
    amx = result.get("isa_class") == "x86-amx"
    table = AMX_GOALS if amx else VNNI_GOALS if as_vnni else ()
    unit = "amx_int8" if amx else "avx512_vnni_int8"
    out: list[dict[str, Any]] = []
    for encoder, batch, base, goal, rows in table:
        best = _best(result, encoder, batch, as_vnni, rows)
        speed = result.get(encoder, {}).get("speed", {}).get(batch, {})
        if best is None or base not in speed:
            continue
        name, items = best
        ratio = round(items / speed[base]["items_per_s_best"], 3)
        how = "" if rows == "any" else f" ({rows})"
        line = {
            "target": f"{encoder} batch {batch if encoder == 'image' else '80 prompts'} >= {goal:g}x {base}{how}",
            "candidate": name,
            "items_per_s": items,
            "measured": ratio,
            "goal": goal,
            "met": ratio >= goal,
        }
        medians = (speed[name].get("items_per_s_median"), speed[base].get("items_per_s_median"))
        if all(medians):
            # Best samples decide (the issue's method); the medians' ratio says how steady that is
            # (torch bf16's best samples ran up to 1.9x its median on this shared host).
            line["measured_medians"] = round(medians[0] / medians[1], 3)
        if encoder == "image":
            p = isa.peak(unit, cores, ghz, image_macs)
            if p is not None:
                line["percent_of_peak"] = round(100.0 * items / p["items_per_s"], 1)
                line["peak"] = p
        out.append(line)
    block = result.get("image")
    if block:
        for r in block["rows"]:
            if not r["graph"].startswith("int8-static") or (as_vnni and r["backend"] != "openvino"):
                continue
            ok = r["min_cosine_vs_torch_fp32"] >= MIN_COSINE and r.get("alone_vs_batch8_max_abs", 0.0) <= BATCH_MAX_ABS
            out.append(
                {
                    "target": f"{r['candidate']}: min cosine >= {MIN_COSINE:g} on real photos, alone vs batch "
                    f"<= {BATCH_MAX_ABS:g}",
                    "candidate": r["candidate"],
                    "measured": r["min_cosine_vs_torch_fp32"],
                    "alone_vs_batch8_max_abs": r.get("alone_vs_batch8_max_abs"),
                    "goal": MIN_COSINE,
                    "met": ok,
                }
            )
    return out


def format_goals(lines: list[dict[str, Any]]) -> str:
    rows = []
    for g in lines:
        peak = f", {g['percent_of_peak']}% of {g['peak']['unit']} peak" if "percent_of_peak" in g else ""
        medians = f"; medians {g['measured_medians']:g}" if "measured_medians" in g else ""
        rows.append(
            f"  {'met    ' if g['met'] else 'NOT MET'}  {g['target']}: {g['measured']:g} "
            f"({g['candidate']}{peak}{medians})"
        )
    return "\n".join(["goals (issue 10):", *rows]) if rows else "goals (issue 10): none for this ISA class"
