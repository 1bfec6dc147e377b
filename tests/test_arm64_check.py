"""scripts/arm64-check's pieces, on x86 and without qemu: argument parsing, the fake cpuinfo and
HWCAP decoding, the guest's mount script, the comparison logic, budgets and the summary line."""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent

from arm64check import cli, compare, cpuinfo, emulator, guest, host, rootfs, rss, summary


# -- arguments and cache location -----------------------------------------------------------------
def test_defaults_and_cache_location(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CLIP_RT_ARM64_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    args = cli.parse_args([])
    assert args.cache == tmp_path / "xdg" / "clip-rt-arm64"
    assert (args.cpu, args.model, args.small_models, args.images, args.tests) == (
        "neoverse-n1",
        "ViT-B-32",
        ["MobileCLIP2-S0", "ViT-S-32-alt"],
        200,
        True,
    )
    monkeypatch.setenv("CLIP_RT_ARM64_CACHE", str(tmp_path / "explicit"))
    assert cli.parse_args([]).cache == tmp_path / "explicit"
    assert cli.parse_args(["--cache", str(tmp_path / "c")]).cache == tmp_path / "c"


def test_default_cache_is_not_a_temp_folder() -> None:
    assert cli.default_cache_dir({"HOME": "/home/u"}) == Path.home() / ".cache" / "clip-rt-arm64"
    assert cli.default_cache_dir({"XDG_CACHE_HOME": "/x"}) == Path("/x/clip-rt-arm64")
    assert cli.default_cache_dir({"CLIP_RT_ARM64_CACHE": "/y", "XDG_CACHE_HOME": "/x"}) == Path("/y")


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["--cpu", "max"], "invalid choice"),  # qemu's default CPU corrupts int8 results: never offered
        (["--images", "0"], "positive integer"),
        (["--images", "many"], "positive integer"),
        (["--small-model", "ViT-B-32"], "must differ"),
        (["--small-model", "RN50", "--small-model", "RN50"], "given twice: RN50"),
        (["--small-model", "none", "--small-model", "RN50"], "cannot be combined"),
    ],
)
def test_bad_arguments_are_usage_errors(argv: list[str], needle: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.parse_args(argv)
    assert exc.value.code == 2
    assert needle in capsys.readouterr().err


def test_small_models_none_or_chosen() -> None:
    assert cli.parse_args(["--small-model", "none", "--no-tests"]).small_models == []
    assert cli.parse_args(["--small-model", "RN50", "--small-model", "MobileCLIP-S1"]).small_models == [
        "RN50",
        "MobileCLIP-S1",
    ]


def test_script_help_runs_without_root() -> None:
    import subprocess

    out = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "arm64-check"), "--help"], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0 and "--strict-budgets" in out.stdout


# -- fake cpuinfo and HWCAP -------------------------------------------------------------------------
@pytest.mark.parametrize("text, cpus", [("0-1", [0, 1]), ("0", [0]), ("0-3,6,8-9\n", [0, 1, 2, 3, 6, 8, 9])])
def test_parse_cpu_list(text: str, cpus: list[int]) -> None:
    assert cpuinfo.parse_cpu_list(text) == cpus


@pytest.mark.parametrize("text", ["", "a-b", "3-1", ","])
def test_parse_cpu_list_rejects_garbage(text: str) -> None:
    with pytest.raises(ValueError, match="not a CPU list"):
        cpuinfo.parse_cpu_list(text)


def test_fake_cpuinfo_has_one_block_per_cpu_in_linux_format() -> None:
    model = cpuinfo.CPU_MODELS["neoverse-n1"]
    text = cpuinfo.fake_cpuinfo(model, [0, 1, 2])
    blocks = [b for b in text.split("\n\n") if b.strip()]
    assert len(blocks) == 3
    assert [b.splitlines()[0] for b in blocks] == ["processor\t: 0", "processor\t: 1", "processor\t: 2"]
    assert "CPU implementer\t: 0x41" in blocks[0] and "CPU part\t: 0xd0c" in blocks[0]
    assert "CPU architecture: 8" in blocks[0]
    assert cpuinfo.parse_features(text) == list(model.features)
    assert "asimddp" in model.features  # the int8 dot product: onnxruntime's fast ARM int8 path
    assert "asimddp" not in cpuinfo.CPU_MODELS["cortex-a72"].features  # Raspberry Pi 4
    with pytest.raises(ValueError):
        cpuinfo.fake_cpuinfo(model, [])


def test_parse_features_of_a_real_graviton_cpuinfo() -> None:
    real = (
        "processor\t: 0\nBogoMIPS\t: 243.75\nFeatures\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics "
        "fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp ssbs\nCPU implementer\t: 0x41\n"
    )
    assert cpuinfo.parse_features(real)[:3] == ["fp", "asimd", "evtstrm"]
    assert cpuinfo.parse_features("flags\t: fpu vme\n") == []


def test_hwcap_decoding() -> None:
    # what qemu 7.2 gave for neoverse-n1 (AT_HWCAP 1155067, AT_HWCAP2 0)
    assert cpuinfo.hwcap_names(1155067) == list(cpuinfo.CPU_MODELS["neoverse-n1"].features)
    assert cpuinfo.hwcap_names(2299) == list(cpuinfo.CPU_MODELS["cortex-a72"].features)
    names = cpuinfo.hwcap_names(0, (1 << 13) | (1 << 14) | (1 << 23))
    assert names == ["i8mm", "bf16", "sme"]
    assert cpuinfo.hwcap_names(0, 1 << 60) == ["hwcap2:60"]  # unknown bits are kept, named


def test_feature_mismatch() -> None:
    model = cpuinfo.CPU_MODELS["neoverse-n1"]
    assert cpuinfo.feature_mismatch(model, list(model.features)) == ""
    assert cpuinfo.feature_mismatch(model, list(model.features) + ["evtstrm"]) == ""  # qemu never sets it
    msg = cpuinfo.feature_mismatch(model, [f for f in model.features if f != "asimddp"] + ["sme"])
    assert "qemu advertises sme" in msg and "lists asimddp" in msg


