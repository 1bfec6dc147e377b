"""The model-family table: for bundles exported here, the parity the export measured (from each
manifest) and the int8 speed-up on this CPU, measured side by side.

    python -m bench.models_table --bundle ViT=DIR --bundle SigLIP=DIR ... [--rounds 5]
    python -m bench.models_table --merge --bundle RoBERTa=DIR [--write-docs]

For each bundle: image graphs fp32 and int8 on a batch of 8 photos, text graphs on 64 prompts
(each precision timed round-robin with the other, two threads, medians). Writes
``results/models.json``, then ``models/families.json`` (what ``clip-rt models --available``
shows, torch-free) and, with ``--write-docs``, the generated tables of ``docs/models.md``
(``python -m bench.readme`` does the same for every page). With ``--merge``, only the bundles
given are measured: their rows are added to (or replace) those of the existing
``results/models.json``, and every other row keeps its figures with the time, command and load
average it was measured with (each row records its own under ``measured``; the docs list every
command).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from .common import RESULTS_DIR, Timer, log, write_result
from .models import ort_session

REPO = Path(__file__).resolve().parent.parent
FAMILIES_JSON = REPO / "models" / "families.json"
DOC = REPO / "docs" / "models.md"
# Architecture name patterns of each family (first match wins), for `models --available`.
FAMILY_PATTERNS: list[tuple[str, str]] = [
    ("SigLIP2", r"SigLIP2"),
    ("SigLIP", r"SigLIP"),
    ("MobileCLIP", r"^MobileCLIP"),
    ("ConvNeXt", r"^convnext"),
    ("ResNet (CLIP)", r"^RN\d"),
    ("XLM-R multilingual", r"^xlm-roberta|xlm-v"),
    ("NLLB multilingual", r"^nllb-clip"),
    ("RoBERTa", r"^roberta-"),
    ("mT5 multilingual", r"^mt5-"),
    ("CoCa", r"^coca_"),
    ("EVA", r"^EVA"),
    ("Perception Encoder", r"^PE-"),
    ("ViTamin", r"^ViTamin"),
    ("timm image towers", r"^(swin|vit)_"),
    ("ViT (CLIP)", r"^ViT-"),
]


def _tokenizer_kind(bundle: Path, manifest: Any) -> str:
    if manifest.text.tokenizer_kind == "clip_bpe":
        return "CLIP BPE"
    model = json.loads((bundle / manifest.text.tokenizer_file).read_text(encoding="utf-8"))["model"]["type"]
    return f"Hugging Face {model} ({manifest.text.clean})"


def _prompts() -> list[str]:
    from clip_rt.templates import IMAGENET

    return [t.format(c) for c in ("cat", "dog", "car", "tree") for t in IMAGENET[:16]]


def measure(bundle: Path, rounds: int) -> dict[str, Any]:
    from clip_rt.bundle.manifest import read_manifest
    from clip_rt.inputs.hf_tokenizer import open_tokenizer
    from clip_rt.inputs.preprocess import Preprocessor
    from clip_rt_export.calibration import HELD_OUT_PHOTOS, load_photos

    m = read_manifest(bundle)
    pre = Preprocessor(m.image)
    photos = [img for _, img in load_photos(HELD_OUT_PHOTOS)][:8]
    pixels = np.stack([pre(img) for img in photos]).astype(np.float32)
    tok = open_tokenizer(bundle / m.text.tokenizer_file, m.text).encode_batch(_prompts())
    ids = tok.ids[:, : tok.max_length] if m.text.dynamic_sequence else tok.ids
    speed: dict[str, Any] = {}
    for encoder, feed in (("image", {"pixel_values": pixels}), ("text", {"input_ids": ids})):
        sessions = {p: ort_session(bundle / m.graph(p, encoder).file) for p in m.precisions if p != "fp16"}
        timer = Timer(rounds)
        med = timer.run({p: (lambda s=s: s.run(None, feed)) for p, s in sessions.items()})
        speed[encoder] = {p: round(v, 4) for p, v in med.items()}
        if "int8" in med:
            speed[encoder]["int8_speedup"] = round(med["fp32"] / med["int8"], 3)
        log(f"{m.architecture} {encoder}: " + ", ".join(f"{p} {v * 1000:.0f} ms" for p, v in med.items()))
    parity = {
        p: {
            e: {
                "max_abs_diff": f.max_abs_diff,
                "min_cosine": round(f.min_cosine, 6),
                "top1_agreement": f.top1_agreement,
                "tolerance": f.tolerance,
            }
            for e, f in encs.items()
        }
        for p, encs in m.parity.items()
    }
    q = m.quantization_of("int8", "image")
    return {
        "architecture": m.architecture,
        "bundle": m.name,
        "tokenizer": _tokenizer_kind(bundle, m),
        "scoring": m.scoring,
        "dynamic_sequence": m.text.dynamic_sequence,
        "parity": parity,
        "int8_image_ops": list(q.ops) if q else None,
        "speed_s": speed,
        "batch": {"image": len(pixels), "text": len(ids)},
        "notes": [n for n in m.notes if n.startswith(("int8:", "random weights"))],
    }


def _fmt_cos(row: dict[str, Any], precision: str) -> str:
    p = row["parity"].get(precision)
    if not p:
        return "-"
    return f"{p['image']['min_cosine']:.4f} / {p['text']['min_cosine']:.4f}"


def _fmt_speedup(speed: dict[str, Any]) -> str:
    return f"{speed['int8_speedup']}x" if "int8_speedup" in speed else "-"


def render_table(rows: dict[str, dict[str, Any]]) -> str:
    lines = [
        "| family | architecture exported | tokenizer | scoring | fp32 max abs diff (image / text) | "
        "fp16 min cosine | int8 min cosine | int8 speed-up image / text |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for family, row in rows.items():
        fp32 = row["parity"]["fp32"]
        speed = row["speed_s"]
        lines.append(
            f"| {family} | {row['architecture']} | {row['tokenizer']} | {row['scoring']} | "
            f"{fp32['image']['max_abs_diff']:.1e} / {fp32['text']['max_abs_diff']:.1e} | {_fmt_cos(row, 'fp16')} | "
            f"{_fmt_cos(row, 'int8')} | {_fmt_speedup(speed['image'])} / {_fmt_speedup(speed['text'])} |"
        )
    return "\n".join(lines)


def write_families(result: dict[str, Any]) -> None:
    families = {
        "about": "Model families clip-rt exports, with the parity and int8 speed-up measured here (random weights "
        "seed 0, this project's CPU; bench/results/models.json). Written by `python -m bench.models_table`; "
        "shown by `clip-rt models --available`.",
        "measured": ", ".join(sorted({row["measured"]["when"] for row in result["rows"].values()})),
        "host_isa": result["machine"].get("isa"),
        "patterns": [{"family": f, "pattern": p} for f, p in FAMILY_PATTERNS],
        "families": {
            family: {
                "architecture": row["architecture"],
                "tokenizer": row["tokenizer"],
                "scoring": row["scoring"],
                "fp32_max_abs_diff": [row["parity"]["fp32"][e]["max_abs_diff"] for e in ("image", "text")],
                "fp16_min_cosine": [row["parity"]["fp16"][e]["min_cosine"] for e in ("image", "text")]
                if "fp16" in row["parity"]
                else None,
                "int8_min_cosine": [row["parity"]["int8"][e]["min_cosine"] for e in ("image", "text")]
                if "int8" in row["parity"]
                else None,
                "int8_speedup": [row["speed_s"][e].get("int8_speedup") for e in ("image", "text")],
                "measured": row["measured"]["when"],
            }
            for family, row in result["rows"].items()
        },
    }
    FAMILIES_JSON.write_text(json.dumps(families, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    log(f"wrote {FAMILIES_JSON}")


def write_docs(result: dict[str, Any]) -> None:
    """The family table of DOC, regenerated from the results (bench.readme's ``model-families``
    section: the same renderer as every other generated table)."""
    from .readme import Results, render_page

    text = DOC.read_text(encoding="utf-8")
    DOC.write_text(render_page(text, Results(RESULTS_DIR), str(DOC)), encoding="utf-8")
    log(f"updated {DOC}")


def _previous_rows() -> dict[str, dict[str, Any]]:
    """The rows of the existing results/models.json, each with the time, command and load average
    it was measured with (files written before rows carried their own take the file's)."""
    path = RESULTS_DIR / "models.json"
    if not path.is_file():
        raise SystemExit(f"--merge: {path} does not exist; measure every family once without --merge")
    old = json.loads(path.read_text(encoding="utf-8"))
    stamp = {
        "when": old["when"],
        "command": old["command"],
        "load_average_1_5_15min": old.get("machine", {}).get("load_average_1_5_15min"),
    }
    return {family: {**row, "measured": row.get("measured", stamp)} for family, row in old["rows"].items()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", action="append", default=[], metavar="FAMILY=DIR")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--write-docs", action="store_true")
    parser.add_argument(
        "--merge",
        action="store_true",
        help="measure only the bundles given and merge their rows into the existing "
        "results/models.json (the other rows keep their figures and commands)",
    )
    args = parser.parse_args(argv)
    if args.merge and not args.bundle:
        parser.error("--merge needs at least one --bundle FAMILY=DIR")
    previous = _previous_rows() if args.merge else {}
    rows = {}
    for spec in args.bundle:
        family, _, path = spec.partition("=")
        rows[family] = measure(Path(path), args.rounds)
    cmd = "python -m bench.models_table " + " ".join(argv if argv is not None else sys.argv[1:])
    path = write_result("models", {"command": cmd, "rows": rows}, out_dir=RESULTS_DIR)
    result = json.loads(path.read_text(encoding="utf-8"))
    stamp = {
        "when": result["when"],
        "command": cmd,
        "load_average_1_5_15min": result["machine"].get("load_average_1_5_15min"),
    }
    for row in result["rows"].values():
        row["measured"] = stamp
    result["rows"] = {**previous, **result["rows"]}
    path.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    write_families(result)
    if args.write_docs:
        write_docs(result)


if __name__ == "__main__":
    main()
