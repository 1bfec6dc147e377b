"""Which backend, precision and mode run each encoder, on this CPU, for this bundle.

The choice is read from ``choices.json`` beside this module: measured rows (ISA class,
encoder, backend, graph, compute precision, items/s), each naming the benchmark result it
came from (``python -m bench.backends --write-table`` writes it; docs/runtime.md). For an
encoder on a CPU provider, the fastest row is taken whose

- backend is installed (and is the one asked for, if any),
- graph the bundle has, with the same int8 scheme (onnxruntime.quantization static QDQ or
  dynamic, or NNCF's static QDQ: manifest ``quantization.int8.<encoder>.method``), whose export parity
  passed its gate (``manifest.parity[precision][encoder].passed``; fp32 is the reference and
  always qualifies),
- compute precision the CPU does natively (bf16), and which has parity evidence where the mode
  has no graph of its own (OpenVINO's bf16 hint on the fp32 graph, or on the int8 graph, whose
  float parts then run in bf16: ``evidence.py``, against the fp32 graph, so a bundle without one
  cannot take the int8 graph's bf16 mode),
- precision is the one asked for, if any.

No row for this CPU class (nothing measured there): onnxruntime with the fastest precision
that passed its gate, int8 before fp32 (int8 measured 2.1x fp32 on AVX-512 VNNI,
bench/results/variants.json). A CUDA (or other accelerator) provider always runs onnxruntime:
fp16 first where the bundle has it, as before.
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import Any, Optional

from ...errors import BundleError, InputError, ProviderError
from ..cpu import CpuIsa

TABLE_PATH = Path(__file__).with_name("choices.json")
BACKENDS = ("onnxruntime", "openvino")
BACKEND_ALIASES = {"onnxruntime": "onnxruntime", "ort": "onnxruntime", "openvino": "openvino", "ov": "openvino"}
_BACKEND_MODULES = {"onnxruntime": "onnxruntime", "openvino": "openvino"}
GRAPH_PRECISIONS = ("fp32", "fp16", "int8")
# "bf16" is the fp32 graph computed in bf16 (OpenVINO's inference precision hint).
PRECISIONS = (*GRAPH_PRECISIONS, "bf16")
ENCODERS = ("image", "text")
CPU_FALLBACK_ORDER = ("int8", "fp32", "fp16")


@dataclass(frozen=True)
class EncoderChoice:
    """What runs one encoder."""

    encoder: str
    backend: str  # onnxruntime | openvino
    precision: str  # fp32 | fp16 | int8 | bf16 (bf16: the fp32 graph with a bf16 compute hint)
    graph_precision: str  # which of the bundle's graphs is loaded
    compute: str  # "graph" (as written) | "f32" | "bf16" (OpenVINO inference precision hint)
    folders: str  # mode for folder streams: "throughput" (async multi-stream queue) | "latency"
    reason: str
    source: Optional[str] = None  # the table row's source (a bench result and its command)
    needs_evidence: bool = False  # a derived mode: parity must be shown before it is a default
    explicit: bool = False  # the backend or precision was asked for
    notes: tuple[str, ...] = ()

    @property
    def cache_key(self) -> str:
        """Keys the prompt cache: embeddings from different backends/computes are not mixed
        (onnxruntime keeps the plain precision, as before)."""
        if self.backend == "onnxruntime":
            return self.precision
        return f"{self.precision}+{self.backend}" + ("+bf16" if self.derived and self.graph_precision != "fp32" else "")

    @property
    def derived(self) -> bool:
        """A compute mode with no graph of its own: OpenVINO's bf16 hint on the fp32 or int8 graph."""
        return self.compute == "bf16"

    @property
    def mode_label(self) -> str:
        """The name evidence is kept under: ``bf16`` (the fp32 graph in bf16), ``int8+bf16``
        (the int8 graph's float parts in bf16), else the precision."""
        return derived_label(self.graph_precision) if self.derived else self.precision

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["notes"] = list(self.notes)
        return d

    def summary(self) -> str:
        compute = "" if self.compute in ("graph", "f32") else f", {self.compute} compute"
        calls = modes(self.encoder, self.folders)
        return f"{self.backend} {self.precision} ({self.graph_precision} graph{compute}); {calls}"


