"""A fake ARM64 ``/proc/cpuinfo`` for the emulated system, and the HWCAP names it must agree with.

Why: qemu-user passes the host's files through, so an emulated program reads the host's Intel
``/proc/cpuinfo``. onnxruntime's CPU detection (pytorch/cpuinfo) then finds no ARM processor and
crashes on import. The check bind-mounts the text made here over ``/proc/cpuinfo`` inside the
guest. It must describe the CPU qemu emulates (``QEMU_CPU``): cpuinfo takes the ISA from the
auxiliary vector (HWCAP, set by qemu for that model) and the core type from ``CPU part``; a file
that disagrees with HWCAP would make clip-rt's own flag detection lie. The guest therefore
decodes its HWCAP (``hwcap_names``) and the check compares it with ``CpuModel.features``.

This module is plain data + string formatting (stdlib only): the guest imports it too.
"""

from __future__ import annotations

from dataclasses import dataclass

# Linux arch/arm64/include/uapi/asm/hwcap.h, bit -> the name /proc/cpuinfo prints.
HWCAP_NAMES = (
    "fp",
    "asimd",
    "evtstrm",
    "aes",
    "pmull",
    "sha1",
    "sha2",
    "crc32",
    "atomics",
    "fphp",
    "asimdhp",
    "cpuid",
    "asimdrdm",
    "jscvt",
    "fcma",
    "lrcpc",
    "dcpop",
    "sha3",
    "sm3",
    "sm4",
    "asimddp",
    "sha512",
    "sve",
    "asimdfhm",
    "dit",
    "uscat",
    "ilrcpc",
    "flagm",
    "ssbs",
    "sb",
    "paca",
    "pacg",
)
HWCAP2_NAMES = (
    "dcpodp",
    "sve2",
    "sveaes",
    "svepmull",
    "svebitperm",
    "svesha3",
    "svesm4",
    "flagm2",
    "frint",
    "svei8mm",
    "svef32mm",
    "svef64mm",
    "svebf16",
    "i8mm",
    "bf16",
    "dgh",
    "rng",
    "bti",
    "mte",
    "ecv",
    "afp",
    "rpres",
    "mte3",
    "sme",
    "smei16i64",
    "smef64f64",
    "smei8i32",
    "smef16f32",
    "smeb16f32",
    "smef32f32",
    "smefa64",
    "wfxt",
    "ebf16",
    "sveebf16",
    "cssc",
    "rprfm",
    "sve2p1",
)
# The kernel's event stream is a timer feature qemu-user does not model; real boards list it.
NOT_FROM_QEMU = frozenset({"evtstrm"})


@dataclass(frozen=True)
class CpuModel:
    """One ARM core as /proc/cpuinfo shows it, and the qemu CPU model that emulates it."""

    qemu_cpu: str  # QEMU_CPU value
    board: str  # a device with this core, for the docs
    implementer: int
    part: int
    variant: int
    revision: int
    features: tuple[str, ...]  # as qemu-user 7.2 advertises them in HWCAP/HWCAP2 for qemu_cpu
    isa_class: str  # what clip_rt.engine.cpu must call it (its backend table is keyed by this)


# What qemu 7.2 advertises for both of its ARMv8.2 cores with the int8 dot product (asimddp).
ARMV82_DOTPROD_FEATURES = (
    "fp", "asimd", "aes", "pmull", "sha1", "sha2", "crc32", "atomics", "fphp", "asimdhp", "cpuid",
    "asimdrdm", "lrcpc", "dcpop", "asimddp",
)  # fmt: skip

# Features: what `hwcap_names()` printed inside the guest under each QEMU_CPU (qemu 7.2,
# Debian bookworm), checked again by every run of the script.
CPU_MODELS: dict[str, CpuModel] = {
    m.qemu_cpu: m
    for m in (
        CpuModel(
            "neoverse-n1",
            "AWS Graviton2, Ampere Altra (server class; has the int8 dot product)",
            0x41,
            0xD0C,
            0x3,
            1,
            ARMV82_DOTPROD_FEATURES,
            "arm64-dotprod",
        ),
        CpuModel(
            "cortex-a76",
            "Raspberry Pi 5 (has the int8 dot product)",
            0x41,
            0xD0B,
            0x4,
            1,
            ARMV82_DOTPROD_FEATURES,
            "arm64-dotprod",
        ),
        CpuModel(
            "cortex-a72",
            "Raspberry Pi 4 (no int8 dot product)",
            0x41,
            0xD08,
            0x0,
            3,
            ("fp", "asimd", "aes", "pmull", "sha1", "sha2", "crc32", "cpuid"),
            "generic",
        ),
    )
}
DEFAULT_CPU = "neoverse-n1"


