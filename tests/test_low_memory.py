"""Memory on small devices: low-memory mode (`--low-memory`, `load(low_memory=True)`, automatic
where the process may use at most 2 GiB) and the tokenizer freed with the text session. The
peak-RSS figures themselves are measured by scripts/arm64-check and docs/devices.md, not here
(no timed or memory-measuring tests)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

import clip_rt
from clip_rt.cli import main
from clip_rt.engine import memory
from clip_rt_fixtures.fake_bundle import build_fake_bundle


class FakeLibc:
    def __init__(self, result: int = 1) -> None:
        self.calls: list[tuple[int, int]] = []
        self.result = result

    def mallopt(self, param: int, value: int) -> int:
        self.calls.append((param, value))
        return self.result


def test_allocator_setting_fixes_the_mmap_threshold() -> None:
    libc = FakeLibc()
    assert memory.use_low_memory_allocator(libc) is True
    assert libc.calls == [(memory.M_MMAP_THRESHOLD, 128 * 1024)]


def test_allocator_setting_without_mallopt_does_nothing() -> None:
    assert memory.use_low_memory_allocator(object()) is False  # a C library without mallopt
    assert memory.use_low_memory_allocator(FakeLibc(result=0)) is False  # refused


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_allocator_setting_applies_to_this_process() -> None:
    # glibc accepts it (musl or another libc: False, nothing changed); calling it twice is fine
    import platform

    applied = memory.use_low_memory_allocator()
    if platform.libc_ver()[0] == "glibc":
        assert applied is True
        assert memory.use_low_memory_allocator() is True


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_fake_bundle(tmp_path_factory.mktemp("lowmem") / "fake-clip")


@pytest.fixture
def images(tmp_path: Path) -> Path:
    folder = tmp_path / "imgs"
    folder.mkdir()
    for name, colour in (("r.png", (250, 10, 10)), ("g.png", (10, 250, 10)), ("b.jpg", (10, 10, 250))):
        Image.new("RGB", (40, 30), colour).save(folder / name)
    return folder


def _classify(bundle: Path, images: Path, out: Path, home: Path, *extra: str) -> list[dict]:
    result = CliRunner().invoke(
        main,
        ["classify", str(images), "--labels", "red,green,blue", "--model", str(bundle), "-o", str(out), *extra],
        env={"CLIP_RT_HOME": str(home)},
    )
    assert result.exit_code == 0, result.output
    return [json.loads(line) for line in out.read_text().splitlines()]


def test_cli_low_memory_applies_the_setting_and_changes_no_result(
    bundle: Path, images: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = []
    monkeypatch.setattr(memory, "use_low_memory_allocator", lambda: calls.append(1) or True)
    plain = _classify(bundle, images, tmp_path / "a.jsonl", tmp_path / "home-a")
    assert calls == []
    low = _classify(bundle, images, tmp_path / "b.jsonl", tmp_path / "home-b", "--low-memory")
    assert calls  # by the option as it is parsed (and again, harmlessly, as the model loads)
    assert [(r["path"], r["label"], r["score"]) for r in low] == [(r["path"], r["label"], r["score"]) for r in plain]


def test_cli_low_memory_says_so_where_it_cannot_apply(
    bundle: Path, images: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(memory, "use_low_memory_allocator", lambda: False)
    result = CliRunner().invoke(
        main,
        ["classify", str(images), "--labels", "red,green", "--model", str(bundle), "--low-memory"],
        env={"CLIP_RT_HOME": str(tmp_path / "home")},
    )
    assert result.exit_code == 0, result.output
    assert "low-memory mode: this C library has no glibc mallopt" in result.output


@pytest.mark.parametrize("command", ["classify", "similarity", "index", "video"])
def test_model_commands_offer_low_memory(command: str) -> None:
    result = CliRunner().invoke(main, [command, "--help"])
    assert result.exit_code == 0
    assert "--low-memory" in result.output


def test_releasing_text_frees_the_tokenizer_and_text_works_again(
    bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CLIP_RT_HOME", str(tmp_path / "home"))
    model = clip_rt.load(bundle, cache="memory")
    first = model.encode_text(["a photo of red"])
    assert model._runtime.tokenizer_loaded and "text" in model.open_encoders
    model.release("text")
    assert not model._runtime.tokenizer_loaded and "text" not in model.open_encoders
    again = clip_rt.load(bundle, cache=False).encode_text(["a photo of red"])  # tokenizer loaded anew
    np.testing.assert_array_equal(first, again)
    np.testing.assert_array_equal(
        model.encode_text(["a photo of green"]), clip_rt.load(bundle, cache=False).encode_text(["a photo of green"])
    )
    assert model._runtime.tokenizer_loaded


def test_releasing_the_image_session_keeps_the_tokenizer(
    bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CLIP_RT_HOME", str(tmp_path / "home"))
    model = clip_rt.load(bundle, cache=False)
    model.encode_text(["x"])
    tokenizer = model.tokenizer()
    model.release("image")
    assert model.tokenizer() is tokenizer


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="Linux /proc")
@pytest.mark.parametrize("extra", [[], ["--low-memory"]])
def test_memory_phases_script_runs(bundle: Path, images: Path, tmp_path: Path, extra: list) -> None:
    import os
    import subprocess

    repo = Path(__file__).resolve().parent.parent
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.memory_phases",
            str(bundle),
            str(images / "r.png"),
            "--labels",
            "red,green,blue",
            "--json",
            *extra,
        ],
        cwd=repo,
        capture_output=True,
        text=True,
        env={**os.environ, "CLIP_RT_HOME": str(tmp_path / "home")},
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["label"] in ("red", "green", "blue") and out["low_memory"] == bool(extra)
    phases = [r["phase"] for r in out["phases"]]
    assert phases[-3:] == ["image session", "decode + image run", "scores"] and "text released" in phases
    assert out["peak_mib"] >= max(r["rss_mib"] for r in out["phases"]) > 0


# -- low-memory mode: the memory limit, the automatic choice, what it changes ------------------
GIB = 1024**3


def _limit_files(tmp_path: Path, mem_total_kib: int | None, cgroup: str | None) -> tuple[str, list[str]]:
    meminfo = tmp_path / "meminfo"
    if mem_total_kib is not None:
        meminfo.write_text(f"MemTotal:       {mem_total_kib} kB\nMemFree:        1000 kB\n")
    cg = tmp_path / "memory.max"
    if cgroup is not None:
        cg.write_text(cgroup + "\n")
    return str(meminfo), [str(cg), str(tmp_path / "absent")]


@pytest.mark.parametrize(
    "mem_total_kib, cgroup, expected, source",
    [
        (8 * 1024 * 1024, None, 8 * GIB, "MemTotal"),  # no cgroup file: the RAM
        (8 * 1024 * 1024, "max", 8 * GIB, "MemTotal"),  # cgroup v2 without a limit
        (8 * 1024 * 1024, str(512 * 1024**2), 512 * 1024**2, "memory.max"),  # a container's --memory
        (1024 * 1024, str(9223372036854771712), GIB, "MemTotal"),  # cgroup v1's "no limit"
        (None, str(GIB), GIB, "memory.max"),
    ],
)
def test_memory_limit_is_the_smaller_of_ram_and_cgroup(
    tmp_path: Path, mem_total_kib: int | None, cgroup: str | None, expected: int, source: str
) -> None:
    meminfo, cgroups = _limit_files(tmp_path, mem_total_kib, cgroup)
    limit = memory.memory_limit(meminfo, cgroups)
    assert limit is not None and limit.bytes == expected and source in limit.source


def test_memory_limit_unknown(tmp_path: Path) -> None:
    assert memory.memory_limit(str(tmp_path / "no-meminfo"), [str(tmp_path / "no-cgroup")]) is None


def test_memory_mode_choice() -> None:
    small, large = memory.MemoryLimit(GIB, "x"), memory.MemoryLimit(16 * GIB, "x")
    assert memory.choose_memory_mode(True, large).low and memory.choose_memory_mode(True, None).low
    assert not memory.choose_memory_mode(False, small).low
    on = memory.choose_memory_mode(None, small)
    assert on.low and "1.0 GiB" in on.reason and "--no-low-memory" in on.reason
    assert not memory.choose_memory_mode(None, large).low
    assert memory.choose_memory_mode(None, memory.MemoryLimit(2 * GIB, "x")).low  # at most 2 GiB
    unknown = memory.choose_memory_mode(None, None)
    assert not unknown.low and "does not say" in unknown.reason


def test_low_memory_session_options_merge() -> None:
    assert memory.low_memory_session_options(None) == {"enable_cpu_mem_arena": False, "enable_mem_pattern": False}
    assert memory.low_memory_session_options({"enable_mem_pattern": True, "log_severity_level": 3}) == {
        "enable_cpu_mem_arena": False,
        "enable_mem_pattern": True,
        "log_severity_level": 3,
    }  # the caller's win
    import onnxruntime

    with pytest.raises(clip_rt.InputError, match="session_options must be a dict"):
        memory.low_memory_session_options(onnxruntime.SessionOptions())


def test_load_low_memory_sessions_batches_and_same_embeddings(
    bundle: Path, images: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CLIP_RT_HOME", str(tmp_path / "home"))
    files = sorted(str(p) for p in images.iterdir())
    normal = clip_rt.load(bundle, cache=False, backend="onnxruntime")
    low = clip_rt.load(bundle, cache=False, backend="onnxruntime", low_memory=True)
    assert (normal.low_memory, normal.image_batch_size) == (False, 8)
    assert (low.low_memory, low.image_batch_size) == (True, 1)
    np.testing.assert_array_equal(low.encode_image(files), normal.encode_image(files))
    np.testing.assert_array_equal(low.encode_text(["a photo of red"]), normal.encode_text(["a photo of red"]))
    for model, arena in ((normal, True), (low, False)):
        so = model.session("image").inference_session.get_session_options()
        assert (so.enable_cpu_mem_arena, so.enable_mem_pattern) == (arena, arena)
    assert low.runtime["low_memory"] is True and normal.runtime["low_memory"] is False


def test_low_memory_image_methods_default_to_one_image_and_one_decoder(
    bundle: Path, images: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import clip_rt.model as model_mod

    monkeypatch.setenv("CLIP_RT_HOME", str(tmp_path / "home"))
    seen: list[tuple[int, int]] = []
    real = model_mod.image_stream

    def spy(sources, session, decode_one, batch_size, **kw):  # type: ignore[no-untyped-def]
        seen.append((batch_size, kw["workers"]))
        return real(sources, session, decode_one, batch_size, **kw)

    monkeypatch.setattr(model_mod, "image_stream", spy)
    files = sorted(str(p) for p in images.iterdir())
    low = clip_rt.load(bundle, cache=False, low_memory=True)
    low.encode_image(files)
    list(low.iter_images(files, batch_size=2))
    low.classify(files, ["red", "green"])
    assert seen == [(1, 1), (2, 1), (1, 1)]
    seen.clear()
    clip_rt.load(bundle, cache=False).encode_image(files)
    assert seen[0][0] == 8 and seen[0][1] >= 1


class _Spy:
    """Records what classify's model was asked: low-memory mode and the images' batch size."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: list[tuple[bool, int]] = []
        real = clip_rt.ClipModel.iter_images
        spy = self

        def iter_images(model, sources, batch_size=None, **kw):  # type: ignore[no-untyped-def]
            spy.calls.append((model.low_memory, batch_size))
            return real(model, sources, batch_size, **kw)

        monkeypatch.setattr(clip_rt.ClipModel, "iter_images", iter_images)