def modes(encoder: str, folders: str) -> str:
    """How calls run: images one call at a time in latency mode, folders as *folders* says;
    text in latency mode unless *folders* is throughput, where a call with enough prompts is
    split across the throughput queue's streams (engine/text_batches.py)."""
    if encoder == "text":
        return "few prompts: latency; many prompts: throughput queue" if folders == "throughput" else "prompts: latency"
    return f"single calls: latency; folders: {folders}"


@dataclass(frozen=True)
class RuntimePlan:
    cpu: CpuIsa
    image: EncoderChoice
    text: EncoderChoice
    table: str = TABLE_PATH.name
    installed: tuple[str, ...] = field(default=())

    def encoder(self, name: str) -> EncoderChoice:
        return self.image if name == "image" else self.text

    def with_encoder(self, choice: EncoderChoice) -> RuntimePlan:
        if choice.encoder == "image":
            return replace(self, image=choice)
        return replace(self, text=choice)

    @property
    def precision(self) -> str:
        """One name when both encoders agree, else ``image/text`` (e.g. ``int8/bf16``), a form
        ``load(precision=...)`` accepts back."""
        a, b = self.image.precision, self.text.precision
        return a if a == b else f"{a}/{b}"


def installed_backends() -> tuple[str, ...]:
    """The backends importable here (found, not imported: cheap)."""
    return tuple(b for b in BACKENDS if importlib.util.find_spec(_BACKEND_MODULES[b]) is not None)


def normalise_backend(name: Optional[str]) -> Optional[str]:
    if name is None:
        return None
    if not isinstance(name, str):
        raise InputError(f"backend must be a string such as 'openvino', got {type(name).__name__}")
    key = name.strip().lower()
    if key in ("", "auto"):
        return None
    if key not in BACKEND_ALIASES:
        raise InputError(f"unknown backend {name!r}; expected one of: auto, {', '.join(BACKENDS)}")
    return BACKEND_ALIASES[key]


def parse_precision(precision: Optional[str]) -> dict[str, Optional[str]]:
    """``None`` | ``"int8"`` (both encoders) | ``"int8/bf16"`` (image/text)."""
    if precision is None:
        return {"image": None, "text": None}
    if not isinstance(precision, str):
        raise InputError(f"precision must be a string such as 'fp32', got {type(precision).__name__}")
    parts = [p.strip().lower() for p in precision.split("/")]
    if len(parts) not in (1, 2) or not all(parts):
        raise InputError(
            f"precision {precision!r}: expected one of {', '.join(PRECISIONS)}, or IMAGE/TEXT such as int8/bf16"
        )
    for p in parts:
        if p not in PRECISIONS:
            raise InputError(f"unknown precision {p!r}; expected one of {', '.join(PRECISIONS)}")
    image, text = (parts[0], parts[0]) if len(parts) == 1 else parts
    return {"image": image, "text": text}


@lru_cache(maxsize=4)
def _load_table(path: str) -> dict[str, Any]:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:  # a broken install, not the user's input
        raise BundleError(f"clip-rt's backend table {path} is unreadable ({exc}); reinstall clip-rt") from exc


def load_table(path: Optional[Path] = None) -> dict[str, Any]:
    return _load_table(str(path or TABLE_PATH))


INT8_SCHEMES = ("static", "dynamic", "static-nncf")