def parse_cpu_list(text: str) -> list[int]:
    """``/sys/devices/system/cpu/possible`` syntax (``0-3,6,8-9``) -> ``[0, 1, 2, 3, 6, 8, 9]``."""
    cpus: list[int] = []
    for part in text.strip().split(","):
        if not part:
            continue
        lo, sep, hi = part.partition("-")
        try:
            first, last = int(lo), int(hi) if sep else int(lo)
        except ValueError:
            raise ValueError(f"not a CPU list: {text!r} (expected e.g. '0-3,6')") from None
        if last < first:
            raise ValueError(f"not a CPU list: {text!r} (range {part!r} runs backwards)")
        cpus.extend(range(first, last + 1))
    if not cpus:
        raise ValueError(f"not a CPU list: {text!r} (no CPUs)")
    return cpus


def fake_cpuinfo(model: CpuModel, cpus: list[int]) -> str:
    """The text of an arm64 /proc/cpuinfo (Linux's format) for *cpus* processors of *model*.

    *cpus* should be the host's online CPUs: the guest sees the host's /sys topology, and
    cpuinfo expects one block per CPU listed there."""
    if not cpus:
        raise ValueError("fake_cpuinfo needs at least one CPU")
    blocks = []
    for n in cpus:
        blocks.append(
            f"processor\t: {n}\n"
            "BogoMIPS\t: 50.00\n"
            f"Features\t: {' '.join(model.features)}\n"
            f"CPU implementer\t: 0x{model.implementer:02x}\n"
            "CPU architecture: 8\n"
            f"CPU variant\t: 0x{model.variant:x}\n"
            f"CPU part\t: 0x{model.part:03x}\n"
            f"CPU revision\t: {model.revision}\n"
        )
    return "\n".join(blocks) + "\n"


def parse_features(cpuinfo_text: str) -> list[str]:
    """The ``Features`` of the first processor in an arm64 /proc/cpuinfo (empty if none)."""
    for line in cpuinfo_text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() == "Features":
            return value.split()
    return []


def hwcap_names(hwcap: int, hwcap2: int = 0) -> list[str]:
    """Decode AT_HWCAP / AT_HWCAP2 bits into /proc/cpuinfo feature names, in the kernel's order;
    unknown bits come out as ``hwcap:<bit>`` / ``hwcap2:<bit>`` so nothing is dropped silently."""
    names = []
    for bits, table, tag in ((hwcap, HWCAP_NAMES, "hwcap"), (hwcap2, HWCAP2_NAMES, "hwcap2")):
        bit = 0
        while bits >> bit:
            if bits >> bit & 1:
                names.append(table[bit] if bit < len(table) else f"{tag}:{bit}")
            bit += 1
    return names


def read_hwcaps() -> tuple[int, int]:
    """AT_HWCAP and AT_HWCAP2 of this process (Linux; getauxval through ctypes)."""
    import ctypes

    libc = ctypes.CDLL(None)
    libc.getauxval.restype = ctypes.c_ulong
    libc.getauxval.argtypes = [ctypes.c_ulong]
    at_hwcap, at_hwcap2 = 16, 26
    return int(libc.getauxval(at_hwcap)), int(libc.getauxval(at_hwcap2))


def feature_mismatch(model: CpuModel, seen: list[str]) -> str:
    """'' when the HWCAP names *seen* in the guest equal the model's table (ignoring features qemu
    never reports), else a message naming both differences."""
    want = set(model.features) - NOT_FROM_QEMU
    got = set(seen) - NOT_FROM_QEMU
    if want == got:
        return ""
    parts = []
    if got - want:
        parts.append(f"qemu advertises {', '.join(sorted(got - want))} that the fake cpuinfo lacks")
    if want - got:
        parts.append(f"the fake cpuinfo lists {', '.join(sorted(want - got))} that qemu does not advertise")
    return f"QEMU_CPU={model.qemu_cpu}: " + "; ".join(parts)
