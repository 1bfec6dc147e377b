"""scripts/arm64-check: clip-rt on arm64 under qemu, compared with the same calls on x86.

Steps (each logged to stderr; the last stdout line is the one-line summary):

1. host: install qemu-user-static, binfmt-support, mmdebstrap, arch-test when missing; register qemu for
   arm64 ELF files (binfmt_misc) when not registered.
2. rootfs: an arm64 Debian root file system (python3-venv), built once into the cache.
3. wheel: a wheel of this checkout (the files git tracks or would track, uncommitted edits too).
4. bundles: each model exported on the host, full (fp32+int8) and slim (int8 only), cached.
5. inputs: comparison photos and a folder of N 6-MP JPEGs, cached.
6. aarch64: inside the emulated system, ``guest.py``: venv + runtime-only install (size), probe
   (HWCAP, cpuinfo, onnxruntime, clip-rt's CPU choice), embeddings, peak RSS of the README's
   classify, the torch-free tests.
7. x86: the same ``guest.py`` steps (no tests) in a fresh x86 venv pinned to the versions pip
   chose on aarch64, so that both sides run the same onnxruntime/numpy/Pillow.
8. compare, budgets, report (JSON) and the summary line.

Exit status: 0 when every correctness check passes (budgets are reported; ``--strict-budgets``
makes a missed one fail too), 1 when one fails, 2 for bad usage.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Optional

from . import bundles, compare, cpuinfo, emulator, host, inputs, rootfs, summary
from .lock import held

REPO = Path(__file__).resolve().parents[2]
DEFAULT_MODEL = "ViT-B-32"
# The small end, judged on the 150 MiB budget: the smallest family with published weights in
# open_clip 3.3 (MobileCLIP2-S0, 75 M parameters: an 11 M image tower, a 63 M text tower; the
# first MobileCLIP's S0 is not in open_clip) and the smallest architecture that exports at all
# (ViT-S-32-alt, 43 M, no published weights). ViT-B-32: 151 M, MobileCLIP-S1: 85 M, RN50: 102 M.
DEFAULT_SMALL_MODELS = ("MobileCLIP2-S0", "ViT-S-32-alt")
LABELS = "cat,dog,car"  # the README's classify
# The torch-free subset run on arm64: the runtime's own tests (model, sessions, tokeniser,
# preprocessing, image decoding and broken files, zero-shot, prompt cache, CLI, video frame
# sampling, failures, a long streaming run; CPU detection and the backend choice by injected
# flags, backends, slim bundles, settings, untrusted bundles and inputs, outputs), minus those
# marked torch (they need the [export] extra; a test on an exported bundle skips itself without
# torch). Slow torch-free tests stay: the long streaming run is one the check is for. Left out:
# files that need the [report] extra (matplotlib: test_report, test_cli_similarity), serve/ray/ann
# extras, GPU tooling (test_gpu_path), bench's own tests and the export's. A test that needs an
# extra skips itself.
# Test dependencies: what these files import besides the runtime (scikit-image: real photos).
GUEST_TEST_FILES = (
    "tests/test_tokenizer.py",
    "tests/test_zeroshot.py",
    "tests/test_session.py",
    "tests/test_model.py",
    "tests/test_preprocess.py",
    "tests/test_bad_images.py",
    "tests/test_prompt_cache.py",
    "tests/test_cli_classify.py",
    "tests/test_cli_index.py",
    "tests/test_cli_video.py",
    "tests/test_reliability.py",
    "tests/test_long_run.py",
    "tests/test_cpu_isa.py",
    "tests/test_backend_choice.py",
    "tests/test_backends.py",
    "tests/test_settings.py",
    "tests/test_cli_labels.py",
    "tests/test_untrusted_bundles.py",
    "tests/test_untrusted_inputs.py",
    "tests/test_outputs.py",
    "tests/test_precision_follows.py",
    "tests/test_slim_bundle.py",
    "tests/test_model_preprocess.py",
    "tests/test_manifest_quantization.py",
    "tests/test_bundle_cli.py",
    "tests/test_api_agrees_with_cli.py",
    "tests/test_low_memory.py",
)
GUEST_TEST_MARKER = "not torch"
GUEST_TEST_DEPS = ("pytest", "hypothesis", "onnx", "psutil", "scikit-image")
KEEP_RUNS = 3
LOCK_IN_RUN = "heavy.lock"  # where the --lock file appears in the guest's /check


def log(msg: str) -> None:
    print(f"arm64-check: {msg}", file=sys.stderr, flush=True)


def default_cache_dir(env: Optional[dict[str, str]] = None) -> Path:
    """``$CLIP_RT_ARM64_CACHE``, else ``$XDG_CACHE_HOME/clip-rt-arm64``, else ``~/.cache/clip-rt-arm64``.
    Not a temp folder: the root file system takes minutes to build and is reused."""
    env = dict(os.environ) if env is None else env
    if env.get("CLIP_RT_ARM64_CACHE"):
        return Path(env["CLIP_RT_ARM64_CACHE"]).expanduser()
    base = Path(env["XDG_CACHE_HOME"]).expanduser() if env.get("XDG_CACHE_HOME") else Path.home() / ".cache"
    return base / "clip-rt-arm64"


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="scripts/arm64-check",
        description="Install and run clip-rt on arm64 under qemu-user; compare with x86; measure install "
        "size and peak memory. Needs root (apt, binfmt_misc, mount namespaces) and the [export,test] "
        "extras on the host.",
    )
    p.add_argument(
        "--cache",
        type=Path,
        default=None,
        help="cache folder: root file system, bundles, inputs, runs (default: $CLIP_RT_ARM64_CACHE, "
        "else $XDG_CACHE_HOME/clip-rt-arm64, else ~/.cache/clip-rt-arm64)",
    )
    p.add_argument(
        "--cpu",
        choices=sorted(cpuinfo.CPU_MODELS),
        default=cpuinfo.DEFAULT_CPU,
        help="emulated core (QEMU_CPU and the fake /proc/cpuinfo); default %(default)s",
    )
    p.add_argument("--model", default=DEFAULT_MODEL, help="main model, RSS budget 300 MiB (default %(default)s)")
    p.add_argument(
        "--small-model",
        dest="small_models",
        action="append",
        default=None,
        metavar="NAME",
        help="a small model, RSS budget 150 MiB; repeatable (default: "
        f"{' and '.join(DEFAULT_SMALL_MODELS)}; 'none' for none)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights (default %(default)s)")
    p.add_argument("--images", type=_positive_int, default=200, help="images in the classified folder (default 200)")
    p.add_argument(
        "--lowmem",
        action="store_true",
        help="also classify the folder with --low-memory (low-memory mode: one image per batch, "
        "the same results; under qemu this doubles the longest step)",
    )
    p.add_argument("--no-tests", dest="tests", action="store_false", help="skip the torch-free tests on arm64")
    p.add_argument("--test-timeout", type=_positive_int, default=5400, help="seconds for the arm64 tests")
    p.add_argument("--suite", default="bookworm", help="Debian suite of the root file system (default %(default)s)")
    p.add_argument("--mirror", default="http://deb.debian.org/debian", help="Debian mirror (default %(default)s)")
    p.add_argument("--rebuild-rootfs", action="store_true", help="rebuild the cached root file system")
    p.add_argument("--json", type=Path, default=None, help="also write the report here (always in the run folder)")
    p.add_argument("--strict-budgets", action="store_true", help="a missed budget fails the check too")
    p.add_argument("--keep-venvs", action="store_true", help="keep both venvs in the run folder")
    p.add_argument(
        "--lock",
        type=Path,
        default=None,
        metavar="FILE",
        help="a lock file shared with other heavy work (as `flock FILE`): held during each heavy "
        "step only (an export, a step under qemu or on x86), so others get turns between steps",
    )
    args = p.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # recorded in the report
    small = list(DEFAULT_SMALL_MODELS) if args.small_models is None else args.small_models
    if any(name.lower() == "none" for name in small):
        if len(small) > 1:
            p.error("--small-model none cannot be combined with other --small-model names")
        small = []
    if args.model in small:
        p.error("--small-model must differ from --model")
    if len(set(small)) != len(small):
        p.error(f"--small-model given twice: {', '.join(sorted({n for n in small if small.count(n) > 1}))}")
    args.small_models = small
    args.cache = (args.cache or default_cache_dir()).expanduser().absolute()
    if args.lock is not None:
        args.lock = args.lock.expanduser().absolute()
        if not args.lock.parent.is_dir():
            p.error(f"--lock: the folder of {args.lock} does not exist")
    return args


def _positive_int(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {n}")
    return n


# -- pieces ---------------------------------------------------------------------------------------
def check_checkout() -> None:
    """The host's clip_rt must be this checkout (the export and x86 reference use it)."""
    try:
        import clip_rt
    except ImportError:
        raise SystemExit(
            f"arm64-check: clip_rt is not importable; run `pip install -e '.[export,test]'` in {REPO}"
        ) from None
    where = Path(clip_rt.__file__).resolve()
    if REPO not in where.parents:
        raise SystemExit(
            f"arm64-check: clip_rt is imported from {where}, not from this checkout ({REPO}); "
            f"run `pip install -e '.[export,test]'` here, or run the script with that venv's python"
        )


