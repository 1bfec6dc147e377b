"""bench.backend_table: result files -> the runtime's decision table, NNCF graphs as their own rows."""

from __future__ import annotations

import json
from pathlib import Path

from bench.backend_table import build_table
from clip_rt.engine.backends.choose import choose_encoder
from clip_rt.engine.cpu import parse_flags

AMX = parse_flags("x86_64: amx_tile amx_int8 amx_bf16 avx512_bf16 avx512_vnni avx512f avx2")


def _speed(**items_per_s: float) -> dict:
    return {k: {"items_per_s_best": v} for k, v in items_per_s.items()}


def _result(env: dict, label: str) -> dict:
    cands = [
        ("onnxruntime fp32", "onnxruntime", "fp32", "graph", 1.0),
        ("onnxruntime int8-static-nncf", "onnxruntime", "int8-static-nncf", "graph", 0.9996),
        ("openvino int8-static-nncf f32", "openvino", "int8-static-nncf", "f32", 0.9995),
        ("openvino int8-static f32", "openvino", "int8-static", "f32", 0.9996),
        ("openvino int8-static-nncf bf16", "openvino", "int8-static-nncf", "bf16", 0.9995),
    ]
    rows = [
        {"candidate": n, "backend": b, "graph": g, "compute": c, "min_cosine_vs_torch_fp32": cos}
        for n, b, g, c, cos in cands
    ]
    b8 = {
        "torch fp32": 30.0,
        "torch bf16": 100.0,
        "onnxruntime fp32": 27.0,
        "onnxruntime int8-static-nncf": 15.0,
        "openvino int8-static-nncf f32": 150.0,
        "openvino int8-static-nncf f32 [throughput]": 210.0,
        "openvino int8-static f32": 130.0,
        "openvino int8-static-nncf bf16": 999.0,
    }
    b1 = {
        "torch fp32": 15.0,
        "torch bf16": 35.0,
        "openvino int8-static-nncf f32": 110.0,
        "openvino int8-static-nncf f32 [dynamic-batch model]": 500.0,  # a comparison row: never counts
        "openvino int8-static-nncf f32 [throughput, 1-image requests]": 140.0,
    }
    return {
        "isa_class": label,
        "command": "python -m bench.backends --nncf-image x",
        "env": env,
        "when": "t",
        "machine": {"cpu_model": "cpu", "isa": ["amx_int8"]},
        "image": {"rows": rows, "speed": {"8": _speed(**b8), "1": _speed(**b1)}},
    }


def test_nncf_rows_are_kept_apart_and_drive_the_choice(tmp_path: Path) -> None:
    (tmp_path / "backends-x86-amx-nncf.json").write_text(json.dumps(_result({}, "x86-amx")))
    (tmp_path / "backends-x86-amx-as-vnni-nncf.json").write_text(
        json.dumps(_result({"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_VNNI"}, "x86-amx-as-vnni"))
    )
    table = build_table(tmp_path)
    amx = [r for r in table["rows"] if r["isa"] == "x86-amx"]
    by = {(r["backend"], r["graph"], r["compute"]): r for r in amx}
    top = by[("openvino", "int8-static-nncf", "f32")]
    got = (top["folders"], top["score"], top["x torch bf16"], top["batch1_images_per_s"])
    assert got == ("throughput", 7.0, 2.1, 110.0)
    assert by[("onnxruntime", "int8-static-nncf", "graph")]["score"] == 0.5
    assert by[("openvino", "int8-static-nncf", "bf16")]["score"] == 33.3  # the int8 graph's float parts in bf16
    vnni = [r for r in table["rows"] if r["isa"] == "x86-avx512-vnni"]
    assert {r["backend"] for r in vnni} == {"openvino"}  # onnxruntime ignored the ISA cap: AMX figures
    assert table["sources"]["backends-x86-amx-nncf"]["file"] == "bench/results/backends-x86-amx-nncf.json"
    nncf = type("M", (), {})()
    nncf.name, nncf.precisions = "m", ["fp32", "int8"]
    nncf.graphs = {"fp32": {"image": 1}, "int8": {"image": 1}}
    fig = type("F", (), {"passed": True})()
    nncf.parity = {"int8": {"image": fig}}
    nncf.quantization_of = lambda p, e: type("Q", (), {"kind": "static", "method": "nncf"})() if p == "int8" else None
    c = choose_encoder("image", nncf, AMX, installed=("onnxruntime", "openvino"), table=table)
    assert (c.backend, c.precision, c.compute, c.needs_evidence) == ("openvino", "int8", "bf16", True)
    c = choose_encoder(
        "image", nncf, AMX, installed=("onnxruntime", "openvino"), table=table, evidence={"openvino:int8+bf16": False}
    )  # its parity check failed: the next row
    assert (c.backend, c.precision, c.compute, c.folders) == ("openvino", "int8", "f32", "throughput")
    ort = choose_encoder("image", nncf, AMX, installed=("onnxruntime",), table=table)
    assert (ort.backend, ort.precision) == ("onnxruntime", "fp32")  # 0.9x fp32 beats 0.5x on the NNCF graph


