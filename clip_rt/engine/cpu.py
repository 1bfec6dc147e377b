"""What this CPU can do fast: its instruction-set flags, reduced to a short class name.

The class picks rows of the backend table (``backends/choices.json``): the best backend and
precision differ between an AMX server (int8 and bf16 matrix tiles), an AVX-512 VNNI one, an
AVX2 laptop and an ARM64 board with or without the int8 dot-product/matrix instructions.

Nothing is read at import time. The flags come from, in order: the *flags* argument, the
``CLIP_RT_CPU_FLAGS`` environment variable (tests and subprocesses use it to play another CPU),
``/proc/cpuinfo``. ``CLIP_RT_CPU_FLAGS`` is ``ARCH: flag flag ...`` (``x86_64: avx2 avx512f``,
``aarch64: asimddp i8mm``) or just the flags (x86_64 assumed unless an ARM-only flag such as
``asimd`` is among them); commas work as separators too.
"""

from __future__ import annotations

import os
import platform
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

from ..errors import InputError

ENV_FLAGS = "CLIP_RT_CPU_FLAGS"
CPUINFO = Path("/proc/cpuinfo")

# The flags that decide something, in the order they are shown.
X86_FLAGS = ("amx_tile", "amx_int8", "amx_bf16", "avx512_bf16", "avx512_vnni", "avx512f", "avx_vnni", "avx2", "fma")
ARM_FLAGS = ("asimd", "asimddp", "i8mm", "bf16", "sve", "sve2", "svei8mm", "svebf16")
_ARM_ONLY = {"asimd", "asimddp", "i8mm", "sve", "sve2", "svei8mm", "svebf16", "fp", "evtstrm", "cpuid"}

# Class names, fastest kind first (what backends/choices.json rows are keyed by).
ISA_CLASSES = ("x86-amx", "x86-avx512-vnni", "x86-avx2", "arm64-i8mm", "arm64-dotprod", "generic")


@dataclass(frozen=True)
class CpuIsa:
    """A CPU's architecture and the flags that matter for int8/bf16 inference."""

    arch: str  # "x86_64", "aarch64", or whatever the platform says
    flags: frozenset[str]
    model: str = ""
    source: str = "/proc/cpuinfo"  # or CLIP_RT_CPU_FLAGS, "argument", "platform"

    @property
    def isa_class(self) -> str:
        f = self.flags
        if self.arch == "x86_64":
            if {"amx_int8", "amx_bf16"} <= f:
                return "x86-amx"
            if {"avx512_vnni", "avx512f"} <= f:
                return "x86-avx512-vnni"
            if "avx2" in f:
                return "x86-avx2"
        if self.arch == "aarch64":
            if "i8mm" in f and "asimddp" in f:
                return "arm64-i8mm"
            if "asimddp" in f:
                return "arm64-dotprod"
        return "generic"

    @property
    def features(self) -> tuple[str, ...]:
        """The deciding flags this CPU has, in a fixed order."""
        wanted = X86_FLAGS if self.arch == "x86_64" else ARM_FLAGS if self.arch == "aarch64" else ()
        return tuple(flag for flag in wanted if flag in self.flags)

    @property
    def native_bf16(self) -> bool:
        """bf16 matrix arithmetic in hardware (AMX-BF16 or AVX512-BF16 on x86, BF16 on ARM64).
        Without it OpenVINO's bf16 hint is emulated and collapses (measured 0.04x of f32)."""
        if self.arch == "x86_64":
            return bool({"amx_bf16", "avx512_bf16"} & self.flags)
        return self.arch == "aarch64" and "bf16" in self.flags

    def to_dict(self) -> dict[str, object]:
        return {
            "class": self.isa_class,
            "arch": self.arch,
            "features": list(self.features),
            "native_bf16": self.native_bf16,
            "model": self.model,
            "source": self.source,
        }

    def __str__(self) -> str:
        feats = ", ".join(self.features) or "no SIMD flags that matter"
        return f"{self.isa_class} ({self.arch}: {feats})"


def _norm_arch(arch: str) -> str:
    a = arch.strip().lower()
    if a in ("x86_64", "amd64", "x86-64", "x64"):
        return "x86_64"
    if a in ("aarch64", "arm64", "armv8", "armv9"):
        return "aarch64"
    return a


def parse_cpuinfo(text: str, arch: Optional[str] = None) -> CpuIsa:
    """The first processor's flags from the text of ``/proc/cpuinfo`` (x86 ``flags``, ARM64
    ``Features``). *arch*: the machine (default: an x86 ``flags`` line means x86_64, an ARM
    ``Features`` line aarch64, else this platform's)."""
    flags: Optional[set[str]] = None
    kind = ""
    model = ""
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if not sep:
            continue
        key = key.strip().lower()
        if key in ("flags", "features") and flags is None:
            flags, kind = set(value.split()), key
        elif key in ("model name", "cpu model", "hardware") and not model:
            model = value.strip()
        elif key == "cpu part" and not model:
            model = f"ARM part {value.strip()}"
    if arch is None:
        arch = "x86_64" if kind == "flags" else "aarch64" if kind == "features" else platform.machine()
    return CpuIsa(arch=_norm_arch(arch), flags=frozenset(flags or ()), model=model)


def parse_flags(spec: Union[str, Iterable[str]], source: str = "argument") -> CpuIsa:
    """``"x86_64: avx2 avx512f"``, ``"aarch64: asimddp,i8mm"``, ``"avx2 fma"`` or a list of flags."""
    arch: Optional[str] = None
    if isinstance(spec, str):
        head, sep, rest = spec.partition(":")
        if sep:
            arch, spec = head, rest
        items = spec.replace(",", " ").split()
    else:
        items = [str(s) for s in spec]
    flags = frozenset(s.strip().lower() for s in items if s.strip())
    if arch is not None and not arch.strip():
        raise InputError(f"{source}: empty architecture before ':'; expected e.g. 'x86_64: avx2 fma'")
    if arch is None:
        arch = "aarch64" if flags & _ARM_ONLY else "x86_64"
    return CpuIsa(arch=_norm_arch(arch), flags=flags, source=source)


def detect_cpu(
    flags: Union[str, Iterable[str], None] = None,
    *,
    environ: Optional[Mapping[str, str]] = None,
    cpuinfo: Optional[Path] = None,
) -> CpuIsa:
    """This CPU (or the one *flags* / ``CLIP_RT_CPU_FLAGS`` describes)."""
    if flags is not None:
        return parse_flags(flags)
    env = os.environ if environ is None else environ
    if env.get(ENV_FLAGS, "").strip():
        return parse_flags(env[ENV_FLAGS], source=ENV_FLAGS)
    path = cpuinfo or CPUINFO
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:  # not Linux: the architecture is known, the flags are not
        return CpuIsa(arch=_norm_arch(platform.machine()), flags=frozenset(), source="platform")
    isa = parse_cpuinfo(text)
    return CpuIsa(arch=isa.arch, flags=isa.flags, model=isa.model, source=str(path))
