"""Budgets for a 1 GB board, the qemu-overhead estimate, and the one summary line.

Figures are measured in MiB (2**20 bytes, as bench/ reports RSS) and kept so in report.json;
the budgets are the issue's "MB", read strictly as 10**6 bytes (250 MB = 238.4 MiB), so the
verdicts and the summary line show MB.

Peak RSS under qemu-user is the qemu process's: the guest program's memory plus qemu's own
(its code, and a cache of translated code that grows with the code executed). Three figures:

- ``estimate`` (what budgets are judged on): the sampled peak of the guest program's own
  mappings (rss.py), plus whatever the sampling missed of the process's exact peak (VmHWM minus
  the sampled total peak), all of it counted as the guest's;
- ``upper``: VmHWM minus qemu's fixed overhead (qemu running a trivial Python minus the same
  natively), an upper bound since a real workload's translation cache is bigger than a
  trivial program's;
- ``raw``: VmHWM under qemu; and the x86 figure of the same command, natively.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

MIB = 1 << 20
MB = 10**6
INSTALL_BUDGET_MB = 250.0
RSS_BUDGET_MB = {"main": 300.0, "small": 150.0}


def mb(mib: Optional[float]) -> Optional[float]:
    """MiB -> MB (10**6 bytes)."""
    return None if mib is None else mib * MIB / MB


@dataclass(frozen=True)
class Verdict:
    name: str
    value: float  # MB
    budget: float  # MB

    @property
    def met(self) -> bool:
        return self.value <= self.budget

    def text(self) -> str:
        return f"{self.value:.0f} MB <= {self.budget:.0f} {'met' if self.met else 'NOT met'}"


def qemu_overhead_mib(qemu_trivial: list[float], x86_trivial: list[float]) -> float:
    """qemu's fixed RSS overhead: the smallest trivial-Python peak under qemu minus natively."""
    if not qemu_trivial or not x86_trivial:
        raise ValueError("need at least one trivial-Python sample on each side")
    return max(0.0, min(qemu_trivial) - min(x86_trivial))


def estimate_device_mib(raw_qemu_mib: float, overhead_mib: float) -> float:
    """The upper bound: qemu's VmHWM less its fixed overhead."""
    return max(0.0, raw_qemu_mib - overhead_mib)


def device_estimate_mib(run: dict[str, Any]) -> float:
    """Guest-only sampled peak + the part of VmHWM the sampling missed (all of it the guest's).
    Natively the guest is the whole process, so this is VmHWM."""
    hwm = run["peak_rss_mb"]
    guest, total = run.get("sampled_guest_peak_mb"), run.get("sampled_total_peak_mb")
    if guest is None or total is None:
        return hwm
    return min(hwm, guest + max(0.0, hwm - total))


def budgets(report: dict[str, Any]) -> list[Verdict]:
    """The issue's budgets for a 1 GB board, in MB: the aarch64 runtime install, and per model
    the peak RSS estimate of the device's commands (the larger of one image and the folder), of
    one image with --low-memory (same results), of that command again with its labels in the
    prompt cache (a device classifying with the same labels: no text tower loaded), and of the
    folder with the low-memory settings."""
    out = []
    inst = report.get("install", {}).get("aarch64_mib")
    if inst is not None:
        out.append(Verdict("install", mb(inst), INSTALL_BUDGET_MB))
    for name, m in report.get("memory", {}).get("models", {}).items():
        role = m.get("role")
        if role not in RSS_BUDGET_MB:
            continue
        peaks = [r["estimate_mib"] for r in (m.get("one_image"), m.get("folder")) if r and "estimate_mib" in r]
        if peaks:  # the README's commands
            out.append(Verdict(f"rss {name}", mb(max(peaks)), RSS_BUDGET_MB[role]))
        one_low = m.get("one_image_lowmem")
        if one_low and "estimate_mib" in one_low:
            out.append(Verdict(f"rss {name} 1 img --low-memory", mb(one_low["estimate_mib"]), RSS_BUDGET_MB[role]))
        repeat = m.get("one_image_repeat")
        if repeat and "estimate_mib" in repeat:
            out.append(Verdict(f"rss {name} 1 img repeat", mb(repeat["estimate_mib"]), RSS_BUDGET_MB[role]))
        low = m.get("folder_lowmem")
        if low and "estimate_mib" in low:
            out.append(Verdict(f"rss {name} lowmem", mb(low["estimate_mib"]), RSS_BUDGET_MB[role]))
    return out