def build_wheel(dest: Path) -> Path:
    """A wheel of the working tree: git's tracked and untracked-not-ignored files, copied to a
    staging folder first so the build writes nothing into the checkout."""
    stage = dest / "src-stage"
    files = (
        subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=REPO,
            check=True,
            capture_output=True,
        )
        .stdout.decode()
        .split("\0")
    )
    for rel in filter(None, files):
        src = REPO / rel
        if src.is_file():
            (stage / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, stage / rel)
    out = dest / "wheel"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(stage)], check=True)
    shutil.rmtree(stage)
    wheels = sorted(out.glob("clip_rt-*.whl"))
    if len(wheels) != 1:
        raise RuntimeError(f"expected one clip_rt wheel in {out}, found {[w.name for w in wheels]}")
    return wheels[0]


def copy_test_tree(dest: Path) -> Path:
    """tests/, bench/ (some tests import it) and pyproject.toml (pytest's markers), without
    clip_rt/: the tests must import the installed wheel, not the checkout."""
    src = dest / "src"
    ignore = shutil.ignore_patterns("__pycache__", "work", "results")
    for name in ("tests", "bench"):
        shutil.copytree(REPO / name, src / name, ignore=ignore)
    shutil.copy2(REPO / "pyproject.toml", src / "pyproject.toml")
    return src