@pytest.mark.parametrize(
    "limit_gib, extra, expected",
    [
        (1, [], (True, 1)),  # a 1 GB board: on by itself
        (1, ["--no-low-memory"], (False, 8)),
        (16, [], (False, 8)),
        (16, ["--low-memory"], (True, 1)),
        (16, ["--low-memory", "--batch-size", "4"], (True, 4)),  # an explicit batch size wins
        (1, ["--batch-size", "3"], (True, 3)),
    ],
)
def test_cli_low_memory_mode(
    bundle: Path,
    images: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    limit_gib: int,
    extra: list,
    expected: tuple,
) -> None:
    monkeypatch.setattr(memory, "memory_limit", lambda: memory.MemoryLimit(limit_gib * GIB, "test"))
    monkeypatch.setattr(memory, "use_low_memory_allocator", lambda: True)
    spy = _Spy(monkeypatch)
    out = tmp_path / "o.jsonl"
    records = _classify(bundle, images, out, tmp_path / "home", *extra)
    assert spy.calls == [expected] and len(records) == 3
    side = json.loads(Path(str(out) + ".clip-rt.json").read_text())
    assert side["runtime"].get("low_memory", False) is expected[0]


@pytest.mark.parametrize("limit_gib, low", [(1, True), (16, False)])
def test_info_says_whether_low_memory_mode_is_on(
    bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, limit_gib: int, low: bool
) -> None:
    monkeypatch.setattr(memory, "memory_limit", lambda: memory.MemoryLimit(limit_gib * GIB, "/test/memory.max"))
    env = {"CLIP_RT_HOME": str(tmp_path / "home")}
    text = CliRunner().invoke(main, ["info", str(bundle)], env=env)
    assert text.exit_code == 0, text.output
    line = [s for s in text.output.splitlines() if s.startswith("memory:")]
    assert line and f"low-memory mode {'on' if low else 'off'}" in line[0] and "/test/memory.max" in line[0]
    data = json.loads(CliRunner().invoke(main, ["info", str(bundle), "--json"], env=env).output)
    assert data["memory"]["low_memory"] is low