# -- host set-up and the guest's mounts ----------------------------------------------------------------
def test_missing_packages() -> None:
    assert host.missing_packages(lambda cmd: "/usr/bin/" + cmd) == []
    assert host.missing_packages(lambda cmd: None if cmd != "unshare" else "/usr/bin/unshare") == [
        "arch-test",
        "binfmt-support",
        "mmdebstrap",
        "qemu-user-static",
    ]


def test_binfmt_state_parsing() -> None:
    mounts = "proc /proc proc rw 0 0\nbinfmt_misc /proc/sys/fs/binfmt_misc binfmt_misc rw 0 0\n"
    assert host.binfmt_mounted(mounts) and not host.binfmt_mounted("proc /proc proc rw 0 0\n")
    entry = "enabled\ninterpreter /usr/libexec/qemu-binfmt/aarch64-binfmt-P\nflags: PF\noffset 0\n"
    assert host.binfmt_entry_flags(entry) == "PF"
    assert host.binfmt_entry_flags("disabled\nflags: PF\n") is None


def test_guest_command_mounts_privately_and_never_runs_without_qemu_cpu(tmp_path: Path) -> None:
    g = emulator.Guest(
        root=tmp_path / "root dir",
        qemu_cpu="neoverse-n1",
        cpuinfo_file=tmp_path / "cpuinfo",
        ca_bundle=tmp_path / "ca.crt",
        binds=[emulator.Bind(tmp_path / "run", "/check", writable=True), emulator.Bind(tmp_path / "b", "/bundles")],
    )
    argv = g.argv(["python3", "-c", "print('hi there')"], env={"PYTHONPATH": "/check/scripts"}, cwd="/check")
    assert argv[:6] == ["unshare", "--mount", "--propagation", "private", "--fork", "--"]
    script = argv[-1]
    assert 'mount -o remount,bind,ro "$R"' in script  # the cached root file system stays pristine
    assert f'mount --bind -o ro {tmp_path / "cpuinfo"} "$R/proc/cpuinfo"' in script
    assert f'mount --bind {tmp_path / "run"} "$R"/check' in script
    assert f'mount --bind -o ro {tmp_path / "b"} "$R"/bundles' in script
    assert "QEMU_CPU=neoverse-n1" in script and "PIP_CERT=/etc/ssl/certs/host-ca.crt" in script
    assert shlex.quote("print('hi there')") in script
    assert g.host_env({"A": "1"}) == {"A": "1", "QEMU_CPU": "neoverse-n1"}
    with pytest.raises(ValueError, match="absolute"):
        emulator.Guest(
            root=tmp_path, qemu_cpu="x", cpuinfo_file=tmp_path, binds=[emulator.Bind(tmp_path, "check")]
        ).setup_script()


def test_guest_command_runs_and_quotes_arguments(tmp_path: Path) -> None:
    """The part after the mounts (env -i, cd, "$@") run for real, with sh standing in for chroot."""
    import subprocess

    g = emulator.Guest(root=tmp_path, qemu_cpu="neoverse-n1", cpuinfo_file=tmp_path / "c")
    script = g.argv(["sh", "-c", 'printf "%s|" "$QEMU_CPU" "$PWD" "$0" "$1"', "a b", "$HOME"], cwd=str(tmp_path))[-1]
    tail = script.split('\nexec chroot "$R" ', 1)[1]
    out = subprocess.run(["sh", "-c", tail], capture_output=True, text=True, timeout=30)
    assert out.stdout == f"neoverse-n1|{tmp_path}|a b|$HOME|", out.stderr


def test_rootfs_recipe_stamp(tmp_path: Path) -> None:
    recipe = rootfs.Recipe()
    assert recipe.mirrors[0] == "deb http://deb.debian.org/debian bookworm main"
    assert any("debian-security bookworm-security" in m for m in recipe.mirrors)
    assert not rootfs.is_current(tmp_path, recipe)
    (tmp_path / rootfs.STAMP).write_text(json.dumps(dict(recipe.stamp(), built="2026-01-01")))
    assert rootfs.is_current(tmp_path, recipe)
    assert not rootfs.is_current(tmp_path, rootfs.Recipe(packages=("python3-venv",)))


# -- guest-side helpers ----------------------------------------------------------------------------
def test_du_bytes_counts_hard_links_once(tmp_path: Path) -> None:
    (tmp_path / "a").write_bytes(b"x" * 100_000)
    (tmp_path / "b").hardlink_to(tmp_path / "a")
    assert 100_000 <= guest.du_bytes(tmp_path) < 200_000


def test_junit_counts() -> None:
    xml = (
        '<testsuites><testsuite name="pytest" errors="1" failures="2" skipped="3" tests="10">'
        '<testcase classname="tests.test_a" name="test_x"><failure message="boom"/></testcase>'
        '<testcase classname="tests.test_a" name="test_y"/></testsuite></testsuites>'
    )
    assert guest.junit_counts(xml) == {"tests": 10, "failed": 2, "errors": 1, "skipped": 3, "passed": 4}
    assert guest.failed_test_ids(xml) == ["tests.test_a::test_x"]


def test_constraints_pin_what_aarch64_chose() -> None:
    freeze = [
        "clip-rt @ file:///check/wheel/clip_rt-0.1.0-py3-none-any.whl",
        "numpy==2.4.6",
        "onnxruntime==1.32.0",
        "pip==23.0.1",
        "setuptools==66.1.1",
        "typing_extensions==4.16.0",
    ]
    assert cli.constraints_from_freeze(freeze) == "numpy==2.4.6\nonnxruntime==1.32.0\ntyping_extensions==4.16.0\n"


