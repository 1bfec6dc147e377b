"""Turn benchmark results into the runtime's decision table (``clip_rt/engine/backends/choices.json``).

Rows are ranked by speed relative to the torch fp32 baseline measured in the same run (image:
``torch fp32`` at batch 8; text: ``open_clip fp32`` encode_text at context 77), so that rows of
one CPU class that come from different runs (another host of that class, or an AMX host with
AMX hidden from oneDNN) compare fairly. Sources:

- ``results/backends-<class>.json`` (``python -m bench.backends``): every row of this host's
  class. From ``backends-x86-amx-as-vnni.json`` (``ONEDNN_MAX_CPU_ISA=AVX512_CORE_VNNI``) only the
  OpenVINO rows count for ``x86-avx512-vnni``: onnxruntime ignores that variable.
- ``results/text_queue-<class>.json`` (``python -m bench.text_queue``): the text row of the
  backend, graph and compute measured there runs prompt batches through the backend's throughput
  queue (``folders: throughput``) when the queue was faster at 80 prompts in that A/B; its score
  stays the latency figure of the backends run.
- ``results/variants.json`` and ``results/text_speed.json`` when their machine is AVX-512 VNNI
  without AMX (the project's earlier reference host): onnxruntime and OpenVINO rows for
  ``x86-avx512-vnni``.

Only modes the runtime offers become rows: an int8 graph in f32 or bf16 compute, the fp32
graph in f32 or bf16 compute (bf16 only for OpenVINO), no fp16 graph on the CPU. Where two
sources measured the same mode (CPU class, encoder, backend, graph, compute), the newer one's
row is kept: a re-measurement of a mode replaces it.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Optional

MIN_COSINE = 0.99  # a row whose parity in the bench is worse than int8's export gate is left out


def _portable_command(command: Optional[str]) -> Optional[str]:
    """The command with absolute paths cut to their last component (what was measured, not the
    folders of the machine it ran on: the table ships to users)."""
    if not command:
        return command
    return " ".join(Path(part).name if part.startswith("/") else part for part in command.split(" "))


def _source(name: str, data: dict[str, Any], path: Path) -> dict[str, Any]:
    machine = data.get("machine", {})
    return {
        "file": f"bench/results/{path.name}",
        "command": _portable_command(data.get("command")),
        "when": data.get("when"),
        "cpu": machine.get("cpu_model"),
        "isa": machine.get("isa"),
        "env": data.get("env", {}),
        "note": data.get("note", ""),
    }


def _backends_rows(path: Path, sources: dict[str, Any]) -> list[dict[str, Any]]:
    data = json.loads(path.read_text())
    label = data["isa_class"]
    as_vnni = label.endswith("-as-vnni")
    isa = "x86-avx512-vnni" if as_vnni else label
    src = path.stem
    sources[src] = _source(src, data, path)
    rows = []
    for encoder in ("image", "text"):
        block = data.get(encoder)
        if not block:
            continue
        parity = {r["candidate"]: r for r in block["rows"]}
        if encoder == "image":
            b8, b1 = block["speed"]["8"], block["speed"]["1"]
            base = b8["torch fp32"]["items_per_s_best"]
            bf16 = b8["torch bf16"]["items_per_s_best"]
        else:
            b8, b1 = block["speed"]["80"], {}
            base = b8["open_clip fp32 (context 77)"]["items_per_s_best"]
            bf16 = b8["torch bf16 trimmed"]["items_per_s_best"]
        for name, p in parity.items():
            if as_vnni and (p["backend"] != "openvino" or p["compute"] == "bf16"):
                continue  # onnxruntime still used AMX in that run; bf16 ran emulated (no AVX512-BF16 either)
            if p["min_cosine_vs_torch_fp32"] < MIN_COSINE:
                continue
            latency = b8[name]["items_per_s_best"]
            throughput = b8.get(name + " [throughput]", {}).get("items_per_s_best", 0.0)
            speed, folders = (throughput, "throughput") if throughput > latency else (latency, "latency")
            row = {
                "isa": isa,
                "encoder": encoder,
                "backend": p["backend"],
                "graph": p["graph"],
                "compute": p["compute"] if p["backend"] == "openvino" else "graph",
                "folders": folders,
                "score": round(speed / base, 3),
                "items_per_s": speed,
                "unit": "images/s, batch 8" if encoder == "image" else "prompts/s, 80 trimmed prompts",
                "x torch fp32" if encoder == "image" else "x open_clip fp32": round(speed / base, 3),
                "x torch bf16" if encoder == "image" else "x torch bf16 trimmed": round(speed / bf16, 3),
                "min_cosine_vs_torch_fp32": p["min_cosine_vs_torch_fp32"],
                "source": src,
            }
            if name in b1:
                row["batch1_images_per_s"] = b1[name]["items_per_s_best"]
            rows.append(row)
    return rows


def _vnni_host(data: dict[str, Any]) -> bool:
    isa = set(data.get("machine", {}).get("isa", []))
    return "avx512_vnni" in isa and "amx_int8" not in isa


def _variants_rows(path: Path, sources: dict[str, Any]) -> list[dict[str, Any]]:
    data = json.loads(path.read_text())
    if not _vnni_host(data):
        return []
    sources["variants"] = _source("variants", data, path)
    wanted = {
        ("fp32", None): ("onnxruntime", "fp32", "graph"),
        ("int8-dynamic", None): ("onnxruntime", "int8-dynamic", "graph"),
        ("int8-static-minmax", None): ("onnxruntime", "int8-static", "graph"),
        ("openvino fp32", "openvino"): ("openvino", "fp32", "f32"),
        ("openvino int8-static-minmax (QDQ)", "openvino"): ("openvino", "int8-static", "f32"),
    }
    rows = []
    for v in data["variants"]:
        session = v.get("session")
        key = (v["graph"], "openvino" if isinstance(session, dict) and "openvino" in session else None)
        if session and key[1] is None:
            continue  # thread/spinning variants of a graph
        if key not in wanted:
            continue
        backend, graph, compute = wanted[key]
        rows.append(
            {
                "isa": "x86-avx512-vnni",
                "encoder": "image",
                "backend": backend,
                "graph": graph,
                "compute": compute,
                "folders": "latency",
                "score": v["x_torch_fp32_best"],
                "items_per_s": v["best_images_per_s"],
                "unit": "images/s, batch 8",
                "x torch fp32": v["x_torch_fp32_best"],
                "min_cosine_vs_torch_fp32": v.get("min_cosine"),
                "source": "variants",
            }
        )
    return rows


def _text_speed_rows(path: Path, sources: dict[str, Any]) -> list[dict[str, Any]]:
    data = json.loads(path.read_text())
    if not _vnni_host(data):
        return []
    sources["text_speed"] = _source("text_speed", data, path)
    s = data["sets"]["80 ImageNet templates"]
    base = 80 / s["open_clip fp32"]["best_s"]
    rows = []
    for name, graph in (("clip-rt fp32", "fp32"), ("clip-rt int8", "int8-dynamic")):
        speed = round(80 / s[name]["best_s"], 2)
        rows.append(
            {
                "isa": "x86-avx512-vnni",
                "encoder": "text",
                "backend": "onnxruntime",
                "graph": graph,
                "compute": "graph",
                "folders": "latency",
                "score": round(speed / base, 3),
                "items_per_s": speed,
                "unit": "prompts/s, 80 trimmed prompts (encode_text, tokenising included)",
                "x open_clip fp32": round(speed / base, 3),
                "source": "text_speed",
            }
        )
    return rows


def build_table(results: Path) -> dict[str, Any]:
    sources: dict[str, Any] = {}
    rows: list[dict[str, Any]] = []
    for path in sorted(results.glob("backends-*.json")):
        rows += _backends_rows(path, sources)
    if (results / "variants.json").exists():
        rows += _variants_rows(results / "variants.json", sources)
    if (results / "text_speed.json").exists():
        rows += _text_speed_rows(results / "text_speed.json", sources)
    rows = _newest_per_mode(rows, sources)
    for path in sorted(results.glob("text_queue-*.json")):
        _apply_text_queue(path, rows, sources)
    rows.sort(key=lambda r: (r["isa"], r["encoder"], -r["score"]))
    startup = {}
    for path in sorted(results.glob("startup-*.json")):
        isa, block = _startup(path, sources)
        startup[isa] = block
    return {
        "about": (
            "Backend decision table of clip-rt's runtime (clip_rt/engine/backends/choose.py): measured rows, "
            "ranked per CPU class and encoder by 'score' (speed over the torch fp32 baseline of the same run). "
            "Generated by `python -m bench.backends --write-table` from the sources below; do not edit by hand."
        ),
        "generated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "sources": sources,
        "rows": rows,
        "startup": startup,
    }


def _startup(path: Path, sources: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """``results/startup-<class>.json`` (``python -m bench.startup_costs``) as the table's
    ``startup`` block of that CPU class: per backend its import time, and per "<encoder> <mode>"
    the session's start, first call and memory (medians of fresh processes, warm caches)."""
    data = json.loads(path.read_text())
    sources[path.stem] = _source(path.stem, data, path)
    block: dict[str, Any] = {"source": path.stem}
    for row in data["rows"]:
        entry = block.setdefault(row["backend"], {})
        entry["import_s"] = max(float(entry.get("import_s", 0.0)), float(row["import_s"]))
        entry[f"{row['encoder']} {row['mode']}"] = {k: row[k] for k in ("open_s", "first_call_s", "hold_mb")}
    return data["isa_class"], block