def int8_scheme(manifest: Any, encoder: str) -> str:
    """How the bundle's int8 *encoder* graph was made, as the table's rows name it after
    ``int8-``: ``static`` / ``dynamic`` (onnxruntime.quantization, calibrated or per-run
    activation scales) or ``static-nncf`` (nncf.quantize's QDQ graph: other quantisation points
    and int8 activations, so backends run it at other speeds), from the manifest's quantisation
    record (``manifest.quantization_of``); bundles without a record were all exported with
    onnxruntime's dynamic int8."""
    record_of = getattr(manifest, "quantization_of", None)
    record = record_of("int8", encoder) if callable(record_of) else None
    kind = getattr(record, "kind", None)
    kind = kind if kind in ("static", "dynamic") else "dynamic"
    method = getattr(record, "method", "onnxruntime")
    return f"{kind}-nncf" if method == "nncf" else kind


def gate_passed(manifest: Any, precision: str, encoder: str) -> Optional[bool]:
    """The export parity verdict of a graph; None when the manifest records none."""
    fig = manifest.parity.get(precision, {}).get(encoder)
    return None if fig is None else bool(fig.passed)


def _qualifies(manifest: Any, precision: str, encoder: str) -> bool:
    if precision == "fp32":  # the reference graph: its parity is the bundle's definition of right
        return precision in manifest.graphs
    return precision in manifest.graphs and gate_passed(manifest, precision, encoder) is True


def derived_label(graph_precision: str) -> str:
    """``bf16`` for the fp32 graph computed in bf16, ``<precision>+bf16`` for another graph."""
    return "bf16" if graph_precision == "fp32" else f"{graph_precision}+bf16"


DERIVED_LABELS = ("bf16", "int8+bf16")


def _row_precision(row: dict[str, Any]) -> tuple[str, str]:
    """(precision name, graph precision) of a table row."""
    graph = row["graph"]
    gp = "int8" if graph.startswith("int8") else graph
    return ("bf16" if row.get("compute") == "bf16" and gp == "fp32" else gp), gp


@dataclass(frozen=True)
class Candidate:
    """A measured row this encoder may run, and the choice it makes (ranked by steady speed)."""

    choice: EncoderChoice
    row: dict[str, Any]