# -- guest-only RSS ------------------------------------------------------------------------------
MAPS = """00400000-00916000 r-xp 00000000 fe:00 5485922   /usr/bin/python3.11
00916000-0092f000 ---p 00000000 00:00 0
0092f000-00930000 r--p 0051f000 fe:00 5485922   /usr/bin/python3.11
5500000000-5500100000 rw-p 00000000 00:00 0
"""
SMAPS = """00400000-0092f000 r-xp 00000000 fe:00 5485922   /usr/bin/python3.11
Size:               5308 kB
Rss:                 100 kB
0092f000-00930000 r--p 0051f000 fe:00 5485922   /usr/bin/python3.11
Rss:                   4 kB
5500000000-5500100000 rw-p 00000000 00:00 0
Rss:                1024 kB
7f0000000000-7f0040000000 rwxp 00000000 00:00 0
Rss:               30000 kB
7ffd00000000-7ffd00021000 rw-p 00000000 00:00 0                      [stack]
Rss:                  16 kB
"""


def test_guest_rss_counts_host_mappings_inside_guest_ones() -> None:
    ranges = rss.merged_ranges(MAPS)
    assert ranges == [(0x400000, 0x930000), (0x5500000000, 0x5500100000)]  # touching ranges merged
    total, guest_kb = rss.rss_split_kb(SMAPS, ranges)
    assert total == 100 + 4 + 1024 + 30000 + 16
    assert guest_kb == 100 + 4 + 1024  # qemu's code cache and its own stack are not the guest's
    assert rss.rss_split_kb(SMAPS, None) == (total, total)


def test_peak_sampler_natively_equals_the_whole_process() -> None:
    sampler = rss.PeakSampler(interval=0.01)
    sampler.start()
    block = bytearray(64 << 20)  # touched: 64 MiB more RSS
    block[::4096] = b"x" * len(block[::4096])
    res = sampler.stop()
    assert res["samples"] >= 1
    assert res["sampled_guest_peak_mb"] == res["sampled_total_peak_mb"] >= 64
    assert res["peak_rss_mb"] >= res["sampled_total_peak_mb"] - 1
    del block


def test_peak_sampler_splits_only_under_qemu_user(monkeypatch: pytest.MonkeyPatch) -> None:
    """Natively the guest is the whole process: splitting there undercounted when a short-lived
    mapping fell between the maps reads (CI saw estimate 171 vs VmHWM 177 MiB)."""
    monkeypatch.delenv("QEMU_CPU", raising=False)
    assert not rss.under_qemu_user() and not rss.PeakSampler().split
    monkeypatch.setenv("QEMU_CPU", "cortex-a53")
    assert rss.under_qemu_user() and rss.PeakSampler().split
    assert not rss.PeakSampler(split=False).split
    res = rss.PeakSampler(split=True).stop()  # natively the split finds every mapping in maps
    assert 0 < res["sampled_guest_peak_mb"] <= res["sampled_total_peak_mb"]


def test_peak_sampler_never_started_samples_once() -> None:
    """The trivial and imports children call stop() on a sampler they never started."""
    res = rss.PeakSampler().stop()
    assert res["samples"] == 1 and res["sampled_total_peak_mb"] > 0 and res["peak_rss_mb"] > 0


def _python_wrapper(venv: Path) -> None:
    """A stand-in venv: bin/python runs this interpreter (clip_rt importable), bin/clip-rt its CLI."""
    (venv / "bin").mkdir(parents=True)
    for name, cmd in (
        ("python", f'exec {shlex.quote(sys.executable)} "$@"'),
        ("clip-rt", f'exec {shlex.quote(sys.executable)} -m clip_rt "$@"'),
    ):
        f = venv / "bin" / name
        f.write_text(f"#!/bin/sh\n{cmd}\n")
        f.chmod(0o755)


