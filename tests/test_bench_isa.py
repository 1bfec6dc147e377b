"""bench/isa.py: the ISA each library sees (flags injected), peaks and MAC counts."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

from bench import isa

SPR = {"avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_int8", "amx_bf16"}
ICX = {"avx2", "avx512f", "avx512_vnni"}


def test_amx_host_levels_and_hiding_amx_from_onednn_only() -> None:
    assert isa.isa_levels(SPR, env={}) == {
        "onednn_int8": "amx_int8",
        "onednn_bf16": "amx_bf16",
        "onednn_fp32": "avx512_fp32",
        "onnxruntime_int8": "amx_int8",
        "onnxruntime_fp32": "avx512_fp32",
    }
    hidden = isa.isa_levels(SPR, env=dict(isa.HIDE_AMX))
    assert hidden["onednn_int8"] == "avx512_vnni_int8" and hidden["onednn_bf16"] == "emulated"
    assert hidden["onnxruntime_int8"] == "amx_int8"  # MLAS reads CPUID itself


def test_vnni_and_avx2_hosts() -> None:
    vnni = isa.isa_levels(ICX, env={})
    assert vnni["onednn_int8"] == vnni["onnxruntime_int8"] == "avx512_vnni_int8"
    assert vnni["onednn_bf16"] == "emulated"
    old = isa.isa_levels({"avx2"}, env={})
    assert old["onnxruntime_int8"] == "avx2_int8" and old["onnxruntime_fp32"] == "avx2_fp32"


def test_flags_and_clock_are_read_from_cpuinfo() -> None:
    cpuinfo = "processor\t: 0\ncpu MHz\t\t: 2100.000\nflags\t\t: fpu avx2 avx512f amx_int8 amx_tile\n"
    assert {"avx2", "amx_int8"} <= isa.cpu_flags(cpuinfo)
    assert isa.clock_ghz(cpuinfo) == (2.1, "/proc/cpuinfo cpu MHz")
    summary = isa.summary(env={}, cpuinfo=cpuinfo)
    assert summary["host"] == "AMX" and summary["clock_ghz"] == 2.1


def test_peak_derivation_matches_the_issue_figures() -> None:
    # Issue 10: ViT-B/32 4.41 G MAC, 2 cores: AMX int8 ~1200 img/s, AMX bf16 ~600, VNNI ~150, fp32 ~38
    # (at 2.6 GHz).
    macs = 4.41e9
    got = {
        u: isa.peak(u, 2, 2.6, macs)["items_per_s"] for u in ("amx_int8", "amx_bf16", "avx512_vnni_int8", "avx512_fp32")
    }
    assert got == pytest.approx(
        {"amx_int8": 1207.5, "amx_bf16": 603.7, "avx512_vnni_int8": 150.9, "avx512_fp32": 37.7}, abs=0.2
    )
    assert "2 cores x 2.6 GHz x 1024 MAC/cycle" in isa.peak("amx_int8", 2, 2.6, macs)["derivation"]
    assert isa.peak("emulated", 2, 2.6, macs) is None and isa.peak("amx_int8", 2, None, macs) is None


def test_vit_b32_is_4_41_g_mac_per_image() -> None:
    open_clip = pytest.importorskip("open_clip")
    model = open_clip.create_model("ViT-B-32", pretrained=None)
    assert isa.vit_image_macs(model) == pytest.approx(4.41e9, rel=0.001)
    assert isa.text_macs(model, 13) == pytest.approx(
        13 * 12 * 12 * 512 * 512 + 2 * 13 * 13 * 512 * 12 + 512 * 512, rel=1e-6
    )
