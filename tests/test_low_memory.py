"""Memory on small devices: `--low-memory` (glibc's mmap threshold) and the tokenizer freed with
the text session. The peak-RSS figures themselves are measured by scripts/arm64-check and
docs/devices.md, not here (no timed or memory-measuring tests)."""
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fake_bundle import build_fake_bundle  # noqa: E402


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
    result = CliRunner().invoke(main, ["classify", str(images), "--labels", "red,green,blue", "--model", str(bundle),
                                       "-o", str(out), *extra], env={"CLIP_RT_HOME": str(home)})
    assert result.exit_code == 0, result.output
    return [json.loads(line) for line in out.read_text().splitlines()]


def test_cli_low_memory_applies_the_setting_and_changes_no_result(bundle: Path, images: Path, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    monkeypatch.setattr(memory, "use_low_memory_allocator", lambda: calls.append(1) or True)
    plain = _classify(bundle, images, tmp_path / "a.jsonl", tmp_path / "home-a")
    assert calls == []
    low = _classify(bundle, images, tmp_path / "b.jsonl", tmp_path / "home-b", "--low-memory")
    assert calls == [1]
    assert [(r["path"], r["label"], r["score"]) for r in low] == [(r["path"], r["label"], r["score"]) for r in plain]


def test_cli_low_memory_says_so_where_it_cannot_apply(bundle: Path, images: Path, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(memory, "use_low_memory_allocator", lambda: False)
    result = CliRunner().invoke(main, ["classify", str(images), "--labels", "red,green", "--model", str(bundle),
                                       "--low-memory"], env={"CLIP_RT_HOME": str(tmp_path / "home")})
    assert result.exit_code == 0, result.output
    assert "--low-memory: this C library has no glibc mallopt" in result.output


@pytest.mark.parametrize("command", ["classify", "similarity", "index", "video"])
def test_model_commands_offer_low_memory(command: str) -> None:
    result = CliRunner().invoke(main, [command, "--help"])
    assert result.exit_code == 0
    assert "--low-memory" in result.output


def test_releasing_text_frees_the_tokenizer_and_text_works_again(bundle: Path, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLIP_RT_HOME", str(tmp_path / "home"))
    model = clip_rt.load(bundle, cache="memory")
    first = model.encode_text(["a photo of red"])
    assert model._tokenizer_obj is not None and "text" in model._sessions
    model.release("text")
    assert model._tokenizer_obj is None and "text" not in model._sessions
    again = clip_rt.load(bundle, cache=False).encode_text(["a photo of red"])  # tokenizer loaded anew
    np.testing.assert_array_equal(first, again)
    np.testing.assert_array_equal(model.encode_text(["a photo of green"]),
                                  clip_rt.load(bundle, cache=False).encode_text(["a photo of green"]))
    assert model._tokenizer_obj is not None


def test_releasing_the_image_session_keeps_the_tokenizer(bundle: Path, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLIP_RT_HOME", str(tmp_path / "home"))
    model = clip_rt.load(bundle, cache=False)
    model.encode_text(["x"])
    tokenizer = model._tokenizer_obj
    model.release("image")
    assert model._tokenizer_obj is tokenizer


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="Linux /proc")
@pytest.mark.parametrize("extra", [[], ["--low-memory"]])
def test_memory_phases_script_runs(bundle: Path, images: Path, tmp_path: Path, extra: list) -> None:
    import os
    import subprocess

    repo = Path(__file__).resolve().parent.parent
    proc = subprocess.run([sys.executable, "-m", "bench.memory_phases", str(bundle), str(images / "r.png"),
                           "--labels", "red,green,blue", "--json", *extra], cwd=repo, capture_output=True, text=True,
                          env={**os.environ, "CLIP_RT_HOME": str(tmp_path / "home")}, timeout=300)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["label"] in ("red", "green", "blue") and out["low_memory"] == bool(extra)
    phases = [r["phase"] for r in out["phases"]]
    assert phases[-3:] == ["image session", "decode + image run", "scores"] and "text released" in phases
    assert out["peak_mib"] >= max(r["rss_mib"] for r in out["phases"]) > 0