@pytest.mark.slow
def test_memory_step_and_report_natively(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """guest.py's memory step as the x86 side runs it (fresh processes, the in-process CLI under
    the sampler), then the host's memory_report and budgets on its results."""
    from PIL import Image

    from clip_rt_fixtures.fake_bundle import build_fake_bundle

    bundle = build_fake_bundle(tmp_path / "bundle")
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(3):
        Image.new("RGB", (40 + i, 30), (60 * i, 90, 30)).save(folder / f"{i}.png")
    _python_wrapper(tmp_path / "venv")
    monkeypatch.setenv("PYTHONPATH", str(REPO / "scripts"))
    plan = {
        "venv": str(tmp_path / "venv"),
        "out": str(tmp_path / "out"),
        "models": [{"name": "fake", "full": str(bundle), "slim": str(bundle)}],
        "classify": {"labels": "cat,dog", "one_image": str(folder / "0.png"), "folder": str(folder), "lowmem": True},
    }
    res = guest.Runner(plan).memory()
    assert res.get("ok", True), res.get("error")
    for child in (*res["trivial_python"], res["imports"]):
        assert child["exit"] == 0 and child["peak_rss_mb"] > 0 and child["samples"] == 1, child
    runs = res["models"]["fake"]
    assert set(runs) == {what for what, _, _, _ in guest.CLASSIFY_RUNS}
    assert runs["folder_lowmem"]["args"][-1] == "--low-memory"  # low-memory mode: same results, no --draft
    assert runs["one_image_lowmem"]["args"][-1] == "--low-memory"
    assert runs["one_image_lowmem"]["args"][1] == runs["one_image"]["args"][1]  # the same image
    same = [a.replace("one_image_repeat", "one_image_lowmem") for a in runs["one_image_repeat"]["args"]]
    assert same == runs["one_image_lowmem"]["args"]  # the same command (its own output file) ...
    assert runs["one_image_repeat"]["opened"] == ["image"]  # ... again: the labels come from the prompt cache
    assert runs["one_image_lowmem"]["opened"] == ["text", "image"]
    assert "--precision" not in runs["folder"]["args"]  # the device's command: the bundle's own precision
    assert all(r["exit"] == 0 and r["samples"] >= 1 for r in runs.values())
    assert imports_heavier(res)

    mem, agreement = cli.memory_report(res, res, [{"name": "fake", "role": "small"}], tmp_path, images=3)
    assert mem["qemu_overhead_mib"] == 0.0  # the same side twice
    entry = mem["models"]["fake"]
    for what in ("one_image", "one_image_lowmem", "one_image_repeat", "folder", "folder_lowmem"):
        # natively the guest is the whole process: the estimate is VmHWM
        assert entry[what]["estimate_mib"] == entry[what]["raw_mib"] == entry[what]["x86_mib"]
        assert agreement["fake"][what] == {
            "images": 1 if what.startswith("one_image") else 3,
            "errors": 0,
            "top1_agreement": 1.0,
            "max_score_diff": 0.0,
            "passed": True,
        }
    assert entry["folder"]["images"] == 3 and entry["folder"]["command"].startswith("clip-rt classify ")
    verdicts = {v.name: v for v in summary.budgets({"memory": mem})}
    assert set(verdicts) == {"rss fake", "rss fake 1 img --low-memory", "rss fake 1 img repeat", "rss fake lowmem"}
    assert verdicts["rss fake"].budget == verdicts["rss fake 1 img --low-memory"].budget == 150


def test_lowmem_run_is_opt_in(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ran: list[list[str]] = []
    monkeypatch.setattr(
        guest.Runner, "child", lambda self, script, args, home=None: ran.append(args) or {"exit": 0, "peak_rss_mb": 1.0}
    )
    plan = {
        "venv": str(tmp_path / "venv"),
        "out": str(tmp_path / "out"),
        "models": [{"name": "m", "full": "F", "slim": "S"}],
        "classify": {"labels": "a,b", "one_image": "one.jpg", "folder": "dir"},
    }
    assert set(guest.Runner(plan).memory()["models"]["m"]) == {
        "one_image",
        "one_image_lowmem",
        "one_image_repeat",
        "folder",
    }
    assert not any("--draft" in a for a in ran)  # --low-memory alone changes no result: always measured
    plan["classify"]["lowmem"] = True
    assert "folder_lowmem" in guest.Runner(plan).memory()["models"]["m"]


def test_memory_step_keeps_each_run_as_it_ends(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # a step cut short (the host's deadline, a killed qemu) leaves the runs it finished in results.json
    calls: list[int] = []

    def child(self, script, args, home=None):  # type: ignore[no-untyped-def]
        calls.append(1)
        if len(calls) == 6:  # the two trivial runs, the imports, then the third classify run dies
            raise KeyboardInterrupt
        return {"exit": 0, "peak_rss_mb": float(len(calls))}

    monkeypatch.setattr(guest.Runner, "child", child)
    plan = {
        "venv": str(tmp_path / "venv"),
        "out": str(tmp_path / "out"),
        "models": [{"name": "m", "full": "F", "slim": "S"}],
        "classify": {"labels": "a,b", "one_image": "one.jpg", "folder": "dir"},
    }
    with pytest.raises(KeyboardInterrupt):
        guest.Runner(plan).memory()
    saved = json.loads((tmp_path / "out" / "results.json").read_text())["steps"]["memory"]
    assert saved["ok"] is False and "cut short" in saved["error"]
    assert list(saved["models"]["m"]) == ["one_image", "one_image_lowmem"]
    assert saved["models"]["m"]["one_image_lowmem"]["peak_rss_mb"] == 5.0


# -- the shared heavy lock -----------------------------------------------------------------------------
def _is_locked(path: Path) -> bool:
    import fcntl

    with open(path, "a+b") as f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(f.fileno(), fcntl.LOCK_UN)
        return False


def test_guest_steps_hold_the_lock_one_at_a_time(tmp_path: Path) -> None:
    lock_file = tmp_path / "heavy"
    runner = guest.Runner({"venv": str(tmp_path / "v"), "out": str(tmp_path / "out"), "lock": str(lock_file)})
    seen = []
    res = runner.step("work", lambda: {"held": seen.append(_is_locked(lock_file)) or True})
    assert seen == [True] and res["ok"] and res["lock_wait_s"] >= 0
    assert not _is_locked(lock_file)  # released between steps
    res = runner.step("broken", lambda: 1 / 0)
    assert not res["ok"] and "ZeroDivisionError" in res["error"] and not _is_locked(lock_file)
    # without --lock: no file, no locking
    free = guest.Runner({"venv": str(tmp_path / "v"), "out": str(tmp_path / "out2")})
    assert free.step("work", dict)["lock_wait_s"] == 0.0


def test_lock_waits_for_its_turn(tmp_path: Path) -> None:
    import fcntl
    import threading

    from arm64check.lock import held

    lock_file = tmp_path / "heavy"
    other = open(lock_file, "a+b")
    fcntl.flock(other.fileno(), fcntl.LOCK_EX)  # someone else's heavy command
    threading.Timer(0.3, lambda: (fcntl.flock(other.fileno(), fcntl.LOCK_UN), other.close())).start()
    said: list[str] = []
    with held(lock_file, "export x", said.append) as waited:
        assert _is_locked(lock_file)
    assert waited >= 0.2 and said == [f"export x: waiting for the lock {lock_file}"]
    assert not _is_locked(lock_file)


def test_exports_hold_the_lock(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from arm64check import bundles
    from arm64check.lock import held

    lock_file = tmp_path / "heavy"
    # a stand-in exporter: writes the manifest where -o points, and records whether the lock was held
    fake = (
        "import sys, pathlib, fcntl\n"
        "out = pathlib.Path(sys.argv[sys.argv.index('-o') + 1]); out.mkdir(parents=True)\n"
        "f = open(sys.argv[1], 'a+b')\n"
        "try:\n    fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB); state = 'free'\n"
        "except BlockingIOError:\n    state = 'held'\n"
        "(out / 'manifest.json').write_text('{\"files\": {}}'); (out / 'lock').write_text(state)\n"
    )
    monkeypatch.setattr(bundles, "CLI", [sys.executable, "-c", fake, str(lock_file)])
    whats: list[str] = []

    def hold(what: str):  # noqa: ANN202
        whats.append(what)
        return held(lock_file, what, print)

    dirs = bundles.ensure_bundles(tmp_path / "cache", REPO, "M", 0, lambda m: None, hold=hold)
    assert whats == ["export M full", "export M slim"]
    assert [(dirs[k] / "lock").read_text() for k in ("full", "slim")] == ["held", "held"]
    bundles.ensure_bundles(tmp_path / "cache", REPO, "M", 0, lambda m: None, hold=hold)
    assert len(whats) == 2  # cached: no export, no lock


def test_lock_argument(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.parse_args([]).lock is None
    assert cli.parse_args(["--lock", str(tmp_path / "heavy")]).lock == tmp_path / "heavy"
    with pytest.raises(SystemExit) as exc:
        cli.parse_args(["--lock", str(tmp_path / "nowhere" / "heavy")])
    assert exc.value.code == 2 and "does not exist" in capsys.readouterr().err


def imports_heavier(res: dict) -> bool:
    """Importing the runtime takes more memory than a bare interpreter (the figures are real)."""
    return res["imports"]["peak_rss_mb"] > min(r["peak_rss_mb"] for r in res["trivial_python"])


# -- comparison ------------------------------------------------------------------------------------
def _unit(rng: np.random.Generator, n: int, d: int = 16) -> np.ndarray:
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _side(rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {
        "names": np.array(["a.jpg", "b.png"]),
        "pixels": rng.standard_normal((2, 3, 4, 4)).astype(np.float32),
        "token_ids": np.arange(14).reshape(2, 7),
        "image_fp32": _unit(rng, 2),
        "text_fp32": _unit(rng, 3),
    }


PARITY = {
    enc: {"max_abs_diff": 0.003, "min_cosine": 0.9998, "samples": 8, "tolerance": {"min_cosine": 0.99}, "passed": True}
    for enc in ("image", "text")
}


def test_identical_sides_pass() -> None:
    rng = np.random.default_rng(0)
    x86 = _side(rng)
    x86["image_int8"], x86["text_int8"] = x86["image_fp32"], x86["text_fp32"]
    res = compare.compare_embeddings(x86, dict(x86), {"int8": PARITY})
    assert res["passed"]
    assert res["checks"]["image_int8"]["vs_x86_same_precision"]["max_abs_diff"] == 0.0
    assert res["checks"]["image_int8"]["export_measured"]["min_cosine"] == 0.9998


def test_fp32_bound_and_int8_gate() -> None:
    rng = np.random.default_rng(1)
    x86 = _side(rng)
    x86["image_int8"], x86["text_int8"] = x86["image_fp32"], x86["text_fp32"]
    arm = {k: v.copy() for k, v in x86.items()}
    arm["image_fp32"] = arm["image_fp32"] + 2e-5  # over the 1e-5 bound
    noisy = arm["text_fp32"] + 0.02 * rng.standard_normal(arm["text_fp32"].shape).astype(np.float32)
    arm["text_int8"] = noisy / np.linalg.norm(noisy, axis=1, keepdims=True)  # cos ~0.997: inside 0.99
    arm["image_int8"] = np.zeros_like(arm["image_int8"])  # what qemu's `max` CPU produced: never passes
    res = compare.compare_embeddings(x86, arm, {"int8": PARITY})
    c = res["checks"]
    assert not c["image_fp32"]["passed"] and c["text_fp32"]["passed"]
    assert c["text_int8"]["passed"] and 0.99 < c["text_int8"]["vs_fp32"]["min_cosine"] < 0.9999
    assert not c["image_int8"]["passed"] and c["image_int8"]["vs_fp32"]["min_cosine"] == 0.0
    assert not res["passed"]


def test_pixels_tokens_and_missing_pieces() -> None:
    rng = np.random.default_rng(2)
    x86 = _side(rng)
    arm = {k: v.copy() for k, v in x86.items()}
    arm["pixels"][0, 0, 0, 0] += 1e-3
    arm["token_ids"][1, 3] += 1
    res = compare.compare_embeddings(x86, arm, {})
    assert not res["checks"]["pixels"]["passed"] and not res["checks"]["token_ids"]["passed"]
    x86["image_int8"], x86["text_int8"] = x86["image_fp32"], x86["text_fp32"]
    res = compare.compare_embeddings(x86, {k: v for k, v in x86.items() if k != "text_int8"}, {})
    assert res["checks"]["text_int8"] == {"passed": False, "error": "missing on aarch64"}
    assert "no int8 image parity" in res["checks"]["image_int8"]["error"]
    with pytest.raises(ValueError, match="different image files"):
        compare.compare_embeddings(x86, dict(x86, names=np.array(["a.jpg", "c.png"])), {})
    slim = {k: v for k, v in x86.items() if "fp32" not in k}
    with pytest.raises(ValueError, match="needs the fp32"):
        compare.compare_embeddings(slim, slim, {"int8": PARITY})


def test_batch_independence_is_part_of_the_gate() -> None:
    rng = np.random.default_rng(3)
    x86 = _side(rng)
    x86["image_int8"], x86["text_int8"] = x86["image_fp32"], x86["text_fp32"]
    gate = {enc: dict(PARITY[enc], tolerance={"min_cosine": 0.99, "batch_max_abs_diff": 1e-5}) for enc in PARITY}
    arm = dict(x86, image_int8_alone=x86["image_int8"][:1].copy(), text_int8_alone=x86["text_int8"].copy())
    res = compare.compare_embeddings(x86, arm, {"int8": gate})
    assert res["passed"] and res["checks"]["image_int8"]["batch_max_abs_diff"] == 0.0
    arm["text_int8_alone"] = arm["text_int8_alone"] + 1e-3  # batch-dependent: fails the gate
    res = compare.compare_embeddings(x86, arm, {"int8": gate})
    assert not res["checks"]["text_int8"]["passed"] and res["checks"]["image_int8"]["passed"]
    with pytest.raises(ValueError, match="no alone-vs-batch figure"):
        compare.compare_embeddings(x86, x86, {"int8": gate})
    # both sides carry the alone rows (guest.embed_here writes them on x86 too): not a precision
    x86_alone = dict(x86, image_int8_alone=x86["image_int8"][:1].copy(), text_int8_alone=x86["text_int8"].copy())
    arm = dict(x86_alone)
    res = compare.compare_embeddings(x86_alone, arm, {"int8": gate})
    assert res["passed"] and not any(k.endswith("_alone") for k in res["checks"])
    assert res["checks"]["text_int8"]["x86_batch_max_abs_diff"] == 0.0


def test_passes_reads_the_export_tolerance_keys() -> None:
    assert compare.passes({"max_abs_diff": 1e-4}, 5e-5, 0.0)
    assert compare.passes({"batch_max_abs_diff": 1e-5}, 1.0, 0.0, 0.0)
    assert not compare.passes({"batch_max_abs_diff": 1e-5}, 0.0, 1.0, 1e-3)
    assert not compare.passes({"max_abs_diff": 1e-4, "min_cosine": 0.99}, 5e-5, 0.98)
    with pytest.raises(ValueError, match="unknown tolerance"):
        compare.passes({"rtol": 1.0}, 0.0, 1.0)
    with pytest.raises(ValueError, match="empty"):
        compare.passes({}, 0.0, 1.0)


def test_compare_records(tmp_path: Path) -> None:
    def write(name: str, recs: list[dict]) -> Path:
        p = tmp_path / name
        p.write_text("".join(json.dumps(r) + "\n" for r in recs))
        return p

    rec = lambda path, label, s: {"path": path, "label": label, "scores": {"cat": s, "dog": 1 - s}, "error": None}  # noqa: E731
    x = compare.read_records(write("x.jsonl", [rec("/inputs/f/a.jpg", "cat", 0.6), rec("/inputs/f/b.jpg", "dog", 0.3)]))
    a = compare.read_records(write("a.jsonl", [rec("/x/f/a.jpg", "cat", 0.58), rec("/x/f/b.jpg", "cat", 0.51)]))
    res = compare.compare_records(x, a)
    assert res["passed"] and res["top1_agreement"] == 0.5 and res["max_score_diff"] == pytest.approx(0.21)
    assert not compare.compare_records(x, {"a.jpg": a["a.jpg"]})["passed"]


# -- budgets and the summary line ------------------------------------------------------------------
def _report(**over: object) -> dict:
    r = {
        "cpu": "neoverse-n1",
        "qemu": "7.2.19",
        "failures": [],
        "tests": {"ok": True, "passed": 180, "failed": 0, "errors": 0, "skipped": 4},
        "parity": {
            "ViT-B-32": {
                "passed": True,
                "checks": {
                    "pixels": {"max_abs_diff": 0.0, "passed": True},
                    "image_fp32": {"max_abs_diff": 1.5e-7, "passed": True},
                    "text_fp32": {"max_abs_diff": 1.1e-7, "passed": True},
                    "image_int8": {
                        "vs_fp32": {"min_cosine": 0.99985},
                        "gate": {"min_cosine": 0.999, "batch_max_abs_diff": 1e-5},
                        "batch_max_abs_diff": 0.0,
                        "vs_x86_same_precision": {"max_abs_diff": 2.4e-3},
                        "passed": True,
                    },
                    "text_int8": {
                        "vs_fp32": {"min_cosine": 0.9991},
                        "gate": {"min_cosine": 0.998},
                        "vs_x86_same_precision": {"max_abs_diff": 1.1e-3},
                        "passed": True,
                    },
                },
            }
        },
        "install": {"aarch64_mib": 231.4, "x86_mib": 236.0},
        "memory": {
            "qemu_overhead_mib": 24.0,
            "models": {
                "ViT-B-32": {
                    "role": "main",
                    "one_image": {"raw_mib": 400, "estimate_mib": 290, "x86_mib": 280},
                    "folder": {"raw_mib": 461, "estimate_mib": 351, "x86_mib": 330, "images": 200},
                    "folder_lowmem": {"raw_mib": 380, "estimate_mib": 270, "x86_mib": 250, "images": 200},
                },
                "ViT-S-32-alt": {
                    "role": "small",
                    "one_image": {"raw_mib": 230, "estimate_mib": 120},
                    "one_image_lowmem": {"raw_mib": 220, "estimate_mib": 145, "x86_mib": 146},
                    "folder": {"raw_mib": 250, "estimate_mib": 140, "images": 200},
                },
            },
        },
        "classify": {"ViT-B-32": {"one_image": {"passed": True}, "folder": {"passed": True}}},
        "bundles": {"ViT-B-32": {"slim_mib": 154.2}, "ViT-S-32-alt": {"slim_mib": 48.3}},
        "hwcap": {"ok": True, "detail": "..."},
        "cpu_choice": {"ok": None, "detail": "not checked"},
    }
    r.update(over)
    return r


def test_budgets_and_qemu_overhead() -> None:
    assert summary.qemu_overhead_mib([130.0, 128.0], [10.0, 11.0]) == 118.0
    assert summary.qemu_overhead_mib([5.0], [10.0]) == 0.0
    with pytest.raises(ValueError):
        summary.qemu_overhead_mib([], [1.0])
    v = {b.name: b for b in summary.budgets(_report())}
    assert v["install"].met and v["install"].budget == 250
    assert v["install"].value == pytest.approx(231.4 * 1.048576)  # judged in MB (10**6 bytes)
    assert not v["rss ViT-B-32"].met and v["rss ViT-B-32"].value == pytest.approx(351 * 1.048576)  # the larger run
    assert v["rss ViT-B-32 lowmem"].met and "rss ViT-S-32-alt lowmem" not in v
    assert v["rss ViT-S-32-alt"].met and v["rss ViT-S-32-alt"].budget == 150
    assert not v["rss ViT-S-32-alt 1 img --low-memory"].met  # 145 MiB = 152.0 MB: judged in MB
    assert "rss ViT-B-32 1 img --low-memory" not in v


def test_device_estimate() -> None:
    # under qemu: the guest's sampled peak plus what sampling missed of VmHWM
    run = {"peak_rss_mb": 500.0, "sampled_total_peak_mb": 490.0, "sampled_guest_peak_mb": 380.0}
    assert summary.device_estimate_mib(run) == 390.0
    # natively the guest is the whole process: VmHWM
    assert (
        summary.device_estimate_mib(
            {"peak_rss_mb": 300.0, "sampled_total_peak_mb": 280.0, "sampled_guest_peak_mb": 280.0}
        )
        == 300.0
    )
    assert summary.device_estimate_mib({"peak_rss_mb": 120.0}) == 120.0
    assert summary.estimate_device_mib(500.0, 24.0) == 476.0


def test_summary_line_is_one_line_with_the_figures() -> None:
    line = summary.summary_line(_report())
    assert "\n" not in line
    assert line.startswith("arm64-check PASS (neoverse-n1 under qemu 7.2.19)")
    for needle in (
        "tests 180 passed, 0 failed, 4 skipped",
        "fp32 1.5e-07<=1e-05",
        "int8 image cos 0.99985>=0.999 batch 0e+00<=1e-05 (vs x86 int8 2.4e-03)",
        "int8 text cos 0.99910>=0.998 (vs x86 int8 1.1e-03)",
        "install 243 MB <= 250 met (x86 247 MB)",
        "RSS ViT-B-32 int8 1/200 img 304/368 MB est. (x86 294/346, qemu total 419/483) NOT met <= 300; "
        "folder --low-memory: 283 (x86 262) met",
        "RSS ViT-S-32-alt int8 1/200 img 126/147 MB est.",
        "; 1 img --low-memory: 152 (x86 153) NOT met",
        "int8 bundles ViT-B-32 162, ViT-S-32-alt 51 MB",
    ):
        assert needle in line, needle
    # a missed budget fails only when asked to
    assert summary.summary_line(_report(), strict_budgets=True).startswith("arm64-check FAIL")


@pytest.mark.parametrize(
    "change, needle",
    [
        ({"tests": {"ok": False, "passed": 1, "failed": 2, "errors": 0, "skipped": 0}}, "tests: 2 failed"),
        ({"hwcap": {"ok": False, "detail": "qemu advertises sme"}}, "hwcap: qemu advertises sme"),
        ({"cpu_choice": {"ok": False, "detail": "picked x86"}}, "cpu_choice: picked x86"),
        ({"failures": ["aarch64 install: pip failed"]}, "aarch64 install: pip failed"),
        (
            {"classify": {"ViT-B-32": {"folder": {"passed": False, "error": "exit 1"}}}},
            "classify ViT-B-32 folder: exit 1",
        ),
    ],
)
def test_summary_line_fails_on_correctness(change: dict, needle: str) -> None:
    line = summary.summary_line(_report(**change))
    assert line.startswith("arm64-check FAIL") and needle in line


def test_cpu_choice_verdict() -> None:
    n1 = cpuinfo.CPU_MODELS["neoverse-n1"]
    assert cli.cpu_choice_verdict({"available": False}, n1)["ok"] is False
    isa = {"arch": "aarch64", "class": "arm64-dotprod", "features": ["asimd", "asimddp"], "source": "/proc/cpuinfo"}
    ort = {"backend": "onnxruntime", "precision": "int8", "reason": "nothing measured on arm64-dotprod; ..."}
    api = {"available": True, "isa": isa, "plan": {"image": ort, "text": ort}}
    info = {"exit": 0, "runtime": {"cpu": isa, "image": ort, "text": ort}}
    good = cli.cpu_choice_verdict(api, n1, info)
    assert good["ok"], good
    assert good["detail"] == (
        "arm64-dotprod (asimd asimddp) from /proc/cpuinfo: image onnxruntime int8, "
        "text onnxruntime int8 (API and clip-rt info agree)"
    )
    # clip-rt info must have run, and agree
    assert "was not run" in cli.cpu_choice_verdict(api, n1)["detail"]
    assert "exit 1: boom" in cli.cpu_choice_verdict(api, n1, {"exit": 1, "stderr": "boom"})["detail"]
    fp32 = dict(ort, precision="fp32")
    bad = cli.cpu_choice_verdict(api, n1, {"exit": 0, "runtime": {"cpu": isa, "image": fp32, "text": ort}})
    assert not bad["ok"] and "image: the API plans onnxruntime int8, clip-rt info onnxruntime fp32" in bad["detail"]
    # the wrong class, injected flags, another backend, no plan
    ov = {"backend": "openvino", "precision": "int8"}
    bad = cli.cpu_choice_verdict(
        {"available": True, "isa": dict(isa, **{"class": "generic"}), "plan": {"image": ov, "text": ort}}, n1, info
    )
    assert not bad["ok"] and "API: detected aarch64 generic, expected aarch64 arm64-dotprod" in bad["detail"]
    assert "API: image: openvino chosen" in bad["detail"]
    injected = dict(isa, source="CLIP_RT_CPU_FLAGS")
    bad = cli.cpu_choice_verdict({"available": True, "isa": injected, "plan": {"image": ort, "text": ort}}, n1, info)
    assert not bad["ok"] and "not /proc/cpuinfo" in bad["detail"]
    assert not cli.cpu_choice_verdict({"available": True, "isa": isa}, n1, info)["ok"]


def test_host_path_maps_the_guest_run_folder(tmp_path: Path) -> None:
    assert cli.host_path("/check/out-aarch64/a.npz", tmp_path) == tmp_path / "out-aarch64" / "a.npz"
    # the x86 side's paths are the host's, even when they contain "/check"
    assert cli.host_path("/work/check/out/a.npz", tmp_path) == Path("/work/check/out/a.npz")


def test_guest_test_subset_exists_and_is_torch_free() -> None:
    """Every listed file exists, and none imports torch/open_clip at module level without a skip."""
    for rel in cli.GUEST_TEST_FILES:
        text = (REPO / rel).read_text()
        assert (REPO / rel).is_file(), rel
        for line in text.splitlines():
            if line.startswith(("import torch", "from torch", "import open_clip", "from clip_rt_export")):
                raise AssertionError(f"{rel} imports {line!r} unconditionally")
    assert "not torch" in cli.GUEST_TEST_MARKER


def test_stale_exports_are_the_same_model_by_other_export_code(tmp_path: Path) -> None:
    from arm64check import bundles

    names = [
        "ViT-S-32-seed0-aaaaaaaaaaaa",
        "ViT-S-32-seed0-bbbbbbbbbbbb",
        "ViT-S-32-alt-seed0-aaaaaaaaaaaa",
        "ViT-S-32-seed1-aaaaaaaaaaaa",
        "ViT-S-32-seed0-cccccccccccc-x",
    ]
    for n in names:
        (tmp_path / "bundles" / n).mkdir(parents=True)
    current = tmp_path / "bundles" / "ViT-S-32-seed0-bbbbbbbbbbbb"
    assert bundles.stale_exports(tmp_path, current, "ViT-S-32", 0) == [tmp_path / "bundles" / names[0]]
    assert bundles.stale_exports(tmp_path / "none", current, "ViT-S-32", 0) == []
    assert bundles.export_args("RN50", 3, "slim", Path("/o"))[-4:] == ["int8", "-o", "/o", "--no-fp32"]


def test_ci_runs_the_check_only_when_asked() -> None:
    """.ci/run: the README's set-up + tests always; scripts/arm64-check (qemu, tens of minutes)
    only inside the CI_ARM64=1 block."""
    lines = (REPO / ".ci" / "run").read_text().splitlines()
    code = [(i, line.strip()) for i, line in enumerate(lines) if line.strip() and not line.strip().startswith("#")]
    start = next(i for i, line in code if line == 'if [ "${CI_ARM64:-0}" = 1 ]; then')
    end = next(i for i, line in code if i > start and line == "fi")
    calls = [i for i, line in code if "arm64-check" in line]
    assert calls and all(start < i < end for i in calls)
    assert not any("qemu" in line or "CI_ARM64" in line for i, line in code if not start <= i <= end)
    readme = (REPO / "README.md").read_text()
    extras = "export,test,report,video,serve,ray,ann,openvino,docs"
    assert f'pip install -e ".[{extras}]" && pytest -q -n 2 --dist loadgroup && mkdocs build --strict' in readme
    assert f'python3 -m pip install -q -e ".[{extras}]"' in lines
    assert "python3 -m pytest -q -n 2 --dist loadgroup" in lines and "CI_ARM64=1 .ci/run" in readme


def test_guest_probe_and_embeddings_natively(tmp_path: Path) -> None:
    """What the guest runs inside the venv (probe_here, embed_here), natively on the fake bundle:
    the runtime API they call still exists, and the npz has what compare.py reads."""
    from PIL import Image

    from clip_rt_fixtures.fake_bundle import build_fake_bundle

    bundle = build_fake_bundle(tmp_path / "bundle")
    photos = tmp_path / "photos"
    photos.mkdir()
    for i, mode in enumerate(("RGB", "L", "RGBA")):
        Image.new(mode, (20 + i, 17), 40 * (i + 1) if mode == "L" else (40 * i, 90, 30, 255)[: len(mode)]).save(
            photos / f"{i}.png"
        )
    probe = guest.probe_here(str(bundle))
    assert probe["machine"] and probe["onnxruntime"] and "CPUExecutionProvider" in probe["providers"]
    choice = probe["cpu_choice"]
    assert choice["available"] and choice["isa"]["arch"] == "x86_64"
    assert set(choice["plan"]) == {"image", "text"} and all(c["backend"] for c in choice["plan"].values())
    npz = tmp_path / "e.npz"
    figures = guest.embed_here(str(bundle), str(photos), json.dumps(["a cat", "", "ÜNÏCÔDÉ"]), str(npz))
    assert figures["images"] == 3 and figures["texts"] == 3
    arrays = compare.load_npz(npz)
    assert list(arrays["names"]) == ["0.png", "1.png", "2.png"] and arrays["pixels"].shape[0] == 3
    for prec in figures["precisions"]:
        assert arrays[f"image_{prec}"].shape[0] == 3 and arrays[f"text_{prec}"].shape[0] == 3


def test_checkout_id_names_the_commit() -> None:
    import re

    assert re.fullmatch(r"[0-9a-f]{12}(\+dirty)?", cli.checkout_id())


def test_a_side_that_did_not_finish_fails_the_check(tmp_path: Path) -> None:
    """A guest killed or timed out after some steps leaves results without "finished": the
    figures it never measured must not read as a pass."""
    import argparse

    args = argparse.Namespace(cpu="neoverse-n1", images=200, strict_budgets=False, argv=[], checkout="abc")
    install = {"ok": True, "install_bytes": 2 << 20, "venv_bytes_after": 3 << 20, "largest": [], "freeze": []}
    done = {"steps": {"install": install}, "plan": {"venv": "/v"}}
    report = cli.build_report(args, dict(done), dict(done, finished=True), [], tmp_path)
    assert report["failures"] == ["aarch64: the steps did not all run (done: install)"]
    line = summary.summary_line(report)
    assert line.startswith("arm64-check FAIL") and "did not all run" in line
    report = cli.build_report(args, dict(done, finished=True), dict(done, finished=True), [], tmp_path)
    assert report["failures"] == [] and report["checkout"] == "abc" and "emulated" in report["timings"]
