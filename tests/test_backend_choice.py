"""The per-CPU choice of backend, precision and mode (clip_rt.engine.backends.choose), every
branch by injected CPU flags, installed backends and a small table; and the shipped table."""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any, Optional

import pytest

from clip_rt.bundle.manifest import GraphEntry, ParityFigure
from clip_rt.engine.backends.choose import (
    TABLE_PATH,
    choose_encoder,
    int8_scheme,
    load_table,
    parse_precision,
    plan_runtime,
)
from clip_rt.engine.cpu import ISA_CLASSES, parse_flags
from clip_rt.errors import BundleError, InputError, ProviderError

AMX = parse_flags("x86_64: amx_tile amx_int8 amx_bf16 avx512_bf16 avx512_vnni avx512f avx2")
VNNI = parse_flags("x86_64: avx512_vnni avx512f avx2")
ARM = parse_flags("aarch64: asimd asimddp")
BOTH = ("onnxruntime", "openvino")
ORT = ("onnxruntime",)


def row(isa: str, encoder: str, backend: str, graph: str, compute: str, score: float, folders: str = "latency") -> dict:
    return {
        "isa": isa,
        "encoder": encoder,
        "backend": backend,
        "graph": graph,
        "compute": compute,
        "folders": folders,
        "score": score,
        "items_per_s": score * 30,
        "unit": "images/s",
        "x torch fp32": score,
        "source": "test",
    }


TABLE = {
    "rows": [
        row("x86-amx", "image", "openvino", "int8-static", "f32", 5.5, "throughput"),
        row("x86-amx", "image", "openvino", "fp32", "bf16", 4.5, "throughput"),
        row("x86-amx", "image", "onnxruntime", "int8-static", "graph", 2.6),
        row("x86-amx", "image", "onnxruntime", "int8-dynamic", "graph", 2.5),
        row("x86-amx", "image", "openvino", "fp32", "f32", 1.1),
        row("x86-amx", "image", "onnxruntime", "fp32", "graph", 0.9),
        row("x86-amx", "text", "openvino", "fp32", "bf16", 30.0),
        row("x86-amx", "text", "onnxruntime", "int8-dynamic", "graph", 16.0),
        row("x86-amx", "text", "onnxruntime", "fp32", "graph", 8.0),
        row("x86-avx512-vnni", "image", "openvino", "int8-static", "f32", 2.45),
        row("x86-avx512-vnni", "image", "onnxruntime", "int8-dynamic", "graph", 1.99),
        row("x86-avx512-vnni", "image", "onnxruntime", "fp32", "graph", 0.92),
    ]
}


def manifest(
    precisions: tuple[str, ...] = ("fp32", "int8"),
    *,
    passed: Optional[dict[str, bool]] = None,
    scheme: Optional[str] = None,
) -> Any:
    """A stand-in with what the chooser reads: graphs, parity verdicts, the int8 scheme."""
    passed = dict.fromkeys(precisions, True) if passed is None else passed
    graphs = {p: {e: GraphEntry(f"{e}_{p}.onnx") for e in ("image", "text")} for p in precisions}
    parity = {p: {e: ParityFigure(0.0, 1.0, 8, {}, ok) for e in ("image", "text")} for p, ok in passed.items()}
    m = SimpleNamespace(name="m", graphs=graphs, parity=parity, precisions=list(precisions))
    if scheme:  # the manifest's quantisation record (clip_rt.bundle.manifest.Manifest.quantization_of)
        m.quantization_of = lambda precision, encoder: SimpleNamespace(kind=scheme) if precision == "int8" else None
    return m


def pick(encoder: str, m: Any, cpu: Any = AMX, installed: tuple[str, ...] = BOTH, **kw: Any) -> Any:
    return choose_encoder(encoder, m, cpu, installed=installed, table=TABLE, **kw)


# -- automatic choice ---------------------------------------------------------------------
def test_amx_static_int8_bundle_runs_openvino_int8_throughput() -> None:
    c = pick("image", manifest(scheme="static"))
    assert (c.backend, c.precision, c.graph_precision, c.compute, c.folders) == (
        "openvino",
        "int8",
        "int8",
        "f32",
        "throughput",
    )
    assert not c.needs_evidence and not c.explicit and "x86-amx" in c.reason and c.source == "test"