def correctness_failures(report: dict[str, Any]) -> list[str]:
    """Everything that makes the check FAIL (budgets do not, unless asked)."""
    fails = list(report.get("failures", []))
    tests = report.get("tests")
    if tests is not None and not tests.get("ok"):
        fails.append(f"tests: {tests.get('failed', '?')} failed, {tests.get('errors', '?')} errors")
    for name, p in report.get("parity", {}).items():
        if not p.get("passed"):
            bad = [k for k, c in p.get("checks", {}).items() if not c.get("passed")]
            fails.append(f"parity {name}: {', '.join(bad) or p.get('error', 'failed')}")
    for name, c in report.get("classify", {}).items():
        for what, r in c.items():
            if not r.get("passed"):
                fails.append(f"classify {name} {what}: {r.get('error', 'failed')}")
    for key in ("hwcap", "cpu_choice"):
        v = report.get(key)
        if v is not None and v.get("ok") is False:
            fails.append(f"{key}: {v.get('detail')}")
    return fails


def _fmt(x: Optional[float], spec: str = ".0f") -> str:
    return "?" if x is None else format(x, spec)


def summary_line(report: dict[str, Any], strict_budgets: bool = False) -> str:
    """One line: verdict, then tests, parity, install, RSS, bundles, CPU choice."""
    fails = correctness_failures(report)
    verdicts = budgets(report)
    missed = [v for v in verdicts if not v.met]
    ok = not fails and not (strict_budgets and missed)
    parts = [f"arm64-check {'PASS' if ok else 'FAIL'} ({report.get('cpu', '?')} under qemu {report.get('qemu', '?')})"]
    t = report.get("tests")
    if t is None:
        parts.append("tests skipped")
    else:
        parts.append(
            f"tests {t.get('passed', 0)} passed, {t.get('failed', 0) + t.get('errors', 0)} failed, "
            f"{t.get('skipped', 0)} skipped"
        )
    for name, p in report.get("parity", {}).items():
        c = p.get("checks", {})
        bits = []
        if "pixels" in c:
            bits.append(f"pixels {_fmt(c['pixels'].get('max_abs_diff'), '.1e')}")
        fp32 = [c[k]["max_abs_diff"] for k in ("image_fp32", "text_fp32") if k in c and "max_abs_diff" in c[k]]
        if fp32:
            bits.append(f"fp32 {max(fp32):.1e}<=1e-05")
        for prec in ("int8", "fp16"):
            for enc in ("image", "text"):
                ch = c.get(f"{enc}_{prec}")
                if not ch or "vs_fp32" not in ch:
                    continue
                gate = ch.get("gate", {})
                bit = f"{prec} {enc} cos {ch['vs_fp32']['min_cosine']:.5f}>={gate.get('min_cosine', 0):g}"
                if ch.get("batch_max_abs_diff") is not None:
                    bit += f" batch {ch['batch_max_abs_diff']:.0e}<={gate.get('batch_max_abs_diff', float('nan')):g}"
                bit += f" (vs x86 {prec} {ch['vs_x86_same_precision']['max_abs_diff']:.1e})"
                bits.append(bit)
        parts.append(f"parity {name} {'ok' if p.get('passed') else 'FAILED'}: {', '.join(bits)}")
    inst = report.get("install", {})
    for v in verdicts:
        if v.name == "install":
            parts.append(f"install {v.text()} (x86 {_fmt(mb(inst.get('x86_mib')))} MB)")
    mem = report.get("memory", {})
    for name, m in mem.get("models", {}).items():
        one, folder, low = m.get("one_image", {}), m.get("folder", {}), m.get("folder_lowmem")
        v = next((v for v in verdicts if v.name == f"rss {name}"), None)
        text = (
            f"RSS {name} int8 1/{folder.get('images', '?')} img {_fmt(mb(one.get('estimate_mib')))}/"
            f"{_fmt(mb(folder.get('estimate_mib')))} MB est. (x86 {_fmt(mb(one.get('x86_mib')))}/"
            f"{_fmt(mb(folder.get('x86_mib')))}, qemu total {_fmt(mb(one.get('raw_mib')))}/"
            f"{_fmt(mb(folder.get('raw_mib')))})"
        )
        if v:
            text += f" {'met' if v.met else 'NOT met'} <= {v.budget:.0f}"
        for label, entry, verdict_name in (
            ("1 img --low-memory", m.get("one_image_lowmem"), "1 img --low-memory"),
            ("the same again (labels cached)", m.get("one_image_repeat"), "1 img repeat"),
            ("folder --low-memory", low, "lowmem"),
        ):
            if not entry:
                continue
            verdict = next((v for v in verdicts if v.name == f"rss {name} {verdict_name}"), None)
            text += f"; {label}: {_fmt(mb(entry.get('estimate_mib')))} (x86 {_fmt(mb(entry.get('x86_mib')))})"
            if verdict:
                text += f" {'met' if verdict.met else 'NOT met'}"
        parts.append(text)
    sizes = [f"{n} {mb(b['slim_mib']):.0f}" for n, b in report.get("bundles", {}).items() if "slim_mib" in b]
    if sizes:
        parts.append(f"int8 bundles {', '.join(sizes)} MB")
    cc = report.get("cpu_choice")
    if cc is not None:
        parts.append(f"cpu choice {cc.get('detail')}")
    if fails:
        parts.append("FAILED: " + "; ".join(fails))
    return " | ".join(parts)