def encoder_candidates(
    encoder: str,
    manifest: Any,
    cpu: CpuIsa,
    *,
    installed: Sequence[str],
    backend: Optional[str] = None,
    precision: Optional[str] = None,
    table: Optional[dict[str, Any]] = None,
    evidence: Optional[dict[str, bool]] = None,
) -> tuple[list[Candidate], list[str], bool]:
    """Every measured row that may run *encoder* on this CPU (fastest first in steady state),
    the rows passed over and why, and whether anything was measured on this CPU class. Each
    candidate's notes are the rows ranked above it that were passed over."""
    if precision == "bf16" and not cpu.native_bf16:
        raise ProviderError(
            f"precision 'bf16' needs a CPU with bf16 arithmetic (AMX-BF16, AVX512-BF16); "
            f"this one is {cpu}, where it runs emulated (measured 0.04x)"
        )
    if precision == "bf16" and backend == "onnxruntime":
        raise InputError("precision 'bf16' (the fp32 graph computed in bf16) runs on the openvino backend only")
    explicit = backend is not None or precision is not None
    table = table if table is not None else load_table()
    evidence = evidence or {}
    skipped: list[str] = []
    found: list[Candidate] = []
    rows = [r for r in table.get("rows", []) if r.get("isa") == cpu.isa_class and r.get("encoder") == encoder]
    rows.sort(key=lambda r: -float(r["score"]))  # speed over the same run's torch fp32 baseline
    other_scheme: Optional[tuple[dict[str, Any], str]] = None
    for row in rows:
        name, gp = _row_precision(row)
        label = f"{row['backend']} {name}"
        if row["backend"] not in installed:
            skipped.append(f"{label}: {row['backend']} not installed")
            continue
        if backend is not None and row["backend"] != backend:
            continue
        if precision is not None and name != precision:
            continue
        if gp not in manifest.graphs:
            continue
        scheme = int8_scheme(manifest, encoder) if gp == "int8" else ""
        if gp == "int8" and row["graph"] != f"int8-{scheme}":
            if (
                precision is None
                and backend is None
                and other_scheme is None
                and not found
                and row["graph"] in _REEXPORT
            ):
                other_scheme = (row, scheme)  # the fastest other scheme only, and only if it beats what runs
            continue  # measured on another int8 scheme: its speed says nothing about this graph
        if precision is None and not _qualifies(manifest, gp, encoder):
            skipped.append(f"{label}: the bundle's {gp} {encoder} graph has no passed parity gate")
            continue
        compute = row.get("compute", "graph")
        derived = compute == "bf16"
        if derived and not cpu.native_bf16:
            continue
        mode = derived_label(gp) if derived else name
        # A derived mode is checked against the fp32 graph unless it was asked for by name
        # (precision "bf16"); the int8 graph in bf16 is never asked for by name, so always.
        checked = derived and not (precision == "bf16" and gp == "fp32")
        if (
            checked
            and gp != "fp32"
            and "fp32" not in manifest.graphs
            and getattr(manifest, "parity_reference", None) is None
        ):
            skipped.append(
                f"{row['backend']} {mode}: the bundle has no fp32 graph or stored fp32 embeddings to "
                "check its parity against"
            )
            continue
        verdict = evidence.get(f"{row['backend']}:{mode}")
        if checked and verdict is False:
            skipped.append(f"{row['backend']} {mode}: failed its parity check against fp32")
            continue
        why = (
            f"fastest measured on {cpu.isa_class} for {encoder} "
            f"({row['items_per_s']:g} {row.get('unit', 'items/s')}{_ratio_text(row)})"
        )
        if row.get("queue_source") and row.get("folders") == "throughput":
            why += (
                f"; many prompts through the throughput queue: {row['queue_x_latency']:g}x latency calls "
                f"({row['queue_source']})"
            )
        if explicit:
            why = f"asked for ({_asked(backend, precision)}); " + why
        choice = EncoderChoice(
            encoder,
            row["backend"],
            name,
            gp,
            compute if row["backend"] == "openvino" else "graph",
            row.get("folders", "latency"),
            why,
            row.get("source"),
            needs_evidence=checked and verdict is None,
            explicit=explicit,
            notes=tuple(dict.fromkeys(skipped)),
        )
        found.append(Candidate(choice, row))
    if found and other_scheme is not None:
        row, scheme = other_scheme
        gain = float(row["score"]) / float(found[0].row["score"])
        if gain >= REEXPORT_GAIN:  # worth a re-export only if clearly beyond run-to-run noise
            note = (
                f"{row['backend']} int8 ({row['graph'][5:]}) measured {gain:.2f}x faster here; the bundle's "
                f"int8 {encoder} graph is {scheme} ({_REEXPORT[row['graph']]})"
            )
            first = found[0]
            found[0] = Candidate(replace(first.choice, notes=(*first.choice.notes, note)), first.row)
    return found, skipped, bool(rows)


def choose_encoder(
    encoder: str,
    manifest: Any,
    cpu: CpuIsa,
    *,
    installed: Sequence[str],
    accelerator: Optional[str] = None,
    backend: Optional[str] = None,
    precision: Optional[str] = None,
    table: Optional[dict[str, Any]] = None,
    evidence: Optional[dict[str, bool]] = None,
) -> EncoderChoice:
    """One encoder's choice for steady work (the fastest qualifying row). *accelerator*: the
    first onnxruntime provider when it is not the CPU (CUDA...). *evidence*: derived-mode
    verdicts already known, keyed ``backend:precision`` (True passed, False failed); a derived
    mode with no verdict is chosen with ``needs_evidence`` and checked by the model before first
    use."""
    backend, precision = _checked_ask(manifest, installed, backend, precision)
    if accelerator is not None:
        return _accelerator_choice(encoder, manifest, accelerator, backend, precision)
    found, skipped, measured = encoder_candidates(
        encoder,
        manifest,
        cpu,
        installed=installed,
        backend=backend,
        precision=precision,
        table=table,
        evidence=evidence,
    )
    if found:
        return found[0].choice
    return _fallback(
        encoder,
        manifest,
        cpu,
        backend,
        precision,
        installed,
        skipped,
        measured,
        backend is not None or precision is not None,
    )