def test_goals_report_met_and_unmet_with_peak() -> None:
    from bench.backend_goals import format_goals, goals

    data = _result({}, "x86-amx")
    data["image"]["rows"][2]["alone_vs_batch8_max_abs"] = 0.0
    data["image"]["rows"][1]["alone_vs_batch8_max_abs"] = 2e-3  # batch-dependent: not met
    lines = goals(data, image_macs=4.41e9, ghz=2.0, cores=2)
    by = {g["target"]: g for g in lines}
    fp32 = by["image batch 8 >= 6x torch fp32"]
    # The best runtime candidate is the bf16-compute row (999/s); baselines never count.
    assert fp32["candidate"] == "openvino int8-static-nncf bf16" and fp32["met"] is True
    assert fp32["percent_of_peak"] == round(100 * 999.0 / (2 * 2.0e9 * 1024 / 4.41e9), 1)
    b1 = by["image batch 1 >= 3x torch bf16 (one call at a time)"]
    assert (b1["candidate"], b1["measured"], b1["met"]) == ("openvino int8-static-nncf f32", round(110 / 35, 3), True)
    queued = by["image batch 1 >= 3x torch bf16 (single-image requests in flight)"]
    assert (queued["candidate"], queued["measured"]) == (
        "openvino int8-static-nncf f32 [throughput, 1-image requests]",
        round(140 / 35, 3),
    )
    cos = [g for g in lines if g["target"].startswith("onnxruntime int8-static-nncf:")]
    assert cos and cos[0]["met"] is False
    text = format_goals(lines)
    assert "NOT MET  onnxruntime int8-static-nncf" in text and "% of amx_int8 peak" in text
    vnni = goals(_result({"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_VNNI"}, "x86-amx-as-vnni"), 4.41e9, 2.0, 2)
    assert [g["target"] for g in vnni][0] == "image batch 8 >= 3x torch fp32"
    assert all("onnxruntime" not in g["candidate"] for g in vnni)


def _text_result(label: str) -> dict:
    rows = [
        {
            "candidate": "openvino int8-static-nncf f32",
            "backend": "openvino",
            "graph": "int8-static-nncf",
            "compute": "f32",
            "min_cosine_vs_torch_fp32": 0.9987,
        },
        {
            "candidate": "onnxruntime fp32",
            "backend": "onnxruntime",
            "graph": "fp32",
            "compute": "graph",
            "min_cosine_vs_torch_fp32": 1.0,
        },
    ]
    speed = _speed(
        **{
            "open_clip fp32 (context 77)": 40.0,
            "torch bf16 trimmed": 600.0,
            "openvino int8-static-nncf f32": 800.0,
            "onnxruntime fp32": 200.0,
        }
    )
    return {
        "isa_class": label,
        "command": "c",
        "env": {},
        "when": "t",
        "machine": {"cpu_model": "cpu"},
        "text": {"rows": rows, "speed": {"80": speed}},
    }


def test_text_queue_result_marks_its_row_queued(tmp_path: Path) -> None:
    (tmp_path / "backends-x86-amx.json").write_text(json.dumps(_text_result("x86-amx")))
    plain = {(r["backend"], r["graph"]): r for r in build_table(tmp_path)["rows"]}
    assert plain[("openvino", "int8-static-nncf")]["folders"] == "latency"
    for faster, want in ((True, "throughput"), (False, "latency")):
        queue = {
            "isa_class": "x86-amx",
            "command": "python -m bench.text_queue --bundle b",
            "when": "t",
            "machine": {"cpu_model": "cpu"},
            "queue_faster": faster,
            "candidate": {"backend": "openvino", "graph": "int8-static-nncf", "compute": "f32"},
            "sizes": {
                "80": {
                    "queue_x_latency_best": 1.6 if faster else 0.9,
                    "queue_x_latency_per_round_median": 1.5 if faster else 0.95,
                }
            },
        }
        (tmp_path / "text_queue-x86-amx.json").write_text(json.dumps(queue))
        table = build_table(tmp_path)
        by = {(r["backend"], r["graph"]): r for r in table["rows"]}
        row = by[("openvino", "int8-static-nncf")]
        assert (row["folders"], row["score"], row["queue_source"]) == (want, 20.0, "text_queue-x86-amx")
        assert by[("onnxruntime", "fp32")]["folders"] == "latency"  # not the row measured
        assert table["sources"]["text_queue-x86-amx"]["command"] == "python -m bench.text_queue --bundle b"


def test_a_newer_measurement_of_a_mode_replaces_the_older(tmp_path: Path) -> None:
    old, new = _result({}, "x86-amx"), _result({}, "x86-amx")
    old["when"], new["when"] = "2026-12-01T07:09:42Z", "2026-12-01T15:50:00Z"
    new["image"]["rows"] = [r for r in new["image"]["rows"] if r["graph"] == "int8-static-nncf"]
    new["image"]["speed"]["8"]["openvino int8-static-nncf f32 [throughput]"]["items_per_s_best"] = 60.0
    (tmp_path / "backends-x86-amx.json").write_text(json.dumps(old))
    (tmp_path / "backends-x86-amx-later.json").write_text(json.dumps(new))
    table = build_table(tmp_path)
    by = {(r["backend"], r["graph"], r["compute"]): r for r in table["rows"] if r["isa"] == "x86-amx"}
    assert len(by) == len([r for r in table["rows"] if r["isa"] == "x86-amx"])  # one row per mode
    assert by[("openvino", "int8-static-nncf", "f32")]["source"] == "backends-x86-amx-later"
    assert by[("openvino", "int8-static-nncf", "f32")]["score"] == 5.0  # the newer run's 150 latency / 30
    assert by[("openvino", "int8-static", "f32")]["source"] == "backends-x86-amx"  # measured only there
    # the newer file's ordering is by date, not by file name
    (tmp_path / "backends-x86-amx-later.json").rename(tmp_path / "backends-x86-amx-a.json")
    by = {(r["backend"], r["graph"], r["compute"]): r for r in build_table(tmp_path)["rows"] if r["isa"] == "x86-amx"}
    assert by[("openvino", "int8-static-nncf", "f32")]["source"] == "backends-x86-amx-a"
