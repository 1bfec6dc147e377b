"""The Python API and the CLI agree: iter_classify (folders, bad files, per-item errors),
classify() on folders, allow_fallback on an onnxruntime without CUDA, `python -m clip_rt`,
dir(clip_rt), and --skip-errors for classify and index."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime
import pytest
from click.testing import CliRunner
from PIL import Image

import clip_rt
from clip_rt.cli import main
from clip_rt.engine import session as session_mod
from clip_rt.engine.session import CPU, CUDA, OrtSession, resolve_providers
from clip_rt.errors import ImageLoadError, InputError, ProviderError
from clip_rt.model import ClassifiedImage
from clip_rt_fixtures.fake_bundle import build_fake_bundle

REPO = Path(__file__).resolve().parents[1]
CPU_ONLY = ["AzureExecutionProvider", CPU]


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_fake_bundle(tmp_path_factory.mktemp("bundle") / "fake-clip", precisions=("fp32", "fp16"))


def photos(folder: Path) -> Path:
    """Three good images (one in a subfolder), a text file named .jpg, an empty .png."""
    (folder / "sub").mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (40, 30), (220, 20, 30)).save(folder / "a_red.png")
    Image.new("RGB", (24, 24), (20, 30, 220)).save(folder / "c_blue.jpg")
    Image.new("RGB", (30, 50), (20, 200, 40)).save(folder / "sub" / "d_green.png")
    (folder / "b_notes.jpg").write_text("not an image")
    (folder / "e_empty.png").write_bytes(b"")
    (folder / "readme.txt").write_text("not listed: not an image name")
    return folder


def invoke(args: list[str]):  # noqa: ANN201
    return CliRunner().invoke(main, args, catch_exceptions=False)


# -- iter_classify / classify ----------------------------------------------------------------
def test_iter_classify_takes_a_folder_like_the_cli(bundle: Path, tmp_path: Path) -> None:
    folder = photos(tmp_path / "photos")
    model = clip_rt.load(bundle, cache=False)
    items = list(model.iter_classify(folder, labels=["cat", "dog", "car"], top_k=2))
    assert all(isinstance(it, ClassifiedImage) for it in items)
    names = [os.path.relpath(it.path, folder) for it in items]
    assert names == ["a_red.png", "b_notes.jpg", "c_blue.jpg", "e_empty.png", os.path.join("sub", "d_green.png")]
    assert [it.index for it in items] == [0, 1, 2, 3, 4]
    bad = {os.path.basename(it.path): it for it in items if not it.ok}
    assert sorted(bad) == ["b_notes.jpg", "e_empty.png"]
    assert all(it.result is None and it.label is None and it.error for it in bad.values())
    assert "not an image" in bad["b_notes.jpg"].error and "b_notes.jpg" in bad["b_notes.jpg"].error

    # The same records as `clip-rt classify` writes for that folder.
    out = tmp_path / "run.jsonl"
    r = invoke(["classify", str(folder), "-l", "cat,dog,car", "-m", str(bundle), "-o", str(out)])
    assert r.exit_code == 1
    cli = {os.path.basename(rec["path"]): rec for rec in map(json.loads, out.read_text().splitlines())}
    for it in items:
        d = it.to_dict()
        rec = cli[os.path.basename(it.path)]
        assert d["path"] == rec["path"] and (d["error"] is None) == (rec["error"] is None)
        assert (d["width"], d["height"]) == (rec["width"], rec["height"])
        if it.ok:
            assert d["label"] == rec["label"] == it.label and d["score"] == pytest.approx(rec["score"], abs=1e-6)
            assert len(d["top_k"]) == 2 and d["top_k"][0][0] == it.label


def test_iter_classify_mixes_sources_streams_and_reports_unlisted_folders(
    bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = photos(tmp_path / "photos")
    real_scandir = os.scandir

    def scandir(path: Any = ".") -> Any:  # root ignores permission bits: fail the listing here
        if os.path.abspath(os.fspath(path)) == str(folder / "sub"):
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    model = clip_rt.load(bundle, cache=False)
    pil = Image.new("RGB", (16, 16), (0, 200, 0))

    def sources():  # noqa: ANN202  (a generator: read lazily)
        yield pil
        yield folder
        yield tmp_path / "missing.jpg"

    items = list(model.iter_classify(sources(), ["red", "green"], batch_size=2))
    assert items[0].source is pil and items[0].path is None and items[0].ok
    assert items[0].to_dict()["path"] == "<Image>"
    assert [os.path.basename(it.path) for it in items[1:]] == [
        "a_red.png",
        "b_notes.jpg",
        "c_blue.jpg",
        "e_empty.png",
        "sub",
        "missing.jpg",
    ]
    unlisted = items[5]
    assert unlisted.error == f"{folder / 'sub'}: cannot list folder: Permission denied" and unlisted.result is None
    assert "no such file" in items[6].error
    assert [it.index for it in items] == list(range(7))


def test_iter_classify_checks_labels_before_the_first_item(bundle: Path) -> None:
    model = clip_rt.load(bundle, cache=False)
    with pytest.raises(InputError, match="duplicate"):
        model.iter_classify([], ["cat", "cat"])  # raised at the call, not at the first next()


def test_classify_takes_folders_and_still_raises_on_a_bad_file(bundle: Path, tmp_path: Path) -> None:
    good = tmp_path / "good"
    (good / "sub").mkdir(parents=True)
    Image.new("RGB", (40, 30), (220, 20, 30)).save(good / "a.png")
    Image.new("RGB", (30, 50), (20, 200, 40)).save(good / "sub" / "b.png")
    model = clip_rt.load(bundle, cache=False)
    from_folder = model.classify(good, ["red", "green"], top_k=1)
    from_files = model.classify([good / "a.png", good / "sub" / "b.png"], ["red", "green"], top_k=1)
    assert [c.to_dict() for c in from_folder] == [c.to_dict() for c in from_files]
    photos(tmp_path / "mixed")
    with pytest.raises(ImageLoadError, match="b_notes.jpg"):
        model.classify(tmp_path / "mixed", ["red", "green"])


# -- allow_fallback on an onnxruntime build without CUDA ----------------------------------------
def test_resolve_providers_with_fallback_leaves_out_what_the_build_lacks() -> None:
    with pytest.raises(ProviderError, match="allow_fallback=True"):
        resolve_providers(["cuda"], CPU_ONLY)
    with pytest.warns(RuntimeWarning, match=r"cuda not available in this onnxruntime build .*allow_fallback"):
        assert resolve_providers(["cuda"], CPU_ONLY, allow_fallback=True) == [CPU]
    with pytest.warns(RuntimeWarning):
        assert resolve_providers(["tensorrt", "cuda", "cpu"], [CUDA, CPU], allow_fallback=True) == [(CUDA, {}), CPU]
    with pytest.raises(InputError):  # a name that means nothing is still an error
        resolve_providers(["gpu0"], CPU_ONLY, allow_fallback=True)


def test_ort_session_falls_back_when_the_build_has_no_cuda(bundle: Path) -> None:
    with pytest.warns(RuntimeWarning, match="not available in this onnxruntime build"):
        sess = OrtSession(
            bundle / "text_fp32.onnx",
            ["cuda:1"],
            allow_fallback=True,
            available_providers=CPU_ONLY,
            options={"cuda": {"gpu_mem_limit": 1 << 30}},
        )
    assert sess.fell_back and sess.providers == [CPU]
    with pytest.raises(ProviderError, match="not available"):
        OrtSession(bundle / "text_fp32.onnx", ["cuda"], available_providers=CPU_ONLY)


def test_load_with_allow_fallback_runs_on_the_cpu_without_cuda(bundle: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: list(CPU_ONLY))
    with pytest.raises(ProviderError, match="not available"):
        clip_rt.load(bundle, providers=["cuda"])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = clip_rt.load(
            bundle,
            providers=["cuda"],
            allow_fallback=True,
            cache=False,
            provider_options={"cuda": {"cudnn_conv_algo_search": "HEURISTIC"}},
        )
        assert model.precision == "fp32"  # the CPU's default, not CUDA's fp16
        emb = model.encode_text(["a photo of a cat"])
        model.encode_image([Image.new("RGB", (16, 16))])
    messages = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    assert len(messages) == 1 and "cuda not available in this onnxruntime build" in messages[0]  # once, at load
    assert model.providers == [CPU] and model.session("text").fell_back and model.session("image").fell_back
    reference = clip_rt.load(bundle, providers=["cpu"], cache=False).encode_text(["a photo of a cat"])
    np.testing.assert_array_equal(emb, reference)
    # an explicit precision stays as asked
    with pytest.warns(RuntimeWarning):
        assert clip_rt.load(bundle, providers="cuda", allow_fallback=True, precision="fp16").precision == "fp16"


def test_automatic_providers_on_a_cpu_build_need_no_fallback(
    bundle: Path, monkeypatch: pytest.MonkeyPatch, recwarn: pytest.WarningsRecorder
) -> None:
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: list(CPU_ONLY))
    monkeypatch.setattr(session_mod, "_ort_available", lambda: list(CPU_ONLY))
    model = clip_rt.load(bundle, cache=False)
    model.encode_text(["x"])
    assert not model.session("text").fell_back
    assert not [w for w in recwarn if issubclass(w.category, RuntimeWarning)]


# -- python -m clip_rt, dir(clip_rt) ----------------------------------------------------------------
def test_python_dash_m_clip_rt(clip_home: Path) -> None:
    env = {**os.environ, "CLIP_RT_HOME": str(clip_home)}
    done = subprocess.run(
        [sys.executable, "-m", "clip_rt", "--help"], capture_output=True, text=True, env=env, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("Usage: clip-rt ") and "classify" in done.stdout and "export" in done.stdout
    bad = subprocess.run(
        [sys.executable, "-m", "clip_rt", "classify"], capture_output=True, text=True, env=env, timeout=120
    )
    assert bad.returncode == 2 and "Usage: clip-rt classify" in bad.stderr


def test_dir_lists_the_lazy_names() -> None:
    names = dir(clip_rt)
    assert {"load", "ClipModel", "templates", "ClipRtError", "__version__"} <= set(names)
    assert names == sorted(names)


# -- --skip-errors -------------------------------------------------------------------------------------
@pytest.mark.parametrize("command", ["classify", "index"])
def test_skip_errors_exits_0_and_still_reports(command: str, bundle: Path, tmp_path: Path) -> None:
    folder = photos(tmp_path / "photos")
    if command == "classify":
        args = ["classify", str(folder), "-l", "cat,dog", "-m", str(bundle), "-o", str(tmp_path / "r.jsonl")]
        summary = "5 processed, 2 failed"
    else:
        args = ["index", str(folder), "-o", str(tmp_path / "idx"), "-m", str(bundle)]
        summary = "3 images indexed (3 new, 0 changed, 0 removed, 0 unchanged), 2 failed"
    default = invoke(args)
    assert default.exit_code == 1 and summary in default.stderr
    skipped = invoke(args + ["--skip-errors"])
    assert skipped.exit_code == 0, skipped.output
    assert "2 failed" in skipped.stderr and "b_notes.jpg" in skipped.stderr and "e_empty.png" in skipped.stderr
    if command == "classify":  # the failed files still get their records
        recs = [json.loads(x) for x in (tmp_path / "r.jsonl").read_text().splitlines()]
        assert sum(1 for rec in recs if rec["error"]) == 2 and len(recs) == 5


def test_index_skip_errors_then_search_chain(bundle: Path, tmp_path: Path) -> None:
    folder = photos(tmp_path / "photos")
    script = (
        f"{sys.executable} -m clip_rt index {folder} -o {tmp_path / 'idx'} -m {bundle} --skip-errors && "
        f"{sys.executable} -m clip_rt search {tmp_path / 'idx'} 'a red square' -k 1 --format json"
    )
    done = subprocess.run(
        ["bash", "-c", script],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "CLIP_RT_HOME": str(tmp_path / "home")},
    )
    assert done.returncode == 0, done.stderr
    hits = json.loads(done.stdout)
    assert len(hits) == 1 and hits[0]["rank"] == 1
    assert "2 failed" in done.stderr