def _checked_ask(
    manifest: Any, installed: Sequence[str], backend: Optional[str], precision: Optional[str]
) -> tuple[Optional[str], Optional[str]]:
    backend = normalise_backend(backend)
    if precision is not None and precision not in PRECISIONS:
        raise InputError(f"unknown precision {precision!r}; expected one of {', '.join(PRECISIONS)}")
    if backend is not None and backend not in installed:
        raise ProviderError(
            f"backend {backend!r} is not installed: pip install 'clip-rt[{backend}]' "
            f"(installed: {', '.join(installed) or 'none'})"
        )
    if precision is not None:
        graph = "fp32" if precision == "bf16" else precision
        if graph not in manifest.graphs:
            raise BundleError(
                f"bundle {manifest.name!r} has no {graph!r} graphs; it has: {', '.join(manifest.precisions)}"
            )
    return backend, precision


REEXPORT_GAIN = 1.15  # another int8 scheme must be this much faster for info to suggest a re-export
_REEXPORT = {
    "int8-static": "`clip-rt export MODEL --precision int8 --int8-method onnxruntime` writes that graph",
    "int8-static-nncf": "`clip-rt export MODEL --precision int8 --int8-method nncf` writes that graph",
}


def _ratio_text(row: dict[str, Any]) -> str:
    ratios = [f"{v:g}x {k[2:]}" for k, v in row.items() if k.startswith("x ") and isinstance(v, (int, float))]
    return f", {', '.join(ratios)}" if ratios else ""


def _asked(backend: Optional[str], precision: Optional[str]) -> str:
    return ", ".join(
        x for x in (f"backend {backend}" if backend else "", f"precision {precision}" if precision else "") if x
    )


def _fallback(
    encoder: str,
    manifest: Any,
    cpu: CpuIsa,
    backend: Optional[str],
    precision: Optional[str],
    installed: Sequence[str],
    skipped: list[str],
    measured: bool,
    explicit: bool,
) -> EncoderChoice:
    """No measured row fits: onnxruntime (or the backend asked for) with the best gated precision."""
    chosen_backend = backend or "onnxruntime"
    if precision is not None:
        name = precision
    else:
        name = next((p for p in CPU_FALLBACK_ORDER if _qualifies(manifest, p, encoder)), None) or "fp32"
        if name not in manifest.graphs:
            name = manifest.precisions[0] if manifest.precisions else "fp32"
    gp = "fp32" if name == "bf16" else name
    if name == "bf16" and chosen_backend != "openvino":
        chosen_backend = "openvino"
    if chosen_backend not in installed:
        raise ProviderError(f"backend {chosen_backend!r} is not installed: pip install 'clip-rt[{chosen_backend}]'")
    where = f"no measured row on {cpu.isa_class} fits" if measured else f"nothing measured on {cpu.isa_class}"
    why = f"{where}; {chosen_backend} with " + (
        f"precision {name} as asked" if precision else f"the fastest precision that passed its parity gate ({name})"
    )
    if explicit:
        why = f"asked for ({_asked(backend, precision)}); {why}"
    compute = "bf16" if name == "bf16" else ("f32" if chosen_backend == "openvino" else "graph")
    return EncoderChoice(
        encoder,
        chosen_backend,
        name,
        gp,
        compute,
        "throughput" if chosen_backend == "openvino" else "latency",
        why,
        None,
        explicit=explicit,
        notes=tuple(dict.fromkeys(skipped)),
    )


