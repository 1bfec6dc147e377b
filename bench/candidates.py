"""Speed candidates for the image and text towers, each with the library and ISA it runs on.

A candidate is a zero-argument callable plus ``meta``: library (torch / onnxruntime /
openvino), precision, and ``unit``, the matrix unit that library can use on this host under
the current environment (bench/isa.py), from which the % of peak is derived.

OpenVINO candidates are added when ``import openvino`` works (``pip install openvino``); they
run the bundle's graphs through OpenVINO's own API (the runtime's OpenVINO backend is measured
through ``clip_rt.load(...)`` once it exists, as the "clip-rt default" row).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from . import isa


@dataclass
class Candidate:
    run: Callable[[], Any]
    library: str
    precision: str
    unit: Optional[str]  # bench.isa unit, e.g. "amx_int8"; None when unknown (emulated bf16)
    notes: dict[str, Any] = field(default_factory=dict)
    # pixels (N, 3, H, W) -> embeddings, for the accuracy and batch-independence columns
    embed: Optional[Callable[[np.ndarray], np.ndarray]] = field(default=None, repr=False)

    def meta(self) -> dict[str, Any]:
        return {"library": self.library, "precision": self.precision, "unit": self.unit, **self.notes}


def levels() -> dict[str, str]:
    return isa.isa_levels(isa.cpu_flags())


def _unit(level: str) -> Optional[str]:
    return level if level in isa.MACS_PER_CYCLE else None


def torch_bf16_copy(model: Any) -> Any:
    import torch

    return copy.deepcopy(model).to(torch.bfloat16).eval()


def runtime_meta(model: Any) -> dict[str, Any]:
    """What a clip_rt.load() model runs: precision, and backend where the runtime reports one."""
    backend = getattr(model, "backend", None)
    name = getattr(backend, "name", backend) if backend is not None else "onnxruntime"
    return {"precision": model.precision, "library": str(name)}


def _unit_for(library: str, precision: str, lv: dict[str, str]) -> Optional[str]:
    if library == "onnxruntime":
        return _unit(lv["onnxruntime_int8"] if precision == "int8" else lv["onnxruntime_fp32"])
    key = {"int8": "onednn_int8", "bf16": "onednn_bf16"}.get(precision, "onednn_fp32")
    return _unit(lv[key])


def image_candidates(ctx: Any, batch: int, x: np.ndarray, bf16_model: Any) -> dict[str, Candidate]:
    import torch

    import clip_rt

    from .models import session_options

    lv = levels()
    tm = ctx.torch_model
    xt = torch.from_numpy(x)
    xb = xt.to(torch.bfloat16)
    out = {
        "torch fp32": Candidate(lambda: tm.model.encode_image(xt), "torch", "fp32", _unit(lv["onednn_fp32"])),
        "torch bf16": Candidate(lambda: bf16_model.encode_image(xb), "torch", "bf16", _unit(lv["onednn_bf16"])),
    }
    default = clip_rt.load(ctx.bundle, threads=2, cache=False)
    meta = runtime_meta(default)
    out["clip-rt default"] = Candidate(
        lambda s=default.session("image"): s.run({"pixel_values": x}),
        meta["library"],
        meta["precision"],
        _unit_for(meta["library"], meta["precision"], lv),
        {"what": "clip_rt.load(bundle) defaults"},
        embed=lambda px, s=default.session("image"): s.run({"pixel_values": px})[0],
    )
    for precision in ("int8", "fp32"):
        model = clip_rt.load(
            ctx.bundle, precision=precision, threads=2, cache=False, session_options=session_options(2)
        )
        out[f"clip-rt {precision} (onnxruntime)"] = Candidate(
            lambda s=model.session("image"): s.run({"pixel_values": x}),
            "onnxruntime",
            precision,
            _unit_for("onnxruntime", precision, lv),
            embed=lambda px, s=model.session("image"): s.run({"pixel_values": px})[0],
        )
    out.update(openvino_candidates(ctx.bundle, "image", {0: x}, batch, lv))
    return out


def openvino_candidates(bundle: Path, encoder: str, feed: dict, batch: int, lv: dict[str, str]) -> dict[str, Candidate]:
    """OpenVINO on the bundle's int8 graph (latency: one request; throughput: 2 streams, the
    batch split across them) and, where the CPU has AMX-BF16, on the fp32 graph with the bf16
    inference hint. Never the bf16 hint without AMX: it collapses (0.04x torch fp32, issue 10)."""
    try:
        import openvino as ov
    except ImportError:
        return {}
    from clip_rt.bundle.manifest import read_manifest

    manifest = read_manifest(bundle)
    core = ov.Core()
    out: dict[str, Candidate] = {}
    graphs = [("int8", manifest.graph("int8", encoder).file, {})]
    if lv["onednn_bf16"] == "amx_bf16":
        graphs.append(("bf16", manifest.graph("fp32", encoder).file, {"INFERENCE_PRECISION_HINT": "bf16"}))
    for precision, file, hint in graphs:
        config = {"INFERENCE_NUM_THREADS": 2, "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1, **hint}
        compiled = core.compile_model(str(bundle / file), "CPU", config)
        request = compiled.create_infer_request()
        out[f"openvino {precision}"] = Candidate(
            lambda r=request: r.infer(feed),
            "openvino",
            precision,
            _unit_for("openvino", precision, lv),
            {"config": {k: str(v) for k, v in config.items()}, "graph": file},
            embed=lambda px, r=request: r.infer({0: px})[0].copy(),
        )
        if batch >= 2 and encoder == "image":
            tconfig = {"INFERENCE_NUM_THREADS": 2, "PERFORMANCE_HINT": "THROUGHPUT", "NUM_STREAMS": 2, **hint}
            queue = ov.AsyncInferQueue(core.compile_model(str(bundle / file), "CPU", tconfig), 2)
            x = next(iter(feed.values()))
            halves = [x[: len(x) // 2], x[len(x) // 2 :]]

            def throughput(q: Any = queue, parts: list = halves) -> None:
                for part in parts:
                    q.start_async({0: part})
                q.wait_all()

            out[f"openvino {precision}, 2 streams"] = Candidate(
                throughput,
                "openvino",
                precision,
                _unit_for("openvino", precision, lv),
                {"config": {k: str(v) for k, v in tconfig.items()}, "graph": file},
            )
    return out


def text_candidates(ctx: Any, prompts: list[str], bf16_model: Any) -> dict[str, Candidate]:
    """Text: open_clip's encode_text at full context (the origin), torch fp32/bf16 on prompts
    trimmed to the longest (what clip-rt's graphs do), clip-rt (tokeniser included, uncached)."""

    import clip_rt
    from clip_rt_export.graphs import text_wrapper

    from .models import session_options

    lv = levels()
    tm = ctx.torch_model
    trimmed32 = text_wrapper(tm.model, dynamic_sequence=True)
    trimmed16 = text_wrapper(bf16_model, dynamic_sequence=True)

    def trim(ids: Any) -> Any:
        return ids[:, : int((ids.argmax(dim=1) + 1).max())]

    out = {
        "open_clip encode_text (context 77, fp32)": Candidate(
            lambda: tm.model.encode_text(tm.tokenizer(prompts)), "torch", "fp32", _unit(lv["onednn_fp32"])
        ),
        "torch fp32, trimmed": Candidate(
            lambda: trimmed32(trim(tm.tokenizer(prompts))), "torch", "fp32", _unit(lv["onednn_fp32"])
        ),
        "torch bf16, trimmed": Candidate(
            lambda: trimmed16(trim(tm.tokenizer(prompts))), "torch", "bf16", _unit(lv["onednn_bf16"])
        ),
    }
    default = clip_rt.load(ctx.bundle, threads=2, cache=False)
    meta = runtime_meta(default)
    out["clip-rt default"] = Candidate(
        lambda: default.encode_text(prompts),
        meta["library"],
        meta["precision"],
        _unit_for(meta["library"], meta["precision"], lv),
        {"what": "clip_rt.load(bundle) defaults, uncached"},
    )
    for precision in ("int8", "fp32"):
        model = clip_rt.load(
            ctx.bundle, precision=precision, threads=2, cache=False, session_options=session_options(2)
        )
        out[f"clip-rt {precision} (onnxruntime)"] = Candidate(
            lambda m=model: m.encode_text(prompts), "onnxruntime", precision, _unit_for("onnxruntime", precision, lv)
        )
    ids = tm.tokenizer(prompts)
    feed = {0: trim(ids).numpy().astype(np.int64)}
    for name, cand in openvino_candidates(ctx.bundle, "text", feed, len(prompts), lv).items():
        # The tokeniser is not in these: add clip-rt's tokenisation cost by tokenising too.
        tok = default.tokenizer()  # the runtime's own tokeniser, as encode_text uses
        cand.run = lambda run=cand.run: (tok.encode_batch(prompts), run())
        cand.notes["what"] = "the bundle's text graph on OpenVINO, clip-rt's tokeniser included"
        out[name] = cand
    return out


def peak_fraction(
    items_per_s: float, unit: Optional[str], macs: Optional[float], ghz: Optional[float], cores: int
) -> Optional[dict[str, Any]]:
    p = isa.peak(unit or "", cores, ghz, macs)
    if p is None:
        return None
    return {**p, "percent": round(100.0 * items_per_s / p["items_per_s"], 1)}
