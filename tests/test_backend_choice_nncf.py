"""The chooser tells int8 graphs apart by their quantiser: an NNCF graph (manifest
``quantization.int8.<encoder>.method == "nncf"``) is matched only by rows measured on NNCF graphs
(``int8-static-nncf``), an onnxruntime.quantization graph only by ``int8-static`` rows, so a
backend is never sent to a graph on the strength of another graph's speed. CPU flags injected."""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any, Optional

from clip_rt.bundle.manifest import Calibration, Quantization, read_manifest
from clip_rt.engine.backends.choose import INT8_SCHEMES, TABLE_PATH, choose_encoder, int8_scheme
from clip_rt_fixtures.fake_bundle import build_fake_bundle
from test_backend_choice import AMX, BOTH, ORT, VNNI, manifest, row

NNCF_TABLE = {
    "rows": [
        row("x86-amx", "image", "openvino", "int8-static-nncf", "f32", 6.6, "throughput"),
        row("x86-amx", "image", "openvino", "int8-static", "f32", 5.5, "throughput"),
        row("x86-amx", "image", "openvino", "fp32", "bf16", 4.5, "throughput"),
        row("x86-amx", "image", "onnxruntime", "int8-static", "graph", 2.6),
        row("x86-amx", "image", "onnxruntime", "fp32", "graph", 0.9),
        row("x86-amx", "image", "onnxruntime", "int8-static-nncf", "graph", 0.5),  # int8 activations: slow there
        row("x86-avx512-vnni", "image", "openvino", "int8-static-nncf", "f32", 3.1, "throughput"),
        row("x86-avx512-vnni", "image", "openvino", "int8-static", "f32", 3.0),
        row("x86-avx512-vnni", "image", "onnxruntime", "fp32", "graph", 0.92),
    ]
}


def quantised(method: Optional[str], kind: str = "static") -> Any:
    """A manifest stand-in whose int8 graphs were written by *method* (None: a record without
    the field, as a stand-in for an old reader's object)."""
    m = manifest()
    rec = SimpleNamespace(kind=kind) if method is None else SimpleNamespace(kind=kind, method=method)
    m.quantization_of = lambda precision, encoder: rec if precision == "int8" else None
    return m


def pick(m: Any, cpu: Any = AMX, installed: tuple[str, ...] = BOTH, **kw: Any) -> Any:
    return choose_encoder("image", m, cpu, installed=installed, table=NNCF_TABLE, **kw)


def test_scheme_names_the_quantiser() -> None:
    assert int8_scheme(quantised("nncf"), "image") == "static-nncf"
    assert int8_scheme(quantised("onnxruntime"), "image") == "static"
    assert int8_scheme(quantised(None), "image") == "static"
    assert int8_scheme(quantised("onnxruntime", "dynamic"), "image") == "dynamic"
    assert int8_scheme(manifest(), "image") == "dynamic"  # no record at all: an old dynamic bundle
    assert set(INT8_SCHEMES) == {"static", "dynamic", "static-nncf"}


def test_nncf_bundle_on_amx_runs_openvino_on_its_own_row() -> None:
    c = pick(quantised("nncf"))
    assert (c.backend, c.precision, c.compute, c.folders) == ("openvino", "int8", "f32", "throughput")
    assert "6.6x torch fp32" in c.reason and not c.notes


def test_nncf_bundle_without_openvino_never_takes_the_onnxruntime_graphs_row() -> None:
    # onnxruntime's int8-static row (2.6x) was measured on another graph; on the NNCF graph it
    # measured 0.5x, under its fp32 (0.9x): fp32 wins, and the note says what would be faster.
    c = pick(quantised("nncf"), installed=ORT)
    assert (c.backend, c.precision) == ("onnxruntime", "fp32")
    assert any(
        "int8 (static) measured" in n and "x faster here" in n and "--int8-method onnxruntime" in n for n in c.notes
    )


def test_nncf_bundle_int8_asked_on_onnxruntime_uses_the_nncf_row() -> None:
    c = pick(quantised("nncf"), installed=ORT, precision="int8")
    assert (c.backend, c.precision, c.explicit) == ("onnxruntime", "int8", True)
    assert "0.5x torch fp32" in c.reason


def test_onnxruntime_static_bundle_ignores_nncf_rows_and_says_so() -> None:
    c = pick(quantised("onnxruntime"))
    assert (c.backend, c.precision) == ("openvino", "int8") and "5.5x torch fp32" in c.reason
    assert any("int8 (static-nncf) measured 1.20x faster here" in n and "--int8-method nncf" in n for n in c.notes)
    ort_only = pick(quantised("onnxruntime"), installed=ORT)
    assert (ort_only.backend, ort_only.precision) == ("onnxruntime", "int8") and "2.6x" in ort_only.reason


def test_no_re_export_advice_for_a_gain_within_noise() -> None:
    """Another scheme a few percent faster is not worth a re-export: info says nothing of it."""
    rows = [dict(r) for r in NNCF_TABLE["rows"]]
    for r in rows:
        if r["isa"] == "x86-amx" and r["encoder"] == "image" and r["graph"] == "int8-static-nncf":
            r["score"] = 5.7  # 1.04x the onnxruntime-quantised graph's 5.5x
    m = quantised("onnxruntime")
    c = choose_encoder("image", m, AMX, installed=BOTH, table={"rows": rows})
    assert (c.backend, c.precision) == ("openvino", "int8") and not any("faster here" in n for n in c.notes)


def test_nncf_rows_on_a_vnni_host() -> None:
    c = pick(quantised("nncf"), cpu=VNNI)
    assert (c.backend, c.precision, c.folders) == ("openvino", "int8", "throughput") and "3.1x" in c.reason


def test_dynamic_bundle_takes_no_static_row() -> None:
    c = pick(quantised("onnxruntime", "dynamic"))
    assert (c.backend, c.precision, c.compute) == ("openvino", "bf16", "bf16")


def test_record_method_round_trips_and_is_validated(tmp_path: Any) -> None:
    bundle = build_fake_bundle(tmp_path / "b")
    m = read_manifest(bundle)
    record = Quantization(
        kind="static",
        per_channel=True,
        activations="int8",
        ops=("Gemm", "MatMul"),
        calibration=Calibration("nncf", "photos", ("brick",), 1),
        batch_independent=True,
        method="nncf",
        parameters={"preset": "mixed", "smooth_quant_matmul_alpha": "-1 (off)"},
    )
    m.quantization = {"int8": {"image": record}}
    m.write(bundle)
    again = read_manifest(bundle)
    assert again.quantization_of("int8", "image") == record
    assert again.quantization["int8"]["image"].parameters["preset"] == "mixed"
    data = json.loads((bundle / "manifest.json").read_text())
    data["quantization"]["int8"]["image"]["method"] = "tensorrt"
    (bundle / "manifest.json").write_text(json.dumps(data))
    import pytest

    from clip_rt.errors import BundleError

    with pytest.raises(BundleError, match=r"quantization\.int8\.image\.method"):
        read_manifest(bundle)


def test_shipped_table_graph_names_are_known_schemes() -> None:
    table = json.loads(TABLE_PATH.read_text())
    for r in table["rows"]:
        g = r["graph"]
        assert g in ("fp32", "fp16") or g[len("int8-") :] in INT8_SCHEMES, g