def test_amx_dynamic_int8_bundle_takes_bf16_hint_pending_evidence() -> None:
    # Old bundles: dynamic int8 only; the static row does not apply, bf16 on fp32 is next.
    c = pick("image", manifest())
    assert (c.backend, c.precision, c.graph_precision, c.compute) == ("openvino", "bf16", "fp32", "bf16")
    assert c.needs_evidence


def test_failed_evidence_moves_to_the_next_row() -> None:
    c = pick("image", manifest(), evidence={"openvino:bf16": False})
    assert (c.backend, c.precision) == ("onnxruntime", "int8")
    assert any("failed its parity check" in n for n in c.notes)
    passed = pick("image", manifest(), evidence={"openvino:bf16": True})
    assert passed.precision == "bf16" and not passed.needs_evidence


def test_without_openvino_onnxruntime_rows_win_and_the_note_says_why() -> None:
    c = pick("image", manifest(scheme="static"), installed=ORT)
    assert (c.backend, c.precision) == ("onnxruntime", "int8")
    assert any("openvino not installed" in n for n in c.notes)


def test_int8_gate_failed_is_never_a_default() -> None:
    c = pick("image", manifest(passed={"fp32": True, "int8": False}, scheme="static"), installed=ORT)
    assert c.precision == "fp32"
    assert any("no passed parity gate" in n for n in c.notes)


def test_missing_parity_record_counts_as_not_passed_except_fp32() -> None:
    c = pick("image", manifest(passed={}), installed=ORT)
    assert c.precision == "fp32"


def test_bf16_rows_need_native_bf16() -> None:
    no_bf16_amx = parse_flags("x86_64: amx_int8 amx_bf16 avx512f avx512_vnni")  # class AMX, native bf16 yes
    assert no_bf16_amx.native_bf16
    # A table that lists bf16 for a class whose CPU lacks it (VNNI) never picks it.
    table = {
        "rows": [
            row("x86-avx512-vnni", "text", "openvino", "fp32", "bf16", 9.0),
            row("x86-avx512-vnni", "text", "onnxruntime", "int8-dynamic", "graph", 2.0),
        ]
    }
    c = choose_encoder("text", manifest(), VNNI, installed=BOTH, table=table)
    assert c.precision == "int8" and c.backend == "onnxruntime"


def test_text_and_image_choose_separately() -> None:
    plan = plan_runtime(manifest(scheme="static"), AMX, installed=BOTH, table=TABLE)
    assert plan.image.precision == "int8" and plan.text.precision == "bf16"
    assert plan.precision == "int8/bf16"
    assert plan.text.cache_key == "bf16+openvino"


def test_vnni_rows() -> None:
    assert pick("image", manifest(scheme="static"), cpu=VNNI).backend == "openvino"
    c = pick("image", manifest(), cpu=VNNI)  # dynamic int8: onnxruntime's row
    assert (c.backend, c.precision) == ("onnxruntime", "int8")


def test_unmeasured_class_falls_back_to_onnxruntime_gated_int8() -> None:
    c = pick("image", manifest(), cpu=ARM)
    assert (c.backend, c.precision, c.source) == ("onnxruntime", "int8", None)
    assert "nothing measured on arm64-dotprod" in c.reason
    assert pick("image", manifest(passed={"fp32": True, "int8": False}), cpu=ARM).precision == "fp32"


def test_cuda_keeps_onnxruntime_and_fp16() -> None:
    c = pick("image", manifest(("fp32", "fp16", "int8")), accelerator="CUDAExecutionProvider")
    assert (c.backend, c.precision) == ("onnxruntime", "fp16")
    assert pick("image", manifest(), accelerator="CUDAExecutionProvider").precision == "fp32"
    with pytest.raises(InputError, match="runs on the CPU"):
        pick("image", manifest(), accelerator="CUDAExecutionProvider", backend="openvino")
    with pytest.raises(InputError, match="CPU mode"):
        pick("image", manifest(), accelerator="CUDAExecutionProvider", precision="bf16")


