"""The CPU's matrix ISA as each library sees it, and the theoretical peak it allows.

Kept small and local to the benchmarks; the runtime's own detection (per-CPU backend choice)
lives in the runtime. ``ONEDNN_MAX_CPU_ISA=AVX512_CORE_VNNI`` hides AMX (and AVX512-BF16)
from oneDNN, i.e. from torch's and OpenVINO's CPU kernels, but NOT from onnxruntime, whose
MLAS kernels read CPUID themselves: a figure measured under that variable names, per
candidate, the ISA its library could use.

Peak throughput = cores x clock x multiply-accumulates per cycle per core / MACs per image:

| unit | MACs / cycle / core | why |
| --- | --- | --- |
| AMX int8 | 1024 | TDPBUSD: 16x64 int8 times 64x16 per tile op, one op per 16 cycles -> 16*16*64/16 |
| AMX bf16 | 512 | TDPBF16PS: 16x32 bf16 pairs, half the int8 rate |
| AVX-512 VNNI int8 | 128 | VPDPBUSD zmm: 64 u8*s8 products, 2 FMA ports |
| AVX-512 fp32 | 32 | 16-lane FMA, 2 ports |
| AVX2 fp32 | 16 | 8-lane FMA, 2 ports |
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional

MACS_PER_CYCLE = {
    "amx_int8": 1024,
    "amx_bf16": 512,
    "avx512_vnni_int8": 128,
    "avx512_fp32": 32,
    "avx2_int8": 32,
    "avx2_fp32": 16,
}
HIDE_AMX = {"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_VNNI"}


def cpu_flags(cpuinfo: Optional[str] = None) -> set[str]:
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return set()
    for line in cpuinfo.splitlines():
        if line.startswith(("flags", "Features")):
            return set(line.split(":", 1)[1].split())
    return set()


def clock_ghz(cpuinfo: Optional[str] = None) -> tuple[Optional[float], str]:
    """(GHz, where it came from): cpufreq's maximum where the kernel exposes it, else the
    ``cpu MHz`` of /proc/cpuinfo (under KVM the nominal clock; turbo may run faster)."""
    max_freq = Path("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq")
    if cpuinfo is None:
        try:
            if max_freq.is_file():
                return int(max_freq.read_text()) / 1e6, str(max_freq)
        except (OSError, ValueError):
            pass
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return None, "unknown"
    for line in cpuinfo.splitlines():
        if line.startswith("cpu MHz"):
            return float(line.split(":", 1)[1]) / 1000.0, "/proc/cpuinfo cpu MHz"
    return None, "unknown"


def isa_levels(flags: set[str], env: Optional[dict[str, str]] = None) -> dict[str, str]:
    """The best matrix unit per precision for oneDNN (torch, OpenVINO) and for onnxruntime,
    e.g. ``{"onednn_int8": "amx_int8", "onednn_bf16": "amx_bf16", "onednn_fp32": "avx512_fp32",
    "onnxruntime_int8": "amx_int8", ...}``; *env* defaults to os.environ."""
    env = dict(os.environ) if env is None else env
    amx = {"amx_tile", "amx_int8"} <= flags
    avx512 = "avx512f" in flags
    hidden = env.get("ONEDNN_MAX_CPU_ISA", "").upper() in ("AVX512_CORE_VNNI", "AVX512_CORE", "AVX2")

    def int8(amx_ok: bool) -> str:
        if amx_ok and amx:
            return "amx_int8"
        if "avx512_vnni" in flags:
            return "avx512_vnni_int8"
        return "avx2_int8" if "avx2" in flags else "none"

    def bf16(amx_ok: bool) -> str:
        if amx_ok and "amx_bf16" in flags:
            return "amx_bf16"
        return "avx512_bf16" if "avx512_bf16" in flags and amx_ok else "emulated"

    fp32 = "avx512_fp32" if avx512 else ("avx2_fp32" if "avx2" in flags else "none")
    return {
        "onednn_int8": int8(not hidden),
        "onednn_bf16": bf16(not hidden),
        "onednn_fp32": fp32,
        "onnxruntime_int8": int8(True),
        "onnxruntime_fp32": fp32,
    }


def summary(env: Optional[dict[str, str]] = None, cpuinfo: Optional[str] = None) -> dict[str, Any]:
    flags = cpu_flags(cpuinfo)
    env = dict(os.environ) if env is None else env
    ghz, source = clock_ghz(cpuinfo)
    wanted = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_int8", "amx_bf16")
    return {
        "flags": [f for f in wanted if f in flags],
        "levels": isa_levels(flags, env),
        "onednn_max_cpu_isa": env.get("ONEDNN_MAX_CPU_ISA"),
        "clock_ghz": ghz,
        "clock_source": source,
        "host": "AMX" if {"amx_tile", "amx_int8"} <= flags else ("AVX-512 VNNI" if "avx512_vnni" in flags else "other"),
    }


def peak(unit: str, cores: int, ghz: Optional[float], macs_per_item: Optional[float]) -> Optional[dict[str, Any]]:
    """Items/s at the theoretical peak of *unit*, with its derivation."""
    per_cycle = MACS_PER_CYCLE.get(unit)
    if per_cycle is None or not ghz or not macs_per_item:
        return None
    per_s = cores * ghz * 1e9 * per_cycle
    return {
        "unit": unit,
        "items_per_s": round(per_s / macs_per_item, 1),
        "derivation": f"{cores} cores x {ghz:g} GHz x {per_cycle} MAC/cycle ({unit}) = {per_s / 1e12:.3g} T MAC/s; "
        f"/ {macs_per_item / 1e9:.3g} G MAC per item",
    }


def vit_image_macs(model: Any) -> Optional[float]:
    """Multiply-accumulates of one image through an open_clip ViT image tower (patch embedding,
    attention projections, attention itself, MLP, projection); None for other towers."""
    visual = getattr(model, "visual", None)
    conv = getattr(visual, "conv1", None)
    blocks = getattr(getattr(visual, "transformer", None), "resblocks", None)
    if conv is None or blocks is None:
        return None
    size = visual.image_size if isinstance(visual.image_size, (tuple, list)) else (visual.image_size,) * 2
    patch = conv.kernel_size
    grid = (size[0] // patch[0]) * (size[1] // patch[1])
    tokens = grid + 1
    width = conv.out_channels
    macs = grid * conv.in_channels * patch[0] * patch[1] * width
    for block in blocks:
        hidden = block.mlp.c_fc.out_features
        macs += tokens * (4 * width * width + 2 * width * hidden) + 2 * tokens * tokens * width
    proj = getattr(visual, "proj", None)
    if proj is not None:
        macs += proj.shape[0] * proj.shape[1]
    return float(macs)


def text_macs(model: Any, tokens: int) -> Optional[float]:
    """MACs of one prompt of *tokens* tokens through an open_clip text tower."""
    blocks = getattr(getattr(model, "transformer", None), "resblocks", None)
    if blocks is None:
        return None
    width = model.transformer.width
    macs = 0
    for block in blocks:
        hidden = block.mlp.c_fc.out_features
        macs += tokens * (4 * width * width + 2 * width * hidden) + 2 * tokens * tokens * width
    proj = getattr(model, "text_projection", None)
    if proj is not None and hasattr(proj, "shape"):
        macs += proj.shape[0] * proj.shape[1]
    return float(macs)