def constraints_from_freeze(freeze: list[str]) -> str:
    """Pins for the x86 venv from the aarch64 ``pip freeze``: same versions on both sides.
    clip-rt itself (a file wheel) and the venv's own tools are left out."""
    lines = []
    for line in freeze:
        m = re.match(r"^([A-Za-z0-9_.\-]+)==([^\s;]+)$", line.strip())
        if not m:
            continue
        name = m.group(1).lower().replace("_", "-")
        if name in {"clip-rt", "pip", "setuptools", "wheel"}:
            continue
        lines.append(f"{m.group(1)}=={m.group(2)}")
    return "\n".join(lines) + "\n"


def checkout_id() -> str:
    """The commit the wheel was built from, ``+dirty`` with uncommitted changes (they are in it)."""

    def git(*a: str) -> str:
        return subprocess.run(["git", *a], cwd=REPO, capture_output=True, text=True).stdout.strip()

    head = git("rev-parse", "--short=12", "HEAD") or "unknown"
    return head + ("+dirty" if git("status", "--porcelain", "--untracked-files=normal") else "")


def qemu_version() -> str:
    try:
        out = subprocess.run(["qemu-aarch64-static", "--version"], capture_output=True, text=True).stdout
    except OSError:
        return "not installed"
    m = re.search(r"version (\S+)", out)
    return m.group(1) if m else "unknown"


