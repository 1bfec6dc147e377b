"""CPU/ISA detection (clip_rt.engine.cpu) on real-looking /proc/cpuinfo files of each kind."""

from __future__ import annotations

from pathlib import Path

import pytest

from clip_rt.engine.cpu import ENV_FLAGS, ISA_CLASSES, detect_cpu, parse_cpuinfo, parse_flags
from clip_rt.errors import InputError

DATA = Path(__file__).parent / "data" / "cpuinfo"


@pytest.mark.parametrize(
    "name, arch, isa_class, bf16, model",
    [
        ("x86_amx_sapphire_rapids.txt", "x86_64", "x86-amx", True, "Intel(R) Xeon(R) Platinum 8488C"),
        (
            "x86_vnni_cascade_lake.txt",
            "x86_64",
            "x86-avx512-vnni",
            False,
            "Intel(R) Xeon(R) Platinum 8259CL CPU @ 2.50GHz",
        ),
        ("x86_avx2_epyc_rome.txt", "x86_64", "x86-avx2", False, "AMD EPYC 7R32"),
        ("arm64_neoverse_n1.txt", "aarch64", "arm64-dotprod", False, "ARM part 0xd0c"),
        ("arm64_neoverse_v1_i8mm.txt", "aarch64", "arm64-i8mm", True, "ARM part 0xd40"),
        ("arm64_cortex_a53.txt", "aarch64", "generic", False, "ARM part 0xd03"),
    ],
)
def test_cpuinfo_samples(name: str, arch: str, isa_class: str, bf16: bool, model: str) -> None:
    isa = parse_cpuinfo((DATA / name).read_text())
    assert (isa.arch, isa.isa_class, isa.native_bf16, isa.model) == (arch, isa_class, bf16, model)
    assert isa_class in ISA_CLASSES
    assert isa.to_dict()["class"] == isa_class and isa_class in str(isa)


def test_feature_lists_keep_only_what_matters() -> None:
    amx = parse_cpuinfo((DATA / "x86_amx_sapphire_rapids.txt").read_text())
    assert amx.features == (
        "amx_tile",
        "amx_int8",
        "amx_bf16",
        "avx512_bf16",
        "avx512_vnni",
        "avx512f",
        "avx_vnni",
        "avx2",
        "fma",
    )
    v1 = parse_cpuinfo((DATA / "arm64_neoverse_v1_i8mm.txt").read_text())
    assert v1.features == ("asimd", "asimddp", "i8mm", "bf16", "sve", "svei8mm", "svebf16")


def test_amx_without_bf16_tiles_is_not_the_amx_class() -> None:
    # Only int8 tiles (not a real part, but the rule must not assume both): VNNI class, and
    # the bf16 hint stays off without a bf16 unit.
    isa = parse_flags("x86_64: amx_tile amx_int8 avx512f avx512_vnni avx2")
    assert isa.isa_class == "x86-avx512-vnni" and not isa.native_bf16
    assert parse_flags("avx512f avx512_vnni avx512_bf16").native_bf16  # Cooper Lake / Zen 4


@pytest.mark.parametrize(
    "spec, arch, isa_class",
    [
        ("x86_64: amx_int8 amx_bf16 avx512f avx512_vnni", "x86_64", "x86-amx"),
        ("avx2,fma", "x86_64", "x86-avx2"),
        ("amd64: avx2", "x86_64", "x86-avx2"),
        ("aarch64: asimd asimddp i8mm", "aarch64", "arm64-i8mm"),
        ("arm64: asimd asimddp", "aarch64", "arm64-dotprod"),
        ("asimd asimddp", "aarch64", "arm64-dotprod"),  # ARM-only flags imply aarch64
        ("", "x86_64", "generic"),
        ("riscv64: v", "riscv64", "generic"),
    ],
)
def test_parse_flags(spec: str, arch: str, isa_class: str) -> None:
    isa = parse_flags(spec)
    assert (isa.arch, isa.isa_class) == (arch, isa_class)


def test_parse_flags_rejects_an_empty_architecture() -> None:
    with pytest.raises(InputError, match="empty architecture"):
        parse_flags(": avx2")


def test_detect_order_argument_env_file(tmp_path: Path) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text((DATA / "arm64_neoverse_n1.txt").read_text())
    from_file = detect_cpu(environ={}, cpuinfo=cpuinfo)
    assert from_file.isa_class == "arm64-dotprod" and from_file.source == str(cpuinfo)
    from_env = detect_cpu(environ={ENV_FLAGS: "x86_64: avx2"}, cpuinfo=cpuinfo)
    assert from_env.isa_class == "x86-avx2" and from_env.source == ENV_FLAGS
    given = detect_cpu(["amx_int8", "amx_bf16"], environ={ENV_FLAGS: "avx2"}, cpuinfo=cpuinfo)
    assert given.isa_class == "x86-amx" and given.source == "argument"
    blank_env = detect_cpu(environ={ENV_FLAGS: "  "}, cpuinfo=cpuinfo)
    assert blank_env.isa_class == "arm64-dotprod"


def test_detect_without_cpuinfo_is_generic(tmp_path: Path) -> None:
    isa = detect_cpu(environ={}, cpuinfo=tmp_path / "missing")
    assert isa.isa_class == "generic" and isa.source == "platform" and not isa.flags


def test_env_var_reaches_the_process(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_FLAGS, "aarch64: asimd asimddp i8mm bf16")
    isa = detect_cpu()
    assert isa.isa_class == "arm64-i8mm" and isa.native_bf16