# -- overrides ------------------------------------------------------------------------------
def test_backend_override() -> None:
    c = pick("image", manifest(scheme="static"), backend="onnxruntime")
    assert (c.backend, c.precision, c.explicit) == ("onnxruntime", "int8", True)
    assert c.reason.startswith("asked for (backend onnxruntime)")
    c = pick("text", manifest(), backend="ort")
    assert c.backend == "onnxruntime"


def test_precision_override_picks_the_fastest_backend_for_it() -> None:
    c = pick("image", manifest(), precision="fp32")
    assert (c.backend, c.precision, c.compute) == ("openvino", "fp32", "f32")
    # Asked for explicitly: a failed gate does not stop it.
    c = pick("image", manifest(passed={"fp32": True, "int8": False}), precision="int8")
    assert c.precision == "int8"


def test_bf16_asked_needs_no_evidence_but_native_bf16() -> None:
    c = pick("text", manifest(), precision="bf16")
    assert c.precision == "bf16" and not c.needs_evidence
    with pytest.raises(ProviderError, match="bf16 arithmetic"):
        pick("text", manifest(), cpu=VNNI, precision="bf16")
    with pytest.raises(InputError, match="openvino backend only"):
        pick("text", manifest(), precision="bf16", backend="onnxruntime")


def test_not_installed_backend_is_an_error_never_a_fallback() -> None:
    with pytest.raises(ProviderError, match="not installed: pip install 'clip-rt\\[openvino\\]'"):
        pick("image", manifest(), installed=ORT, backend="openvino")
    with pytest.raises(ProviderError, match="not installed"):
        pick("text", manifest(), installed=ORT, precision="bf16")  # bf16 needs openvino


def test_unknown_names_and_missing_graphs() -> None:
    with pytest.raises(InputError, match="unknown backend 'tvm'"):
        pick("image", manifest(), backend="tvm")
    with pytest.raises(BundleError, match="has no 'fp16' graphs"):
        pick("image", manifest(), precision="fp16")
    with pytest.raises(InputError, match="unknown precision"):
        parse_precision("int4")
    with pytest.raises(InputError, match="IMAGE/TEXT"):
        parse_precision("int8/")
    assert parse_precision("INT8/bf16") == {"image": "int8", "text": "bf16"}
    assert parse_precision(None) == {"image": None, "text": None}


def test_auto_backend_equals_none() -> None:
    assert pick("image", manifest(), backend="auto") == pick("image", manifest())


def test_int8_scheme_defaults_to_dynamic_for_old_bundles() -> None:
    assert int8_scheme(manifest(), "image") == "dynamic"
    assert int8_scheme(manifest(scheme="static"), "text") == "static"


# -- the shipped table -----------------------------------------------------------------------
def test_shipped_table_rows_name_their_measurement() -> None:
    table = json.loads(TABLE_PATH.read_text())
    assert table is not None and load_table() == table
    for r in table["rows"]:
        assert r["isa"] in ISA_CLASSES and r["encoder"] in ("image", "text")
        assert r["backend"] in BOTH and r["source"] in table["sources"]
        assert r["score"] > 0 and r["folders"] in ("latency", "throughput")
        src = table["sources"][r["source"]]
        assert src["command"] and src["file"].startswith("bench/results/")
        if "queue_source" in r:  # a text row whose queue was measured (bench/text_queue.py)
            assert r["encoder"] == "text" and table["sources"][r["queue_source"]]["command"]


@pytest.mark.parametrize("cpu", [AMX, VNNI, ARM], ids=lambda c: c.isa_class)
@pytest.mark.parametrize("installed", [BOTH, ORT], ids=["+openvino", "ort-only"])
def test_shipped_table_gives_a_choice_everywhere(cpu: Any, installed: tuple[str, ...]) -> None:
    for scheme in (None, "static"):
        plan = plan_runtime(manifest(scheme=scheme), cpu, installed=installed)
        for c in (plan.image, plan.text):
            assert c.backend in installed and c.precision in ("int8", "fp32", "bf16")
            if c.precision == "bf16":
                assert cpu.native_bf16 and c.backend == "openvino"