def _newest_per_mode(rows: list[dict[str, Any]], sources: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per (CPU class, encoder, backend, graph, compute): the one from the newest source;
    sources left with no row are dropped."""
    best: dict[tuple, dict[str, Any]] = {}
    for row in rows:
        key = (row["isa"], row["encoder"], row["backend"], row["graph"], row["compute"])
        held = best.get(key)
        when = str(sources[row["source"]].get("when") or "")
        if held is None or when > str(sources[held["source"]].get("when") or ""):
            best[key] = row
    kept = list(best.values())
    used = {r["source"] for r in kept}
    for name in [n for n in sources if n not in used]:
        del sources[name]
    return kept


def _apply_text_queue(path: Path, rows: list[dict[str, Any]], sources: dict[str, Any]) -> None:
    """Mark the text row measured in *path* (bench.text_queue) as queued where the queue won."""
    data = json.loads(path.read_text())
    label = data["isa_class"]
    isa = "x86-avx512-vnni" if label.endswith("-as-vnni") else label
    cand = data["candidate"]
    at80 = data["sizes"]["80"]
    for row in rows:
        if (row["isa"], row["encoder"], row["backend"], row["graph"], row["compute"]) != (
            isa,
            "text",
            cand["backend"],
            cand["graph"],
            cand["compute"],
        ):
            continue
        sources[path.stem] = _source(path.stem, data, path)
        row["queue_x_latency"] = at80["queue_x_latency_best"]
        row["queue_x_latency_per_round_median"] = at80["queue_x_latency_per_round_median"]
        row["queue_source"] = path.stem
        row["folders"] = "throughput" if data["queue_faster"] else "latency"


def write_table(results: Path, out: Path, table: Optional[dict[str, Any]] = None) -> Path:
    table = table or build_table(results)
    out.write_text(json.dumps(table, indent=1) + "\n", encoding="utf-8")
    return out