def host_isa() -> str:
    try:
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags"))
    except (OSError, StopIteration):
        return "unknown"
    have = set(flags.split(":", 1)[1].split())
    for name, need in (("AMX", "amx_int8"), ("AVX-512 VNNI", "avx512_vnni"), ("AVX2", "avx2")):
        if need in have:
            return f"x86_64 {name}"
    return "x86_64"


def run_streaming(
    cmd: list[str], *, env: dict[str, str], log_file: Path, timeout: float, cwd: Optional[Path] = None
) -> int:
    """Run *cmd* in its own process group, echo its lines to stderr and *log_file*; on timeout
    or interruption, kill the whole group (no qemu process is ever left behind)."""
    with open(log_file, "ab") as logf:
        proc = subprocess.Popen(
            cmd, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True
        )
        deadline = time.monotonic() + timeout
        try:
            assert proc.stdout is not None
            for raw in proc.stdout:
                logf.write(raw)
                logf.flush()
                sys.stderr.write("    " + raw.decode(errors="replace"))
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{cmd[0]} ran past {timeout:.0f} s")
            return proc.wait(timeout=max(1.0, deadline - time.monotonic()))
        except BaseException:
            _kill_group(proc)
            raise


def _kill_group(proc: subprocess.Popen) -> None:
    for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 30)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def prune_runs(runs: Path, keep: int = KEEP_RUNS) -> None:
    old = sorted(p for p in runs.iterdir() if p.is_dir())[:-keep] if runs.exists() else []
    for p in old:
        shutil.rmtree(p, ignore_errors=True)


# -- the report -------------------------------------------------------------------------------------
def build_report(
    args: argparse.Namespace, arm: dict[str, Any], x86: dict[str, Any], models: list[dict[str, Any]], run_dir: Path
) -> dict[str, Any]:
    arm_steps, x86_steps = arm.get("steps", {}), x86.get("steps", {})
    report: dict[str, Any] = {
        "command": " ".join(["scripts/arm64-check", *getattr(args, "argv", [])]),
        "checkout": getattr(args, "checkout", None) or checkout_id(),
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "cpu": args.cpu,
        "qemu": qemu_version(),
        "host": host_isa(),
        "run_dir": str(run_dir),
        "timings": "aarch64 seconds are qemu-user emulating arm64 on the x86 host: "
        "emulated, not a device's speed (docs/devices.md)",
        "failures": [],
    }
    fails = report["failures"]
    for side, res in (("aarch64", arm), ("x86", x86)):
        if not res.get("finished"):  # killed, timed out, or cut short: missing figures are no pass
            done = ", ".join(res.get("steps", {})) or "none"
            fails.append(f"{side}: the steps did not all run (done: {done})")
    for side, steps in (("aarch64", arm_steps), ("x86", x86_steps)):
        for name, st in steps.items():
            if not st.get("ok") and name != "tests":
                fails.append(f"{side} {name}: {st.get('error')}")
    mib = summary.MIB
    if "install" in arm_steps and arm_steps["install"].get("ok"):
        report["install"] = {
            "aarch64_mib": arm_steps["install"]["install_bytes"] / mib,
            "aarch64_venv_mib": arm_steps["install"]["venv_bytes_after"] / mib,
            "aarch64_largest": arm_steps["install"]["largest"],
            "x86_mib": x86_steps.get("install", {}).get("install_bytes", 0) / mib or None,
            "versions": [v for v in arm_steps["install"]["freeze"] if not v.startswith("clip-rt")],
        }
    # probe: the emulated CPU is what we said it is, and clip_rt comes from the venv
    probe = arm_steps.get("probe", {})
    if probe.get("ok"):
        model = cpuinfo.CPU_MODELS[args.cpu]
        seen = probe.get("hwcap_features", [])
        bad = cpuinfo.feature_mismatch(model, seen)
        if not bad and probe.get("cpuinfo_features") != list(model.features):
            bad = f"/proc/cpuinfo in the guest lists {probe.get('cpuinfo_features')}, not the fake one"
        report["hwcap"] = {"ok": not bad, "detail": bad or f"HWCAP = fake cpuinfo ({' '.join(seen)})"}
        report["onnxruntime"] = {
            "aarch64": probe.get("onnxruntime"),
            "x86": x86_steps.get("probe", {}).get("onnxruntime"),
        }
        report["cpu_choice"] = cpu_choice_verdict(probe.get("cpu_choice", {}), model, probe.get("info_cli"))
    for side, steps, venv in (("aarch64", arm_steps, arm["plan"]["venv"]), ("x86", x86_steps, x86["plan"]["venv"])):
        f = steps.get("probe", {}).get("clip_rt_file")
        if f and not f.startswith(venv):
            fails.append(f"{side}: clip_rt imported from {f}, not from the venv {venv}")
    # embeddings
    report["parity"] = {}
    if arm_steps.get("embed", {}).get("ok") and x86_steps.get("embed", {}).get("ok"):
        for m in models:
            a = compare.load_npz(host_path(arm_steps["embed"]["models"][m["name"]]["npz"], run_dir))
            x = compare.load_npz(Path(x86_steps["embed"]["models"][m["name"]]["npz"]))
            report["parity"][m["name"]] = compare.compare_embeddings(x, a, bundles.manifest_parity(m["full_host"]))
    # memory and classify agreement
    report["memory"], report["classify"] = memory_report(
        arm_steps.get("memory", {}), x86_steps.get("memory", {}), models, run_dir, args.images
    )
    report["bundles"] = {
        m["name"]: {
            "slim_mib": bundles.bundle_bytes(m["slim_host"]) / mib,
            "full_mib": bundles.bundle_bytes(m["full_host"]) / mib,
        }
        for m in models
    }
    t = arm_steps.get("tests")
    if t is not None:
        report["tests"] = {
            k: t.get(k)
            for k in (
                "ok",
                "passed",
                "failed",
                "errors",
                "skipped",
                "exit",
                "pytest_seconds",
                "failed_ids",
                "error",
                "log",
            )
        }
        report["tests"]["files"] = list(GUEST_TEST_FILES)
        report["tests"]["marker"] = GUEST_TEST_MARKER
    report["budgets"] = [
        {"name": v.name, "value_mb": v.value, "budget_mb": v.budget, "met": v.met} for v in summary.budgets(report)
    ]
    return report


