"""The measurements, run the same way inside the emulated arm64 system and on the x86 host.

``python3 -m arm64check.guest run PLAN.json`` (stdlib only: it starts with the system Python,
before any venv exists) does, in order, writing RESULTS.json after each step so that a failure
or a timeout still leaves the figures measured so far:

1. ``install``: a fresh venv, ``pip install`` of the clip-rt wheel (runtime only, from PyPI),
   its size on disk before and after, and the versions pip chose.
2. ``probe``: what the runtime sees (machine, HWCAP flags, /proc/cpuinfo, onnxruntime's
   providers, clip-rt's own CPU choice when it has one), in the venv.
3. ``embed``: pixels, token ids and image/text embeddings of fixed inputs for every precision
   of each model's full bundle, saved as .npz for the host to compare.
4. ``memory``: peak RSS (VmHWM) of a trivial Python, of the imports, and of the README's
   classify (one image, then a folder) on each model's slim bundle, each in a fresh process
   with an empty CLIP_RT_HOME.
5. ``tests``: the torch-free test subset with pytest (its deps installed after the size was
   measured).

Under qemu-user the peak RSS read here is the host's figure for the qemu process: the guest's
memory plus qemu's own (its translated-code cache grows with the code that runs). The host
subtracts a baseline; see docs/devices.md.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
import traceback
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any, Callable, Optional

from .lock import held

BATCH_ROWS = 8  # as export/validate.py: inputs encoded alone and in a batch
PIP_QUIET = ["--disable-pip-version-check", "--no-input", "--progress-bar", "off"]

# Each measurement runs in a fresh process: the in-process CLI under rss.PeakSampler, then
# this process's own peak. VmHWM rather than getrusage: Linux carries ru_maxrss over execve from
# the parent (bench/startup.py does the same). Under qemu-user /proc/self/status is the host's
# file for the qemu process; rss.py explains the guest-only figure.
CLASSIFY_CHILD = r"""
import json, sys, time
from arm64check.rss import PeakSampler
sampler = PeakSampler(); sampler.start()
t0 = time.perf_counter()
import clip_rt.engine.runtime
from clip_rt.cli import main
opened = []  # which encoders' sessions the command created, in order
_open = clip_rt.engine.runtime.ModelRuntime._open
def _recording(self, encoder):
    opened.append(encoder)
    return _open(self, encoder)
clip_rt.engine.runtime.ModelRuntime._open = _recording
try:
    main(sys.argv[1:], standalone_mode=False)
    code = 0
except SystemExit as exc:
    code = exc.code or 0
print(json.dumps(dict(sampler.stop(), exit=code, wall_s=time.perf_counter() - t0, opened=opened)))
"""
TRIVIAL_CHILD = r"""
import json
from arm64check.rss import PeakSampler
print(json.dumps(dict(PeakSampler().stop(), exit=0)))
"""
IMPORTS_CHILD = r"""
import json
from arm64check.rss import PeakSampler
import clip_rt.model, onnxruntime, numpy, PIL.Image, tokenizers
print(json.dumps(dict(PeakSampler().stop(), exit=0)))
"""
# The README's classify, one image also with --low-memory (low-memory mode: the same results, a
# lower peak; clip_rt/engine/memory.py), then (with --lowmem: it doubles the longest step under
# qemu) the same folder in low-memory mode, which a board with at most 2 GiB gets by itself
# (one image per batch, one decoding thread, sessions without their arena).
# "one_image_repeat": the --low-memory run again in the same home, as a device that classifies
# with the same labels again: its prompt cache holds the labels' embeddings, so the text tower
# is never loaded. (name, input, extra arguments, whose home it runs in)
LOW_MEMORY = ("--low-memory",)
CLASSIFY_RUNS = (
    ("one_image", "one_image", (), "one_image"),
    ("one_image_lowmem", "one_image", LOW_MEMORY, "one_image_lowmem"),
    ("one_image_repeat", "one_image", LOW_MEMORY, "one_image_lowmem"),
    ("folder", "folder", (), "folder"),
    ("folder_lowmem", "folder", LOW_MEMORY, "folder_lowmem"),
)


# -- helpers shared with the host side --------------------------------------------------------------
def du_bytes(path: Path) -> int:
    """Disk usage of a tree like ``du -s`` (allocated blocks, hard links counted once)."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for dirpath, dirnames, filenames in os.walk(path):
        for name in dirnames + filenames:
            try:
                st = os.lstat(os.path.join(dirpath, name))
            except OSError:
                continue
            if (st.st_dev, st.st_ino) in seen:
                continue
            seen.add((st.st_dev, st.st_ino))
            total += st.st_blocks * 512
    return total