# -- the int8 graph computed in bf16 (OpenVINO's hint on NNCF/static int8 graphs) ----------------
INT8_BF16 = {"rows": [row("x86-amx", "image", "openvino", "int8-static", "bf16", 6.0, "throughput"), *TABLE["rows"]]}


def test_int8_in_bf16_is_a_default_only_with_evidence_against_fp32() -> None:
    m = manifest(scheme="static")
    c = choose_encoder("image", m, AMX, installed=BOTH, table=INT8_BF16)
    assert (c.backend, c.precision, c.graph_precision, c.compute, c.folders) == (
        "openvino",
        "int8",
        "int8",
        "bf16",
        "throughput",
    )
    assert c.needs_evidence and c.mode_label == "int8+bf16"
    assert "bf16 compute" in c.summary()
    ok = choose_encoder("image", m, AMX, installed=BOTH, table=INT8_BF16, evidence={"openvino:int8+bf16": True})
    assert ok.compute == "bf16" and not ok.needs_evidence
    failed = choose_encoder("image", m, AMX, installed=BOTH, table=INT8_BF16, evidence={"openvino:int8+bf16": False})
    assert (failed.backend, failed.precision, failed.compute) == ("openvino", "int8", "f32")
    assert any("openvino int8+bf16: failed its parity check" in n for n in failed.notes)
    # the fp32 graph's bf16 verdict says nothing about the int8 graph's, and the other way round
    other = choose_encoder("image", m, AMX, installed=BOTH, table=INT8_BF16, evidence={"openvino:bf16": False})
    assert other.compute == "bf16" and other.needs_evidence


def test_int8_in_bf16_needs_an_fp32_graph_to_be_checked_against() -> None:
    slim = manifest(("int8",), scheme="static")
    c = choose_encoder("image", slim, AMX, installed=BOTH, table=INT8_BF16)
    assert (c.backend, c.precision, c.compute) == ("openvino", "int8", "f32")
    assert any("no fp32 graph or stored fp32 embeddings to check its parity against" in n for n in c.notes)


def test_int8_asked_for_still_checks_its_bf16_mode_and_bf16_asked_for_means_the_fp32_graph() -> None:
    m = manifest(scheme="static")
    c = choose_encoder("image", m, AMX, installed=BOTH, table=INT8_BF16, precision="int8")
    assert (c.precision, c.compute, c.needs_evidence, c.explicit) == ("int8", "bf16", True, True)
    c = choose_encoder(
        "image", m, AMX, installed=BOTH, table=INT8_BF16, precision="int8", evidence={"openvino:int8+bf16": False}
    )
    assert (c.precision, c.compute) == ("int8", "f32")
    b = choose_encoder("image", m, AMX, installed=BOTH, table=INT8_BF16, precision="bf16")
    assert (b.precision, b.graph_precision, b.compute, b.needs_evidence) == ("bf16", "fp32", "bf16", False)


def test_int8_in_bf16_needs_native_bf16_and_keeps_its_own_prompt_cache() -> None:
    no_bf16 = parse_flags("x86_64: amx_tile amx_int8 avx512_vnni avx512f avx2")
    table = {
        "rows": [
            row(no_bf16.isa_class, "text", "openvino", "int8-static", "bf16", 9.0),
            row(no_bf16.isa_class, "text", "openvino", "int8-static", "f32", 8.0),
        ]
    }
    c = choose_encoder("text", manifest(scheme="static"), no_bf16, installed=BOTH, table=table)
    assert c.compute == "f32" and not no_bf16.native_bf16
    m = manifest(scheme="static")
    bf = choose_encoder("image", m, AMX, installed=BOTH, table=INT8_BF16)
    f32 = choose_encoder("image", m, AMX, installed=BOTH, table=INT8_BF16, evidence={"openvino:int8+bf16": False})
    assert (bf.cache_key, f32.cache_key) == ("int8+openvino+bf16", "int8+openvino")
    fp32_bf16 = choose_encoder("image", m, AMX, installed=BOTH, table=INT8_BF16, precision="bf16")
    assert fp32_bf16.cache_key == "bf16+openvino"  # unchanged: caches written before keep their key