def host_path(guest_path: str, run_dir: Path) -> Path:
    """A path the guest wrote (under /check, the run folder bound there) as the host sees it;
    other paths (the x86 side's) are the host's already."""
    p = Path(guest_path)
    try:
        return run_dir / p.relative_to("/check")
    except ValueError:
        return p


def memory_report(
    arm: dict[str, Any], x86: dict[str, Any], models: list[dict[str, Any]], run_dir: Path, images: int
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Peak RSS per model and run, both sides, with the device estimate (summary.py), and the
    agreement of the two sides' classify records."""
    mem: dict[str, Any] = {"models": {}}
    agreement: dict[str, Any] = {}
    if not arm.get("trivial_python") or not x86.get("trivial_python"):
        return mem, agreement
    qemu_triv = [r["peak_rss_mb"] for r in arm["trivial_python"] if "peak_rss_mb" in r]
    x86_triv = [r["peak_rss_mb"] for r in x86["trivial_python"] if "peak_rss_mb" in r]
    overhead = summary.qemu_overhead_mib(qemu_triv, x86_triv)
    imports = arm.get("imports", {})
    mem.update(
        {
            "qemu_trivial_mib": min(qemu_triv),
            "x86_trivial_mib": min(x86_triv),
            "qemu_overhead_mib": overhead,
            "qemu_imports_mib": imports.get("peak_rss_mb"),
            "qemu_imports_guest_mib": imports.get("sampled_guest_peak_mb"),
            "x86_imports_mib": x86.get("imports", {}).get("peak_rss_mb"),
        }
    )
    for m in models:
        a_runs, x_runs = arm.get("models", {}).get(m["name"], {}), x86.get("models", {}).get(m["name"], {})
        entry: dict[str, Any] = {"role": m["role"]}
        agreement[m["name"]] = {}
        for what in a_runs:
            a, x = a_runs[what], x_runs.get(what, {})
            if "peak_rss_mb" not in a:
                continue
            entry[what] = {
                "estimate_mib": summary.device_estimate_mib(a),
                "upper_mib": summary.estimate_device_mib(a["peak_rss_mb"], overhead),
                "raw_mib": a["peak_rss_mb"],
                "sampled_guest_mib": a.get("sampled_guest_peak_mb"),
                "sampled_total_mib": a.get("sampled_total_peak_mb"),
                "samples": a.get("samples"),
                "x86_mib": x.get("peak_rss_mb"),
                "images": 1 if what.startswith("one_image") else images,
                # seconds of the whole process (start-up, imports, decoding, inference); the
                # aarch64 figure is qemu emulating arm64 on the x86 host, not a device's speed
                "aarch64_emulated_wall_s": a.get("process_wall_s"),
                "x86_wall_s": x.get("process_wall_s"),
                "sessions_opened": a.get("opened"),
                "command": "clip-rt " + " ".join(a.get("args", [])),
            }
            if a.get("exit") in (0, None) and x.get("exit") in (0, None) and "records" in x:
                arm_records = host_path(a["records"], run_dir)
                agreement[m["name"]][what] = compare.compare_records(
                    compare.read_records(Path(x["records"])), compare.read_records(arm_records)
                )
            else:
                agreement[m["name"]][what] = {
                    "passed": False,
                    "error": f"exit aarch64 {a.get('exit')}, x86 {x.get('exit')}",
                }
        mem["models"][m["name"]] = entry
    return mem, agreement


def cpu_choice_verdict(
    choice: dict[str, Any], model: cpuinfo.CpuModel, info_cli: Optional[dict[str, Any]] = None
) -> dict[str, Any]:
    """clip-rt's per-CPU choice inside the emulated system, for the slim bundle: the emulated
    core's ISA class read from /proc/cpuinfo (not injected flags), and onnxruntime (its ARM
    kernels) for both encoders; the same from the API (``detect_cpu`` + ``plan_runtime``) and
    from ``clip-rt info BUNDLE --json`` (its ``runtime`` section)."""
    if not choice.get("available"):
        return {"ok": False, "detail": "clip_rt.engine.cpu is missing from the installed clip-rt"}
    problems = []
    views = [("API", choice.get("isa", {}), choice.get("plan"))]
    if info_cli is None:
        problems.append("clip-rt info --json was not run")
    elif info_cli.get("exit") != 0 or not isinstance(info_cli.get("runtime"), dict):
        problems.append(f"clip-rt info --json: exit {info_cli.get('exit')}: {str(info_cli.get('stderr', ''))[-300:]}")
    else:
        rt = info_cli["runtime"]
        views.append(("clip-rt info", rt.get("cpu", {}), {enc: rt.get(enc, {}) for enc in ("image", "text")}))
    for where, isa, plan in views:
        if isa.get("arch") != "aarch64" or isa.get("class") != model.isa_class:
            problems.append(
                f"{where}: detected {isa.get('arch')} {isa.get('class')}, expected aarch64 {model.isa_class}"
            )
        if isa.get("source") != "/proc/cpuinfo":
            problems.append(f"{where}: CPU read from {isa.get('source')!r}, not /proc/cpuinfo")
        if not plan:
            problems.append(f"{where}: no per-CPU plan")
            continue
        for enc in ("image", "text"):
            c = plan.get(enc) or {}
            if c.get("backend") != "onnxruntime":
                problems.append(f"{where}: {enc}: {c.get('backend')} chosen, expected onnxruntime")
    if len(views) == 2 and views[0][2] and views[1][2]:
        for enc in ("image", "text"):
            a, b = views[0][2].get(enc, {}), views[1][2].get(enc, {})
            if (a.get("backend"), a.get("precision")) != (b.get("backend"), b.get("precision")):
                problems.append(
                    f"{enc}: the API plans {a.get('backend')} {a.get('precision')}, "
                    f"clip-rt info {b.get('backend')} {b.get('precision')}"
                )
    if problems:
        return {"ok": False, "detail": "; ".join(problems)}
    isa, plan = views[0][1], views[0][2]
    picks = ", ".join(f"{enc} {plan[enc]['backend']} {plan[enc]['precision']}" for enc in ("image", "text"))
    return {
        "ok": True,
        "detail": f"{isa.get('class')} ({' '.join(isa.get('features', []))}) from /proc/cpuinfo: "
        f"{picks} (API and clip-rt info agree)",
        "reason": plan["image"].get("reason"),
    }


# -- main -----------------------------------------------------------------------------------------
def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    if os.geteuid() != 0:
        log("needs root: apt-get, binfmt_misc, mount namespaces and chroot")
        return 2
    check_checkout()
    host.prepare_host(log)
    cache = args.cache
    runs = cache / "runs"
    run_dir = runs / time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    run_dir.mkdir(parents=True)
    log(f"cache {cache}, this run in {run_dir}")
    with host.Binfmt(log):
        root = rootfs.ensure_rootfs(
            cache / "rootfs",
            rootfs.Recipe(suite=args.suite, mirrors=rootfs.default_mirrors(args.suite, args.mirror)),
            log,
            rebuild=args.rebuild_rootfs,
        )
        wheel = build_wheel(run_dir)
        args.checkout = checkout_id()  # what the wheel and the test tree were made from
        log(f"wheel {wheel.name}")
        models = []
        for name, role in ((args.model, "main"), *((n, "small") for n in args.small_models)):
            dirs = bundles.ensure_bundles(
                cache, REPO, name, args.seed, log, hold=lambda what: held(args.lock, what, log)
            )
            models.append({"name": name, "role": role, "full_host": dirs["full"], "slim_host": dirs["slim"]})
        compare_dir = inputs.ensure_compare_images(cache)
        folder = inputs.ensure_folder(cache, args.images)
        one_image = sorted(folder.iterdir())[0]
        shutil.copytree(
            Path(__file__).resolve().parent,
            run_dir / "scripts" / "arm64check",
            ignore=shutil.ignore_patterns("__pycache__"),
        )
        src = copy_test_tree(run_dir) if args.tests else None
        (cache / "pip").mkdir(exist_ok=True)

        def plan_for(side: str, to: Any) -> dict[str, Any]:
            return {
                "python": "/usr/bin/python3" if side == "aarch64" else sys.executable,
                "venv": to(run_dir / f"venv-{side}"),
                "out": to(run_dir / f"out-{side}"),
                "wheel": to(wheel),
                "constraints": None if side == "aarch64" else str(run_dir / "constraints-x86.txt"),
                "models": [{"name": m["name"], "full": to(m["full_host"]), "slim": to(m["slim_host"])} for m in models],
                "compare": {"images": to(compare_dir), "texts": inputs.TEXTS},
                "classify": {"labels": LABELS, "one_image": to(one_image), "folder": to(folder), "lowmem": args.lowmem},
                "lock": (
                    None if args.lock is None else to(run_dir / LOCK_IN_RUN) if side == "aarch64" else str(args.lock)
                ),
                "tests": None
                if side != "aarch64" or src is None
                else {
                    "deps": list(GUEST_TEST_DEPS),
                    "files": list(GUEST_TEST_FILES),
                    "marker": GUEST_TEST_MARKER,
                    "dir": to(src),
                    "timeout_s": args.test_timeout,
                },
            }

        # -- aarch64 ---------------------------------------------------------------------------
        def to_guest(p: Path) -> str:
            p = Path(p).absolute()
            mounts = ((run_dir, "/check"), (cache / "bundles", "/bundles"), (cache / "inputs", "/inputs"))
            for host_dir, guest_dir in mounts:
                if p == host_dir or host_dir in p.parents:
                    return guest_dir + str(p)[len(str(host_dir)) :]
            raise ValueError(f"{p} is not under a folder the guest sees")

        (run_dir / "plan-aarch64.json").write_text(json.dumps(plan_for("aarch64", to_guest), indent=1))
        fake = run_dir / "cpuinfo"
        fake.write_text(
            cpuinfo.fake_cpuinfo(
                cpuinfo.CPU_MODELS[args.cpu], cpuinfo.parse_cpu_list(Path("/sys/devices/system/cpu/online").read_text())
            )
        )
        ca = next(
            (
                Path(c)
                for c in (
                    os.environ.get("PIP_CERT"),
                    os.environ.get("SSL_CERT_FILE"),
                    "/etc/ssl/certs/ca-certificates.crt",
                )
                if c and Path(c).is_file()
            ),
            None,
        )
        guest = emulator.Guest(
            root=root,
            qemu_cpu=args.cpu,
            cpuinfo_file=fake,
            ca_bundle=ca,
            binds=[
                emulator.Bind(run_dir, "/check", writable=True),
                emulator.Bind(cache / "bundles", "/bundles"),
                emulator.Bind(cache / "inputs", "/inputs"),
                emulator.Bind(cache / "pip", "/root/.cache/pip", writable=True),
            ],
        )
        if args.lock is not None:  # the shared lock file itself, over a placeholder in /check
            (run_dir / LOCK_IN_RUN).touch()
            guest.binds.append(emulator.Bind(args.lock, "/check/" + LOCK_IN_RUN, writable=True))
        log(f"aarch64: running the steps under qemu ({args.cpu}); this takes a while")
        cmd = guest.argv(
            ["python3", "-m", "arm64check.guest", "run", "/check/plan-aarch64.json"],
            env={"PYTHONPATH": "/check/scripts"},
            cwd="/check",
        )
        run_streaming(
            cmd,
            env=guest.host_env(dict(os.environ)),
            log_file=run_dir / "aarch64.log",
            timeout=args.test_timeout + 4 * 3600,
        )
    arm = _read_results(run_dir / "out-aarch64")
    # -- x86 -------------------------------------------------------------------------------------
    freeze = arm.get("steps", {}).get("install", {}).get("freeze", [])
    (run_dir / "constraints-x86.txt").write_text(constraints_from_freeze(freeze))
    x86_plan = plan_for("x86_64", lambda p: str(Path(p).absolute()))
    (run_dir / "plan-x86_64.json").write_text(json.dumps(x86_plan, indent=1))
    log("x86: the same steps natively")
    env = dict(os.environ, PYTHONPATH=str(run_dir / "scripts"), PIP_CACHE_DIR=str(cache / "pip"))
    run_streaming(
        [sys.executable, "-m", "arm64check.guest", "run", str(run_dir / "plan-x86_64.json")],
        env=env,
        log_file=run_dir / "x86_64.log",
        timeout=4 * 3600,
        cwd=run_dir,
    )
    x86 = _read_results(run_dir / "out-x86_64")
    # -- report ----------------------------------------------------------------------------------
    report = build_report(args, arm, x86, models, run_dir)
    report["summary"] = summary.summary_line(report, strict_budgets=args.strict_budgets)
    text = json.dumps(report, indent=1, default=str) + "\n"
    (run_dir / "report.json").write_text(text)
    if args.json:
        args.json.write_text(text)
    if not args.keep_venvs:
        for side in ("aarch64", "x86_64"):
            shutil.rmtree(run_dir / f"venv-{side}", ignore_errors=True)
    prune_runs(runs)
    log(f"report: {run_dir / 'report.json'}")
    print(report["summary"], flush=True)
    return 0 if report["summary"].startswith("arm64-check PASS") else 1


def _read_results(out: Path) -> dict[str, Any]:
    try:
        return json.loads((out / "results.json").read_text())
    except (OSError, ValueError) as exc:
        log(f"no results in {out}: {exc}")
        return {"steps": {}, "plan": {"venv": ""}}


def entry() -> None:
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        log("interrupted")
        sys.exit(130)
    except (host.HostError, RuntimeError, subprocess.CalledProcessError, TimeoutError) as exc:
        log(f"error: {exc}")
        sys.exit(1)