def junit_counts(xml_text: str) -> dict[str, int]:
    """passed/failed/errors/skipped from a pytest --junitxml report."""
    root = ET.fromstring(xml_text)
    suites = [root] if root.tag == "testsuite" else root.findall("testsuite")
    counts = {"tests": 0, "failed": 0, "errors": 0, "skipped": 0}
    for s in suites:
        counts["tests"] += int(s.get("tests", 0))
        counts["failed"] += int(s.get("failures", 0))
        counts["errors"] += int(s.get("errors", 0))
        counts["skipped"] += int(s.get("skipped", 0))
    counts["passed"] = counts["tests"] - counts["failed"] - counts["errors"] - counts["skipped"]
    return counts


def failed_test_ids(xml_text: str, limit: int = 20) -> list[str]:
    root = ET.fromstring(xml_text)
    out = []
    for case in root.iter("testcase"):
        if case.find("failure") is not None or case.find("error") is not None:
            out.append(f"{case.get('classname', '')}::{case.get('name', '')}")
    return out[:limit]


def _say(msg: str) -> None:
    print(f"[{platform.machine()}] {msg}", flush=True)


def _run(
    cmd: list[str], *, timeout: float, env: Optional[dict[str, str]] = None, log: Optional[Path] = None
) -> subprocess.CompletedProcess:
    if log is None:
        return subprocess.run(cmd, env=env, timeout=timeout, capture_output=True, text=True)
    with open(log, "ab") as f:
        f.write(f"$ {' '.join(cmd)}\n".encode())
        f.flush()
        return subprocess.run(cmd, env=env, timeout=timeout, stdout=f, stderr=subprocess.STDOUT)


def _last_json(stdout: str) -> dict[str, Any]:
    lines = [line for line in stdout.strip().splitlines() if line.startswith("{")]
    if not lines:
        raise RuntimeError(f"no JSON result in the child's output: {stdout[-500:]!r}")
    return json.loads(lines[-1])


