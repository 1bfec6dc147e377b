"""Smoke test of the benchmark harness (`python -m bench`) on a tiny random-weights model."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("open_clip")
pytest.importorskip("skimage")

REPO = Path(__file__).resolve().parents[1]

from bench import __main__ as bench_main
from bench.report import NAMES, load_results, write_readme

TINY_CONFIG = REPO / "tests" / "data" / "tiny-clip.json"

pytestmark = pytest.mark.torch


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory, tiny_bundle_dir: Path) -> Path:
    """Every benchmark on the tiny model, in a child process (``python -m bench``): OpenVINO,
    when installed, stays out of the test process (with it loaded, a later test's self-sent
    SIGINT crashed the pytest process with a segfault). The bundle is the session's export of
    the same weights (seed 0, all three precisions), where bench.context looks for its own."""
    root = tmp_path_factory.mktemp("bench")
    shutil.copytree(tiny_bundle_dir, root / "work" / "bundle-tiny-clip-seed0")
    cmd = [
        sys.executable,
        "-m",
        "bench",
        "--quick",
        "--arch",
        "tiny-clip",
        "--model-config",
        str(TINY_CONFIG),
        "--photos",
        "3",
        "--megapixels",
        "0.3",
        "--work-dir",
        str(root / "work"),
        "--out",
        str(root / "results"),
        "--int8-min-cosine",
        "0.995",
    ]  # the tiny model's int8 (see conftest.tiny_bundle_dir)
    subprocess.run(cmd, cwd=REPO, check=True, timeout=900)
    return root / "results"


def test_every_benchmark_writes_figures(results: Path) -> None:
    got = load_results(results)
    assert set(got) == {n for n in NAMES if not n.endswith(bench_main.HIDDEN_SUFFIX)}
    for name, r in got.items():
        assert r["machine"]["cpu_count"] >= 1 and "onnxruntime" in r["machine"]["versions"], name
        assert r["arch"] == "tiny-clip"
    img = got["image_speed"]["batches"]["8"]
    assert img["clip-rt int8 (onnxruntime)"]["items_per_s"] > 0 and img["torch fp32"]["items_per_s"] > 0
    assert {"torch bf16", "clip-rt default", "clip-rt fp32 (onnxruntime)"} <= set(img)
    text = got["text_speed"]["sets"]["80 ImageNet templates"]["rows"]
    # The cached path reads memory only: it must beat re-encoding by a wide margin.
    assert text["clip-rt default, cached"]["median_s"] < text["clip-rt default"]["median_s"]
    assert {"open_clip encode_text (context 77, fp32)", "torch bf16, trimmed", "clip-rt int8 (onnxruntime)"} <= set(
        text
    )
    rows = got["end_to_end"]["rows"]
    assert rows["clip-rt fp32"]["top1_same_as_origin"] == 1.0  # same weights, same pixels: same labels
    assert got["startup"]["folder"]["int8, batch 8"]["maxrss_mb"] > 0


def test_every_speed_row_names_its_isa_and_peak(results: Path) -> None:
    got = load_results(results)
    for name in ("image_speed", "text_speed"):
        r = got[name]
        assert r["host"]["levels"]["onnxruntime_int8"] in ("amx_int8", "avx512_vnni_int8", "avx2_int8", "none")
        assert r["machine"]["isa_levels"] == r["host"]["levels"]
    rows = got["image_speed"]["batches"]["8"]
    for cand in ("torch fp32", "clip-rt int8 (onnxruntime)"):
        row = rows[cand]
        assert row["library"] in ("torch", "onnxruntime") and row["unit"]
        assert row["peak"]["percent"] > 0 and "MAC/cycle" in row["peak"]["derivation"]
    assert got["image_speed"]["macs_per_image"] > 0


def test_parity_is_measured_against_torch(results: Path) -> None:
    parity = {r["precision"]: r for r in load_results(results)["parity"]["rows"]}
    assert set(parity) == {"fp32", "fp16", "int8"}
    assert parity["int8"]["quantization"] == {"image": "static", "text": "static"}
    assert parity["int8"]["batch_max_abs_diff"]["image"] <= 1e-5
    assert parity["fp32"]["image"]["max_abs_diff"] < 1e-4 and parity["fp32"]["text"]["min_cosine"] > 0.9999
    assert 0 < parity["int8"]["image"]["max_abs_diff"] < 0.1  # quantised: close, not identical


def test_variants_and_targets_are_recorded(results: Path) -> None:
    got = load_results(results)
    variants = {v["graph"] for v in got["variants"]["variants"]}
    assert {"fp32", "int8-dynamic", "int8-static-minmax", "torch-fp32", "torch-bf16"} <= variants
    static = next(v for v in got["variants"]["variants"] if v["graph"] == "int8-static-minmax")
    dynamic = next(v for v in got["variants"]["variants"] if v["graph"] == "int8-dynamic")
    assert static["batch_max_abs_diff"] <= 1e-5 < dynamic["batch_max_abs_diff"]
    mha = next(v for v in got["variants"]["variants"] if v["graph"] == "int8-static-fused-mha")
    assert mha["ops"]["MultiHeadAttention"] == 2 and mha["batch_max_abs_diff"] <= 1e-5 and mha["min_cosine"] > 0.999
    targets = [t for r in got.values() for t in r.get("targets", [])]
    assert len(targets) >= 8
    for t in targets:
        assert isinstance(t["met"], bool) and (t["met"] or t.get("gap_factor") or t.get("gap"))


def test_readme_block_is_rendered_and_replaced(results: Path, tmp_path: Path) -> None:
    doc = tmp_path / "bench.md"
    doc.write_text("# Benchmarks\n\nintro\n", encoding="utf-8")
    write_readme(doc, results)
    write_readme(doc, results)  # a second render replaces the block, not appends
    text = doc.read_text(encoding="utf-8")
    assert text.startswith("# Benchmarks\n\nintro\n") and text.count("<!-- bench:begin -->") == 1
    assert "| target |" in text and "tiny-clip" in text
    assert json.loads((results / "variants.json").read_text())["benchmark"] == "variants"


def test_optimize_graph_kinds_agree_with_fp32(results: Path, tmp_path: Path) -> None:
    import numpy as np
    import onnxruntime as ort

    from clip_rt.errors import InputError
    from clip_rt_export.optimize import optimize_graph

    fp32 = results.parent / "work" / "bundle-tiny-clip-seed0" / "image_fp32.onnx"
    x = np.random.default_rng(0).standard_normal((3, 3, 64, 64)).astype(np.float32)

    def embed(path: Path) -> np.ndarray:
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return sess.run(None, {"pixel_values": x})[0]

    want = embed(fp32)
    for kind in ("fused", "int8-dynamic-fused", "fused-mha"):
        got = embed(optimize_graph(fp32, tmp_path / f"{kind}.onnx", kind, num_heads=2, hidden_size=64))
        assert np.sum(got * want, axis=1).min() > 0.99, kind
    with pytest.raises(InputError, match="unknown graph variant"):
        optimize_graph(fp32, tmp_path / "x.onnx", "int4")
    with pytest.raises(InputError, match="needs calibration_inputs"):
        optimize_graph(fp32, tmp_path / "x.onnx", "int8-static")


def test_hide_amx_reruns_the_speed_benchmarks_with_onednn_limited(results: Path) -> None:
    """``--hide-amx``: image speed again in a child process under ONEDNN_MAX_CPU_ISA, in its own file."""
    work = results.parent / "work"
    argv = [
        "--quick",
        "--arch",
        "tiny-clip",
        "--model-config",
        str(TINY_CONFIG),
        "--photos",
        "3",
        "--work-dir",
        str(work),
        "--out",
        str(results),
        "--only",
        "image",
        "--hide-amx",
    ]
    args = bench_main.build_parser().parse_args(argv)
    bench_main.rerun_amx_hidden(argv, args)
    hidden = load_results(results)["image_speed_amx_hidden"]
    assert hidden["machine"]["onednn_max_cpu_isa"] == "AVX512_CORE_VNNI"
    assert hidden["host"]["levels"]["onednn_int8"] != "amx_int8"  # hidden from torch/OpenVINO ...
    assert (
        hidden["host"]["levels"]["onnxruntime_int8"]
        == load_results(results)["image_speed"]["host"]["levels"]["onnxruntime_int8"]
    )  # ... not from onnxruntime
    assert hidden["targets"] and all("VNNI" in t["target"] for t in hidden["targets"])
