"""What a model runs, as data and as lines (``ClipModel.runtime``, ``clip-rt info``, outputs'
metadata), and the parity evidence behind derived modes (see ``backends/evidence.py``)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import numpy as np

from .backends.choose import EncoderChoice, RuntimePlan, installed_backends, modes
from .cpu import CpuIsa

if TYPE_CHECKING:
    from ..bundle.manifest import Manifest
    from ..inputs.tokenizer import TextTokenizer
    from .backends import Backend


def _version(dist: str) -> Optional[str]:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return None


def runtime_dict(plan: RuntimePlan, live: Optional[dict[str, dict[str, Any]]] = None) -> dict[str, Any]:
    """The plan as JSON-ready data; *live*: ``describe()`` of the backends already created."""
    live = live or {}
    out: dict[str, Any] = {"cpu": plan.cpu.to_dict(), "installed_backends": list(plan.installed), "table": plan.table}
    from .backends.choose import load_table

    sources = load_table().get("sources", {})
    for enc in ("image", "text"):
        entry = plan.encoder(enc).to_dict()
        if enc in live:
            entry["running"] = live[enc]
        out[enc] = entry
    out["sources"] = {c.source: sources[c.source] for c in (plan.image, plan.text) if c.source in sources}
    return out


def summary(runtime: dict[str, Any]) -> dict[str, Any]:
    """The short form outputs record: CPU class, per encoder backend/precision/compute/mode and
    why (one line), the workload it was planned for, and low-memory mode where it was on."""
    keys = ("backend", "precision", "graph_precision", "compute", "folders")
    out = {
        "cpu": runtime["cpu"]["class"],
        **{enc: {**{k: runtime[enc][k] for k in keys}, "why": runtime[enc]["reason"]} for enc in ("image", "text")},
    }
    if runtime.get("workload"):
        out["planned_for"] = runtime["workload"]
    if runtime.get("low_memory"):
        out["low_memory"] = True
    return out


def describe_lines(runtime: dict[str, Any]) -> list[str]:
    cpu = runtime["cpu"]
    lines = [
        f"cpu:           {cpu['class']} ({cpu['arch']}: {', '.join(cpu['features']) or 'no flags that matter'}; "
        f"from {cpu['source']})",
        f"backends:      {', '.join(runtime['installed_backends']) or 'none'} installed",
    ]
    for enc in ("image", "text"):
        c = runtime[enc]
        compute = f", {c['compute']} compute" if c["compute"] == "bf16" else ""
        lines.append(
            f"{enc + ':':<15}{c['backend']} {c['precision']} ({c['graph_precision']} graph{compute}); "
            f"{modes(enc, c['folders'])}"
        )
        lines.append(f"{'':<15}why: {c['reason']}")
        if c.get("needs_evidence"):
            lines.append(f"{'':<15}parity vs fp32: checked on first use (then cached)")
        for note in c.get("notes", []):
            lines.append(f"{'':<15}- {note}")
        if c.get("source"):
            src = runtime.get("sources", {}).get(c["source"], {})
            where = (
                f"{src.get('file', c['source'])} (`{src['command']}`, {src.get('when', '?')})"
                if src.get("command")
                else c["source"]
            )
            lines.append(f"{'':<15}measured: {where}")
    return lines


def known_evidence(fingerprint: str, cpu: CpuIsa) -> dict[str, dict[str, bool]]:
    """Cached verdicts of derived modes for this bundle and CPU class, per encoder."""
    from .backends.evidence import evidence_key, read_cache

    version = _version("openvino") if "openvino" in installed_backends() else None
    if version is None:
        return {}
    from .backends.choose import DERIVED_LABELS

    cache = read_cache()
    out: dict[str, dict[str, bool]] = {}
    for enc in ("image", "text"):
        for label in DERIVED_LABELS:
            record = cache.get(evidence_key(fingerprint, enc, "openvino", version, label, cpu.isa_class))
            if isinstance(record, dict) and isinstance(record.get("passed"), bool):
                out.setdefault(enc, {})[f"openvino:{label}"] = record["passed"]
    return out


def derived_parity(
    manifest: Manifest,
    bundle_dir: Path,
    choice: EncoderChoice,
    backend: Backend,
    cpu: CpuIsa,
    tokenizer: Optional[TextTokenizer] = None,
) -> dict[str, Any]:
    """The verdict for *choice* (cached, or measured now), against the fp32 embeddings the
    export stored (``manifest.parity_reference``), or, in a bundle from before them, against
    the fp32 graph on onnxruntime. The gate: the export's gate for the graph the mode runs
    (int8's own tolerance for the int8 graph in bf16: the same bar its graph passed against
    torch), else evidence.GATE. The caller has verified the files it names."""
    from .backends.evidence import check, evidence_key, load_reference, sample_inputs
    from .backends.ort import OrtBackend

    name = "pixel_values" if choice.encoder == "image" else "input_ids"
    version = _version("openvino") or "?"
    key = evidence_key(manifest.fingerprint, choice.encoder, choice.backend, version, choice.mode_label, cpu.isa_class)
    gate = None
    if choice.graph_precision != "fp32":
        figure = manifest.parity.get(choice.graph_precision, {}).get(choice.encoder)
        tolerance = getattr(figure, "tolerance", None) or {}
        if isinstance(tolerance.get("min_cosine"), (int, float)):
            gate = {"min_cosine": float(tolerance["min_cosine"])}
    probe = getattr(backend, "probe", backend.run)  # through what the job compiled
    stored = manifest.parity_reference
    if stored is not None:
        rows = stored.image if choice.encoder == "image" else stored.text
        expected = load_reference(bundle_dir / stored.file, choice.encoder, rows, manifest.embed_dim)
        return check(
            key,
            lambda x: probe({name: x})[0],
            None,
            lambda: sample_inputs(manifest, choice.encoder, tokenizer),
            gate=gate,
            reference=expected,
            against="the fp32 embeddings stored at export",
        )
    session: list[Any] = []

    def run_reference(x: np.ndarray) -> np.ndarray:
        if not session:
            session.append(OrtBackend(bundle_dir / manifest.graph("fp32", choice.encoder).file, ["cpu"]))
        return session[0].run({name: x})[0]

    try:
        return check(
            key,
            lambda x: probe({name: x})[0],
            run_reference,
            lambda: sample_inputs(manifest, choice.encoder, tokenizer),
            gate=gate,
        )
    finally:
        session.clear()  # frees the fp32 session