# -- the steps ---------------------------------------------------------------------------------
class Runner:
    def __init__(self, plan: dict[str, Any]) -> None:
        self.plan = plan
        self.out = Path(plan["out"])
        self.out.mkdir(parents=True, exist_ok=True)
        self.venv = Path(plan["venv"])
        self.py = str(self.venv / "bin" / "python")
        self.log = self.out / "steps.log"
        self.results: dict[str, Any] = {"side": platform.machine(), "plan": plan, "steps": {}}

    def save(self) -> None:
        tmp = self.out / "results.json.tmp"
        tmp.write_text(json.dumps(self.results, indent=1, default=str) + "\n")
        os.replace(tmp, self.out / "results.json")

    def step(self, name: str, fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        # the shared heavy lock (plan "lock", see lock.py) is held for this step only
        with held(self.plan.get("lock"), name, _say) as waited:
            _say(f"{name} ...")
            t0 = time.monotonic()
            try:
                res = fn()
                res.setdefault("ok", True)
            except Exception as exc:  # noqa: BLE001 - recorded, reported by the host, and the run goes on
                res = {"ok": False, "error": f"{type(exc).__name__}: {exc}", "trace": traceback.format_exc()[-3000:]}
            res["seconds"] = round(time.monotonic() - t0, 1)
        res["lock_wait_s"] = round(waited, 1)
        self.results["steps"][name] = res
        self.save()
        _say(f"{name}: {'ok' if res['ok'] else 'FAILED: ' + str(res.get('error'))} ({res['seconds']} s)")
        return res

    def env(self, **extra: str) -> dict[str, str]:
        env = dict(os.environ)
        # clip-rt must see this CPU (the fake /proc/cpuinfo in the guest), never injected flags
        # (the test suite sets its own).
        env.pop("CLIP_RT_CPU_FLAGS", None)
        env.update({"PYTHONDONTWRITEBYTECODE": "1", "HF_HUB_OFFLINE": "1"})
        env.update(extra)
        return env

    # 1 ------------------------------------------------------------------------------------------
    def install(self) -> dict[str, Any]:
        p = self.plan
        subprocess.run([p["python"], "-m", "venv", str(self.venv)], check=True, timeout=1800)
        before = du_bytes(self.venv)
        cmd = [self.py, "-m", "pip", "install", *PIP_QUIET, "--only-binary", ":all:", p["wheel"]]
        if p.get("constraints"):
            cmd += ["-c", p["constraints"]]
        t0 = time.monotonic()
        proc = _run(cmd, timeout=3600, env=self.env(), log=self.log)
        if proc.returncode:
            raise RuntimeError(f"pip install failed (exit {proc.returncode}); see {self.log}")
        seconds = time.monotonic() - t0
        after = du_bytes(self.venv)
        site = next((self.venv / "lib").glob("python3*/site-packages"))
        per_pkg = sorted(((du_bytes(d), d.name) for d in site.iterdir() if d.is_dir()), reverse=True)[:12]
        freeze = _run([self.py, "-m", "pip", "freeze", "--all"], timeout=600, env=self.env()).stdout.splitlines()
        return {
            "venv_bytes_before": before,
            "venv_bytes_after": after,
            "install_bytes": after - before,
            "pip_seconds": round(seconds, 1),
            "freeze": freeze,
            "largest": [{"name": n, "bytes": b} for b, n in per_pkg],
        }

    # 2 ------------------------------------------------------------------------------------------
    def probe(self) -> dict[str, Any]:
        code = (
            "import json, sys; sys.path.insert(0, %r); from arm64check.guest import probe_here; "
            "print(json.dumps(probe_here(sys.argv[1])))"
        ) % str(Path(__file__).resolve().parent.parent)
        bundle = self.plan["models"][0]["slim"]  # the device's bundle: what clip-rt's CPU plan is made for
        env = self.env(CLIP_RT_HOME=str(self.out / "home-probe"))
        proc = _run([self.py, "-c", code, bundle], timeout=1800, env=env)
        if proc.returncode:
            raise RuntimeError(f"probe failed (exit {proc.returncode}): {proc.stderr[-2000:]}")
        res = _last_json(proc.stdout)
        # the same choice as the user sees it: `clip-rt info BUNDLE --json`, its runtime section
        cli = [str(self.venv / "bin" / "clip-rt"), "info", bundle, "--json"]
        proc = _run(cli, timeout=1800, env=env)
        res["info_cli"] = {"command": "clip-rt info BUNDLE --json", "exit": proc.returncode}
        if proc.returncode == 0:
            res["info_cli"]["runtime"] = json.loads(proc.stdout).get("runtime")
        else:
            res["info_cli"]["stderr"] = proc.stderr[-2000:]
        return res

    # 3 ------------------------------------------------------------------------------------------
    def embed(self) -> dict[str, Any]:
        figures = {}
        here = str(Path(__file__).resolve().parent.parent)
        for m in self.plan["models"]:
            npz = self.out / f"embed-{m['name']}.npz"
            code = (
                "import json, sys; sys.path.insert(0, %r); from arm64check.guest import embed_here; "
                "print(json.dumps(embed_here(*sys.argv[1:])))"
            ) % here
            proc = _run(
                [
                    self.py,
                    "-c",
                    code,
                    m["full"],
                    self.plan["compare"]["images"],
                    json.dumps(self.plan["compare"]["texts"]),
                    str(npz),
                ],
                timeout=7200,
                env=self.env(CLIP_RT_HOME=str(self.out / "home-embed")),
            )
            if proc.returncode:
                raise RuntimeError(f"{m['name']}: embedding failed (exit {proc.returncode}): {proc.stderr[-2000:]}")
            figures[m["name"]] = dict(_last_json(proc.stdout), npz=str(npz))
        return {"models": figures}

    # 4 ------------------------------------------------------------------------------------------
    def child(self, script: str, args: list[str], home: Optional[Path] = None) -> dict[str, Any]:
        env = self.env(CLIP_RT_HOME=str(home or self.out / "home-empty"))
        t0 = time.monotonic()
        proc = _run([self.py, "-c", script, *args], timeout=7200, env=env)
        res = _last_json(proc.stdout) if proc.returncode == 0 else {"exit": proc.returncode}
        res["process_wall_s"] = round(time.monotonic() - t0, 1)
        if proc.returncode or res.get("exit"):
            res["stderr"] = proc.stderr[-2000:]
        return res

    def memory(self) -> dict[str, Any]:
        c = self.plan["classify"]
        res: dict[str, Any] = {
            # the same trivial program, twice: qemu's translation cache makes the first run no
            # different from later ones, but a second sample shows the noise
            "trivial_python": [self.child(TRIVIAL_CHILD, []) for _ in range(2)],
            "imports": self.child(IMPORTS_CHILD, []),
            "models": {},
        }
        failures = []
        for m in self.plan["models"]:
            runs = {}
            for what, source_key, extra, home_of in CLASSIFY_RUNS:
                if what == "folder_lowmem" and not c.get("lowmem"):
                    continue
                source = c[source_key]
                home = self.out / f"home-{m['name']}-{home_of}"
                out = self.out / f"classify-{m['name']}-{what}.jsonl"
                for stale in (out, Path(str(out) + ".clip-rt.json")):
                    if stale.exists():
                        stale.unlink()
                args = ["classify", source, "--labels", c["labels"], "--model", m["slim"], "-o", str(out), *extra]
                if c.get("precision"):
                    args += ["--precision", c["precision"]]
                if c.get("threads"):
                    args += ["--threads", str(c["threads"])]
                run = self.child(CLASSIFY_CHILD, args, home=home)
                run["args"] = args
                run["records"] = str(out)
                if run.get("exit"):
                    failures.append(f"{m['name']} {what}: exit {run.get('exit')}")
                runs[what] = run
                res["models"][m["name"]] = runs
                # each run's figures are kept as soon as it ends: a step cut short (the host's
                # deadline, a killed qemu) still leaves what it measured in results.json
                self.results["steps"]["memory"] = {**res, "ok": False, "error": "step still running or cut short"}
                self.save()
        if failures:
            res["ok"] = False
            res["error"] = "; ".join(failures)
        return res

    # 5 ------------------------------------------------------------------------------------------
    def tests(self) -> dict[str, Any]:
        t = self.plan["tests"]
        proc = _run(
            [self.py, "-m", "pip", "install", *PIP_QUIET, "--only-binary", ":all:", *t["deps"]],
            timeout=3600,
            env=self.env(),
            log=self.log,
        )
        if proc.returncode:
            raise RuntimeError(f"pip install of the test deps failed (exit {proc.returncode}); see {self.log}")
        junit = self.out / "junit.xml"
        cmd = [
            self.py,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-m",
            t["marker"],
            f"--junitxml={junit}",
            *t["files"],
        ]
        t0 = time.monotonic()
        with open(self.out / "pytest.log", "wb") as f:
            proc = subprocess.run(
                cmd, cwd=t["dir"], env=self.env(), stdout=f, stderr=subprocess.STDOUT, timeout=t.get("timeout_s", 7200)
            )
        res: dict[str, Any] = {
            "exit": proc.returncode,
            "pytest_seconds": round(time.monotonic() - t0, 1),
            "log": str(self.out / "pytest.log"),
        }
        if junit.exists():
            xml_text = junit.read_text()
            res.update(junit_counts(xml_text))
            res["failed_ids"] = failed_test_ids(xml_text)
        res["ok"] = proc.returncode == 0
        if not res["ok"]:
            res["error"] = f"pytest exit {proc.returncode}"
        return res

    def run(self) -> dict[str, Any]:
        install = self.step("install", self.install)
        if install["ok"]:
            self.step("probe", self.probe)
            self.step("embed", self.embed)
            self.step("memory", self.memory)
            if self.plan.get("tests"):
                self.step("tests", self.tests)
        self.results["finished"] = True
        self.save()
        return self.results


# -- run inside the venv (numpy, clip_rt importable) -----------------------------------------------
def probe_here(bundle: Optional[str] = None) -> dict[str, Any]:
    import onnxruntime

    import clip_rt
    from arm64check import cpuinfo

    info: dict[str, Any] = {
        "machine": platform.machine(),
        "python": platform.python_version(),
        "clip_rt_file": clip_rt.__file__,
        "onnxruntime": onnxruntime.__version__,
        "providers": onnxruntime.get_available_providers(),
        "cpu_count": os.cpu_count(),
        "qemu_cpu": os.environ.get("QEMU_CPU"),
    }
    try:
        text = Path("/proc/cpuinfo").read_text()
        info["cpuinfo_features"] = cpuinfo.parse_features(text)
    except OSError as exc:
        info["cpuinfo_features"] = f"unreadable: {exc}"
    if platform.machine() == "aarch64":
        info["hwcap_features"] = cpuinfo.hwcap_names(*cpuinfo.read_hwcaps())
    info["cpu_choice"] = cpu_choice_here(bundle)
    return info


def cpu_choice_here(bundle: Optional[str] = None) -> dict[str, Any]:
    """clip-rt's own CPU detection and per-CPU plan (``clip_rt.engine.cpu`` and
    ``clip_rt.engine.backends.choose``), when this clip-rt has them, for *bundle*."""
    import importlib.util

    if importlib.util.find_spec("clip_rt.engine.cpu") is None:
        return {"available": False}
    from clip_rt.engine import cpu as cpu_mod

    isa = cpu_mod.detect_cpu()
    out: dict[str, Any] = {"available": True, "isa": isa.to_dict()}
    if bundle is not None and importlib.util.find_spec("clip_rt.engine.backends.choose") is not None:
        from clip_rt.bundle.manifest import read_manifest
        from clip_rt.engine.backends.choose import plan_runtime

        plan = plan_runtime(read_manifest(Path(bundle)), isa)
        out["plan"] = {enc: plan.encoder(enc).to_dict() for enc in ("image", "text")}
    return out


def embed_here(bundle: str, images_dir: str, texts_json: str, npz_path: str) -> dict[str, Any]:
    import numpy as np

    import clip_rt
    from clip_rt.bundle.manifest import read_manifest
    from clip_rt.inputs.preprocess import Preprocessor
    from clip_rt.inputs.tokenizer import ClipTokenizer

    texts = json.loads(texts_json)
    paths = sorted(str(p) for p in Path(images_dir).iterdir() if p.is_file())
    manifest = read_manifest(Path(bundle))
    arrays: dict[str, Any] = {
        "pixels": Preprocessor(manifest.image).batch(paths),
        "token_ids": ClipTokenizer.from_file(Path(bundle) / manifest.text.tokenizer_file, manifest.text)
        .encode_batch(texts)
        .ids,
    }
    for precision in manifest.precisions:
        model = clip_rt.load(bundle, precision=precision, cache=False, providers=["cpu"])
        arrays[f"image_{precision}"] = model.encode_image(paths)
        arrays[f"text_{precision}"] = model.encode_text(texts)
        gate = manifest.parity.get(precision, {})
        if any("batch_max_abs_diff" in fig.tolerance for fig in gate.values()):
            # batch independence, as the export's gate checks it: the first rows one at a time
            rows = min(BATCH_ROWS, len(paths))
            arrays[f"image_{precision}_alone"] = np.concatenate([model.encode_image([p]) for p in paths[:rows]])
            arrays[f"text_{precision}_alone"] = np.concatenate([model.encode_text([t]) for t in texts])
        model.close()
    np.savez(npz_path, names=np.array([Path(p).name for p in paths]), **arrays)
    return {"images": len(paths), "texts": len(texts), "precisions": manifest.precisions}


USAGE = """usage: python -m arm64check.guest run PLAN.json
       python -m arm64check.guest memory PLAN.json          the memory step alone, its result as JSON
       python -m arm64check.guest classify PLAN.json HOME ARG...
                                                            one classify child in HOME, its figures as JSON"""


def main(argv: Optional[list[str]] = None) -> int:
    """``run``: every step (the check). ``memory`` and ``classify``: one step or one child, for
    bench.memory_runs and bench.memory_repeat, which measure natively what the check measures."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) < 2 or (args[0], len(args) == 2) not in {("run", True), ("memory", True), ("classify", False)}:
        print(USAGE, file=sys.stderr)
        return 2
    runner = Runner(json.loads(Path(args[1]).read_text()))
    if args[0] == "memory":
        print(json.dumps(runner.memory()))
        return 0
    if args[0] == "classify":
        print(json.dumps(runner.child(CLASSIFY_CHILD, args[3:], home=Path(args[2]))))
        return 0
    results = runner.run()
    return 0 if all(s.get("ok") for s in results["steps"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