def _accelerator_choice(
    encoder: str, manifest: Any, accelerator: str, backend: Optional[str], precision: Optional[str]
) -> EncoderChoice:
    if backend not in (None, "onnxruntime"):
        raise InputError(
            f"backend {backend!r} runs on the CPU; the {accelerator} provider runs through onnxruntime "
            "(drop --backend, or ask for the cpu provider)"
        )
    if precision == "bf16":
        raise InputError(f"precision 'bf16' is a CPU mode (OpenVINO); with {accelerator} use fp16 or fp32")
    have = manifest.precisions
    if precision is not None:
        name, why = precision, f"asked for; {accelerator} runs onnxruntime"
    elif accelerator == "CUDAExecutionProvider" and "fp16" in have:
        name, why = "fp16", f"{accelerator}: onnxruntime, fp16 where the bundle has it"
    else:
        name = "fp32" if "fp32" in have else have[0]
        why = f"{accelerator}: onnxruntime, fp32 (the reference graph)"
    return EncoderChoice(encoder, "onnxruntime", name, name, "graph", "latency", why, explicit=precision is not None)


def plan_runtime(
    manifest: Any,
    cpu: CpuIsa,
    *,
    installed: Optional[Iterable[str]] = None,
    accelerator: Optional[str] = None,
    backend: Optional[str] = None,
    precision: Optional[str] = None,
    table: Optional[dict[str, Any]] = None,
    evidence: Optional[dict[str, dict[str, bool]]] = None,
    workload: Any = None,
    low_memory: bool = False,
) -> RuntimePlan:
    """Both encoders' choices. *precision* may be ``IMAGE/TEXT``. *evidence*: per encoder, as
    for :func:`choose_encoder`. *workload* (:class:`clip_rt.options.Workload`): a short-lived
    run of a known size is planned by the time the whole run is predicted to take, start-up
    included (``costs.py``), where this CPU class has start-up measurements; otherwise, and for
    long-lived work, by steady speed. *low_memory*: the candidate that holds the least memory."""
    inst = tuple(installed) if installed is not None else installed_backends()
    wanted = parse_precision(precision)
    evidence = evidence or {}
    table = table if table is not None else load_table()
    if accelerator is not None:
        choices = {
            enc: choose_encoder(
                enc,
                manifest,
                cpu,
                installed=inst,
                accelerator=accelerator,
                backend=backend,
                precision=wanted[enc],
                table=table,
                evidence=evidence.get(enc),
            )
            for enc in ENCODERS
        }
        return RuntimePlan(cpu=cpu, image=choices["image"], text=choices["text"], installed=inst)
    found: dict[str, list[Candidate]] = {}
    fallback: dict[str, EncoderChoice] = {}
    for enc in ENCODERS:
        asked_backend, asked_precision = _checked_ask(manifest, inst, backend, wanted[enc])
        cands, skipped, measured = encoder_candidates(
            enc,
            manifest,
            cpu,
            installed=inst,
            backend=asked_backend,
            precision=asked_precision,
            table=table,
            evidence=evidence.get(enc),
        )
        found[enc] = cands
        if not cands:
            fallback[enc] = _fallback(
                enc,
                manifest,
                cpu,
                asked_backend,
                asked_precision,
                inst,
                skipped,
                measured,
                asked_backend is not None or asked_precision is not None,
            )
    choices = {enc: found[enc][0].choice for enc in ENCODERS if found[enc]}
    choices.update(fallback)
    if not fallback and (low_memory or (workload is not None and workload.short)):
        from .costs import choose_for_job

        picked = choose_for_job(found, table, cpu.isa_class, workload, low_memory=low_memory)
        if picked is not None:
            choices.update(picked)
    return RuntimePlan(cpu=cpu, image=choices["image"], text=choices["text"], installed=inst)
