"""clip_rt.load / ClipModel on the fake bundle (fast), and against open_clip (torch, slow)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import threading
import warnings
from pathlib import Path

import numpy as np
import pytest

import clip_rt
from clip_rt import model as model_mod
from clip_rt.bundle import manifest as manifest_mod
from clip_rt.bundle.store import models_dir
from clip_rt.engine import runtime as runtime_mod
from clip_rt.engine.session import CPU, CUDA
from clip_rt.errors import BundleError, ChecksumError, ImageLoadError, InputError, ProviderError
from clip_rt.zeroshot import softmax
from clip_rt_fixtures.fake_bundle import build_fake_bundle

PROMPTS = [
    "a photo of a cat.",
    "dog",
    "a blurry photo of the big red car .",
    "",
    "a b c d e f g h",
    "sketch",
    "two dogs",
    "a photo of a cat.",
]


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_fake_bundle(tmp_path_factory.mktemp("fake") / "fake-clip")


@pytest.fixture(scope="module")
def static_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_fake_bundle(
        tmp_path_factory.mktemp("static") / "fake-static", precisions=("fp32",), dynamic_sequence=False, logit_bias=-3.0
    )


@pytest.fixture
def fresh_bundle(bundle: Path, tmp_path: Path) -> Path:
    """A private copy, for tests that modify files."""
    return Path(shutil.copytree(bundle, tmp_path / "copy"))


def images(n: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (12 + 7 * i % 30, 20 + 5 * i % 17, 3), dtype=np.uint8) for i in range(n)]


class RunSpy:
    """Records the shapes fed to a session."""

    def __init__(self, session: object) -> None:
        self.shapes: list[tuple[int, ...]] = []
        self._run = session.run  # type: ignore[attr-defined]
        session.run = self  # type: ignore[attr-defined]

    def __call__(self, feeds: dict) -> list:
        self.shapes.extend(np.asarray(v).shape for v in feeds.values())
        return self._run(feeds)


# -- loading -------------------------------------------------------------------------------
def test_load_by_path_and_by_store_name(bundle: Path) -> None:
    m = clip_rt.load(bundle)
    assert (m.precision, m.embed_dim, m.logit_scale, m.logit_bias) == ("fp32", 8, 100.0, None)
    assert m.bundle_dir == bundle and m.manifest.name == "fake-clip" and m.providers == [CPU]
    shutil.copytree(bundle, models_dir() / "fake-clip")
    named = clip_rt.load("fake-clip", precision="fp16")
    assert named.bundle_dir == models_dir() / "fake-clip" and named.precision == "fp16"
    with pytest.raises(clip_rt.ModelNotFoundError):
        clip_rt.load("no-such-model")


def test_precisions(bundle: Path) -> None:
    e32 = clip_rt.load(bundle).encode_text(PROMPTS)
    e16 = clip_rt.load(bundle, precision="fp16").encode_text(PROMPTS)
    assert not np.array_equal(e32, e16)  # fp16 weights: close, not identical, separately cached
    np.testing.assert_allclose(e32, e16, atol=5e-3)
    with pytest.raises(BundleError, match="has no 'int8' graphs; it has: fp32, fp16"):
        clip_rt.load(bundle, precision="int8")


def test_default_precision_follows_the_first_provider(bundle: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    man = manifest_mod.read_manifest(bundle)
    assert model_mod.default_precision(man, CPU) == "fp32"
    assert model_mod.default_precision(man, CUDA) == "fp16"
    monkeypatch.setattr(runtime_mod, "available_providers", lambda: [CUDA, CPU])
    assert clip_rt.load(bundle, providers=["cuda"]).precision == "fp16"  # no session created yet
    assert clip_rt.load(bundle, providers=["cpu", "cuda"]).precision == "fp32"


def test_providers_may_be_one_string(bundle: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = clip_rt.load(bundle, providers="cpu")  # one provider, not the letters c, p, u
    assert model.providers == [CPU]
    model.encode_text(["a photo of a cat"])
    assert model.providers == [CPU] and model.session("text").providers == [CPU]
    assert clip_rt.load(bundle, providers="CPU").providers == [CPU]
    monkeypatch.setattr(runtime_mod, "available_providers", lambda: [CUDA, CPU])
    assert clip_rt.load(bundle, providers="cuda").providers == [CUDA, CPU]  # no session created yet
    assert clip_rt.load(bundle, providers="cpu,cuda").providers == [CPU, CUDA]  # as the CLI's --providers
    with pytest.raises(InputError, match="unknown execution provider 'tpu'"):
        clip_rt.load(bundle, providers="tpu")


def test_missing_provider_fails_at_load(bundle: Path) -> None:
    with pytest.raises(ProviderError, match="available: .*CPUExecutionProvider"):
        clip_rt.load(bundle, providers=["cuda"])


@pytest.mark.parametrize("kwargs", [{"threads": 0}, {"threads": "2"}, {"cache": "disk"}])
def test_bad_load_arguments(bundle: Path, kwargs: dict) -> None:
    with pytest.raises(InputError):
        clip_rt.load(bundle, **kwargs)


def test_threads_reach_the_sessions(bundle: Path) -> None:
    m = clip_rt.load(bundle, threads=1, session_options={"enable_mem_pattern": False})
    opts = m.session("text")._session.get_session_options()
    assert opts.intra_op_num_threads == 1 and opts.enable_mem_pattern is False


# -- lazy sessions and checksums --------------------------------------------------------------
def test_text_only_use_never_touches_the_image_graph(fresh_bundle: Path) -> None:
    (fresh_bundle / "image_fp32.onnx").write_bytes(b"corrupted")
    m = clip_rt.load(fresh_bundle)
    assert m.encode_text(["cat"]).shape == (1, 8)
    assert set(m.open_encoders) == {"text"}
    with pytest.raises(ChecksumError, match="image_fp32.onnx"):
        m.encode_image(images(1))


def test_classify_frees_the_text_session_when_prompts_are_cached(bundle: Path) -> None:
    cached = clip_rt.load(bundle)
    first = cached.classify(images(2), ["cat", "dog"])
    assert set(cached.open_encoders) == {"image"}  # text graph freed: its embeddings are in the cache
    again = cached.classify(images(2), ["cat", "dog"])  # served from the cache, no text session
    assert set(cached.open_encoders) == {"image"}
    assert [r.scores for r in again] == [r.scores for r in first]
    uncached = clip_rt.load(bundle, cache=False)
    uncached.classify(images(1), ["cat", "dog"])
    assert set(uncached.open_encoders) == {"image", "text"}  # no cache: keep it for the next call


def test_checksum_verification_is_memoised(fresh_bundle: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    hashed: list[str] = []
    real = manifest_mod.sha256_file
    monkeypatch.setattr(manifest_mod, "sha256_file", lambda p, *a: hashed.append(Path(p).name) or real(p, *a))
    clip_rt.load(fresh_bundle).encode_text(["cat"])
    assert sorted(hashed) == ["text_fp32.onnx", "tokenizer.json"]
    hashed.clear()
    clip_rt.load(fresh_bundle).encode_text(["dog"])
    assert hashed == []  # remembered by (path, size, mtime_ns)
    # Same size, new content, new mtime: hashed again and refused.
    graph = fresh_bundle / "text_fp32.onnx"
    data = bytearray(graph.read_bytes())
    data[-1] ^= 0xFF
    graph.write_bytes(bytes(data))
    os.utime(graph, ns=(graph.stat().st_atime_ns, graph.stat().st_mtime_ns + 10**9))
    with pytest.raises(ChecksumError, match="sha256"):
        clip_rt.load(fresh_bundle).encode_text(["bird"])
    with pytest.raises(BundleError, match="cannot load this graph"):  # unverified: onnxruntime finds it
        clip_rt.load(fresh_bundle, verify=False, cache=False).encode_text(["bird"])


# -- text ----------------------------------------------------------------------------------
def test_text_batching_and_dynamic_slicing_match_full_length(bundle: Path) -> None:
    m = clip_rt.load(bundle, cache=False)
    one_shot = m.encode_text(PROMPTS)
    spy = RunSpy(m.session("text"))
    for bs in (1, 3):
        np.testing.assert_allclose(m.encode_text(PROMPTS, batch_size=bs), one_shot, atol=1e-6)
    tokens = m.tokenizer().encode_batch(PROMPTS)
    assert max(s[1] for s in spy.shapes) == tokens.max_length < m.manifest.text.context_length
    assert min(s[1] for s in spy.shapes) == 2  # the empty prompt: SOT, EOT
    full = m.session("text")._session.run(None, {"input_ids": tokens.ids})[0]
    np.testing.assert_allclose(one_shot, full, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(one_shot, axis=1), 1.0, atol=1e-5)


def test_static_graph_gets_full_length(static_bundle: Path) -> None:
    m = clip_rt.load(static_bundle, cache=False)
    spy = RunSpy(m.session("text"))
    m.encode_text(["cat", "a photo of a dog"], batch_size=1)
    assert spy.shapes == [(1, 16), (1, 16)]


def test_cached_prompts_skip_inference(bundle: Path) -> None:
    first = clip_rt.load(bundle).encode_text(PROMPTS)
    again = clip_rt.load(bundle)
    np.testing.assert_array_equal(again.encode_text(PROMPTS), first)
    assert again.open_encoders == ()  # every prompt came from the SQLite cache
    spy = RunSpy(again.session("text"))
    again.encode_text(PROMPTS + ["new prompt"])
    assert spy.shapes == [(1, 4)]  # only the miss ran: SOT new prompt EOT
    uncached = clip_rt.load(bundle, cache=False)
    spy = RunSpy(uncached.session("text"))
    uncached.encode_text(["cat"])
    uncached.encode_text(["cat"])
    assert len(spy.shapes) == 2


def test_truncation_warns_once_per_call(bundle: Path) -> None:
    m = clip_rt.load(bundle, cache=False)
    long = ["a photo of the " * 6, "red green blue " * 7, "cat"]
    with pytest.warns(UserWarning) as record:
        m.encode_text(long)
    assert len([w for w in record if "truncated" in str(w.message)]) == 1
    assert "2 text(s)" in str(record[0].message)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m.encode_text(["cat", "dog"])


def test_text_input_errors(bundle: Path) -> None:
    m = clip_rt.load(bundle)
    assert m.encode_text([]).shape == (0, 8)
    assert m.encode_text("cat").shape == (1, 8)
    with pytest.raises(InputError, match="strings"):
        m.encode_text(["cat", None])  # type: ignore[list-item]
    with pytest.raises(InputError, match="batch_size"):
        m.encode_text(["cat"], batch_size=0)


def test_concurrent_threads_get_the_same_embeddings(bundle: Path) -> None:
    m = clip_rt.load(bundle, cache="memory")
    want = clip_rt.load(bundle, cache=False).encode_text(PROMPTS)
    results: list[np.ndarray] = []
    threads = [threading.Thread(target=lambda: results.append(m.encode_text(PROMPTS))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 4
    for r in results:
        np.testing.assert_allclose(r, want, atol=1e-6)


# -- images --------------------------------------------------------------------------------
def test_image_batching_equals_one_shot(bundle: Path) -> None:
    m = clip_rt.load(bundle)
    imgs = images(7)
    one_shot = m.encode_image(imgs, batch_size=32)
    assert one_shot.shape == (7, 8) and one_shot.dtype == np.float32
    for bs in (1, 2, 3):
        np.testing.assert_allclose(m.encode_image(imgs, batch_size=bs), one_shot, atol=1e-6)
    np.testing.assert_allclose(m.encode_image(imgs[3]), one_shot[3:4], atol=1e-6)
    pixels = m.preprocessor.batch(imgs)
    direct = m.session("image").run({"pixel_values": pixels})[0]
    np.testing.assert_allclose(one_shot, direct, atol=1e-6)


def test_encode_image_raises_on_the_first_bad_image(bundle: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"<html>not an image</html>")
    m = clip_rt.load(bundle)
    with pytest.raises(ImageLoadError, match="bad.jpg"):
        m.encode_image(images(3) + [str(bad)] + images(2))
    with pytest.raises(InputError, match="expected an image"):
        m.encode_image([3.5])
    assert m.encode_image([]).shape == (0, 8)


def test_iter_images_reports_errors_per_item_in_order(bundle: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 20)
    imgs = images(5)
    sources = [imgs[0], str(tmp_path / "missing.jpg"), imgs[1], str(bad), imgs[2], imgs[3], imgs[4]]
    m = clip_rt.load(bundle)
    items = list(m.iter_images(iter(sources), batch_size=2))
    assert [it.index for it in items] == list(range(7))
    assert [it.ok for it in items] == [True, False, True, False, True, True, True]
    assert "no such file" in (items[1].error or "") and items[1].embedding is None
    assert items[1].source == str(tmp_path / "missing.jpg")
    good = np.stack([it.embedding for it in items if it.ok])
    np.testing.assert_allclose(good, m.encode_image(imgs), atol=1e-6)
    assert (items[0].width, items[0].height) == (imgs[0].shape[1], imgs[0].shape[0])
    assert items[3].to_dict()["embedding"] is None and items[0].to_dict()["source"] == "<ndarray>"


def test_iter_images_streams_with_bounded_read_ahead(bundle: Path) -> None:
    pulled = 0

    def endless():
        nonlocal pulled
        rng = np.random.default_rng(0)
        while True:
            pulled += 1
            yield rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)

    m = clip_rt.load(bundle)
    stream = m.iter_images(endless(), batch_size=4)
    first = next(stream)
    assert first.ok and pulled <= 4 + 2 * 4  # one batch plus the read-ahead, not the whole source
    for _ in range(20):
        next(stream)
    assert pulled <= 21 + 2 * 4 + 4
    stream.close()  # stops the decode threads; must not hang


# -- similarity and zero-shot ---------------------------------------------------------------
def test_similarity_is_softmax_of_scaled_cosine(bundle: Path) -> None:
    m = clip_rt.load(bundle)
    imgs = images(3)
    texts = ["cat", "dog", "a red car"]
    probs = m.similarity(imgs, texts)
    want = softmax(m.logit_scale * m.encode_image(imgs) @ m.encode_text(texts).T)
    np.testing.assert_allclose(probs, want, atol=1e-6)
    np.testing.assert_allclose(m.similarity((i for i in imgs), texts), want, atol=1e-6)  # a generator is many
    single = m.similarity(imgs[0], texts)
    assert single.shape == (3,) and single.sum() == pytest.approx(1.0, abs=1e-5)
    with pytest.raises(InputError, match="no texts"):
        m.similarity(imgs[0], [])


def test_classify_matches_classifier_on_embeddings(static_bundle: Path) -> None:
    m = clip_rt.load(static_bundle)
    imgs = images(4)
    labels = {"cat": None, "dog": ["a photo of a dog", "two dogs"], "car": None}
    got = m.classify(imgs, labels, templates=["a photo of a {}.", "a sketch of the {}."], top_k=2)
    clf = m.classifier(labels, ["a photo of a {}.", "a sketch of the {}."])
    assert clf.logit_bias == -3.0
    want = clf.classify_embeddings(m.encode_image(imgs), top_k=2)
    assert [g.label for g in got] == [w.label for w in want]
    for g, w in zip(got, want):
        assert g.score == pytest.approx(w.score, abs=1e-6) and len(g.top_k) == 2
    with pytest.raises(InputError, match="duplicate labels: 'cat'"):
        m.classify(imgs, ["cat", "cat"])
    with pytest.raises(InputError, match="'a cat' has no"):
        m.classify(imgs, ["cat"], templates=["a cat"])


# -- torch-free ------------------------------------------------------------------------------
def test_load_and_inference_do_not_import_torch_or_onnx(bundle: Path, clip_home: Path) -> None:
    code = f"""
    import sys
    import clip_rt
    assert "onnxruntime" not in sys.modules, "import clip_rt should stay cheap"
    m = clip_rt.load({str(bundle)!r})
    import numpy as np
    m.encode_text(["a photo of a cat."])
    m.classify([np.zeros((20, 20, 3), np.uint8)], ["cat", "dog"])
    heavy_packages = ("torch", "open_clip", "onnx", "clip_rt_export", "nncf")
    heavy = sorted(k for k in sys.modules if k.split(".")[0] in heavy_packages)
    assert not heavy, heavy
    print("ok")
    """
    env = dict(os.environ, CLIP_RT_HOME=str(clip_home))
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


# -- against open_clip in PyTorch (the export engineer's session fixtures) -------------------
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "camera")  # camera: greyscale
PARITY_TEXTS = [
    "a photo of an astronaut.",
    "a cup of coffee",
    "a photo of a cat.",
    "a rocket on the launch pad",
    "",
    "Ünïcödé & <b>html</b>   spaces!",
    "a " + "very " * 100 + "long prompt",
]


@pytest.fixture(scope="module")
def vitb32(request: pytest.FixtureRequest) -> tuple[Path, Path]:
    pytest.importorskip("torch")
    pytest.importorskip("open_clip")
    try:
        return Path(request.getfixturevalue("vitb32_bundle_dir")), Path(request.getfixturevalue("vitb32_checkpoint"))
    except pytest.FixtureLookupError:
        pytest.skip("tests/conftest.py has no vitb32_bundle_dir / vitb32_checkpoint fixtures")


@pytest.mark.torch
@pytest.mark.slow
def test_vitb32_matches_open_clip_on_real_photos(vitb32: tuple[Path, Path], tmp_path: Path) -> None:
    import open_clip
    import skimage.data
    import torch
    from PIL import Image

    bundle_dir, checkpoint = vitb32
    photos = [Image.fromarray(getattr(skimage.data, name)()) for name in PHOTOS]
    files = []
    for name, img in zip(PHOTOS, photos):
        files.append(tmp_path / f"{name}.png")
        img.save(files[-1])
    ref, _, preprocess = open_clip.create_model_and_transforms("ViT-B-32", pretrained=str(checkpoint))
    ref.eval()
    with torch.no_grad():
        want_img = ref.encode_image(torch.stack([preprocess(p) for p in photos]), normalize=True).numpy()
        want_txt = ref.encode_text(open_clip.get_tokenizer("ViT-B-32")(PARITY_TEXTS), normalize=True).numpy()
        scale = float(ref.logit_scale.exp())

    m = clip_rt.load(bundle_dir, precision="fp32")
    assert m.logit_scale == pytest.approx(scale, rel=1e-6)
    got_img = m.encode_image(files, batch_size=4)
    with pytest.warns(UserWarning, match="truncated"):
        got_txt = m.encode_text(PARITY_TEXTS, batch_size=3)
    np.testing.assert_allclose(got_img, want_img, atol=1e-4, rtol=0)
    np.testing.assert_allclose(got_txt, want_txt, atol=1e-4, rtol=0)
    np.testing.assert_allclose(m.encode_image(photos), want_img, atol=1e-4, rtol=0)  # PIL input too
    want_probs = torch.softmax(torch.from_numpy(scale * want_img @ want_txt.T), dim=-1).numpy()
    np.testing.assert_allclose(m.similarity(files, PARITY_TEXTS), want_probs, atol=1e-4)


@pytest.mark.torch
@pytest.mark.slow
def test_every_precision_of_a_real_export_runs(request: pytest.FixtureRequest) -> None:
    pytest.importorskip("torch")
    import skimage.data

    try:
        bundle_dir = Path(request.getfixturevalue("tiny_bundle_dir"))
    except pytest.FixtureLookupError:
        pytest.skip("tests/conftest.py has no tiny_bundle_dir fixture")
    photos = [skimage.data.chelsea(), images(1)[0]]
    texts = ["a photo of a cat.", "a dog", ""]
    ref = clip_rt.load(bundle_dir, precision="fp32", cache=False)
    want_img, want_txt = ref.encode_image(photos), ref.encode_text(texts)
    for precision in ("fp16", "int8"):
        m = clip_rt.load(bundle_dir, precision=precision)
        got_img, got_txt = m.encode_image(photos), m.encode_text(texts)
        for enc, got, want in (("image", got_img, want_img), ("text", got_txt, want_txt)):
            cos = float(np.min(np.sum(got * want, axis=1)))
            assert cos >= {"fp16": 0.999, "int8": 0.99}[precision], (precision, enc, cos)
        np.testing.assert_array_equal(m.encode_text(texts), got_txt)  # cached per precision


def test_onnxruntime_telemetry_is_off_unless_asked_for(bundle: Path, clip_home: Path, tmp_path: Path) -> None:
    """onnxruntime 1.29+ writes a telemetry device id under $XDG_CACHE_HOME at import (and
    queues events for upload); an offline runtime opts out, and ORT_DISABLE_TELEMETRY=0 set by
    the user is kept."""
    code = f"""
    import os, sys
    import clip_rt
    m = clip_rt.load({str(bundle)!r})
    m.encode_text(["a cat"])
    print(os.environ["ORT_DISABLE_TELEMETRY"])
    """
    base = {k: v for k, v in os.environ.items() if k != "ORT_DISABLE_TELEMETRY"}
    seen = {}
    for setting in (None, "0"):
        cache = tmp_path / f"xdg-{setting}"
        env = dict(base, CLIP_RT_HOME=str(clip_home), XDG_CACHE_HOME=str(cache))
        if setting is not None:
            env["ORT_DISABLE_TELEMETRY"] = setting
        out = subprocess.run(
            [sys.executable, "-c", textwrap.dedent(code)], env=env, capture_output=True, text=True, timeout=120
        )
        assert out.returncode == 0, out.stderr
        seen[setting] = (out.stdout.strip(), (cache / "Microsoft").exists())
    assert seen[None] == ("1", False)  # opted out: nothing written
    assert seen["0"][0] == "0"  # the user's choice is kept
    # Whether onnxruntime writes its device id with telemetry on depends on the host, not only
    # its version: on one CI host 1.32 wrote none. The opt-out is pinned by the variable onnxruntime
    # reads (asserted above); the file check only adds evidence where onnxruntime does write.
    if not seen["0"][1]:
        warnings.warn(
            "onnxruntime wrote no telemetry device id even with telemetry on: on this host the "
            "'nothing written' check shows only that the variable is set",
            stacklevel=1,
        )
