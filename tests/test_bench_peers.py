"""bench.peers / bench.peer_models: the peer benchmark's pieces on tiny inputs (a fake bundle), the
fastembed and onnx_clip parts skipped where those packages are not installed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bench import peer_models, peers
from clip_rt.bundle.manifest import ImageConfig, TextConfig, read_manifest
from clip_rt_fixtures.fake_bundle import build_fake_bundle

REPO = Path(__file__).resolve().parents[1]
MEAN, STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)


# -- pure functions ---------------------------------------------------------------------------------


def test_crop_shift_finds_the_offset_of_a_crop_window() -> None:
    big = np.random.default_rng(0).standard_normal((3, 40, 50)).astype(np.float32)
    want = big[:, 5:37, 8:40]
    assert peers.crop_shift(want.copy(), want) == (0, 0)
    assert peers.crop_shift(big[:, 5:37, 7:39], want) == (0, -1)  # one column to the left
    assert peers.crop_shift(big[:, 6:38, 8:40], want) == (1, 0)
    assert peers.crop_shift(big[:, 5:37, 2:34], want) is None  # farther than max_shift
    assert peers.crop_shift(want[:, :, :31], want) is None  # another size


def test_centre_crop_origins_round_half_to_even_against_floor() -> None:
    # 2999x2001 -> 335x224: d = 111, torchvision round(55.5) = 56, floor 55
    assert peers.centre_crop_origins(2999, 2001, 224) == {"round": (0, 56), "floor": (0, 55)}
    # 3000x2000 -> 336x224: d = 112, both 56
    assert peers.centre_crop_origins(3000, 2000, 224) == {"round": (0, 56), "floor": (0, 56)}
    # portrait 224x227 (already at size): d = 3, round(1.5) = 2, floor 1
    assert peers.centre_crop_origins(224, 227, 224) == {"round": (2, 0), "floor": (1, 0)}


def test_pixel_parity_explains_a_floored_crop() -> None:
    rng = np.random.default_rng(1)
    resized = rng.standard_normal((3, 224, 335)).astype(np.float32)  # 2999x2001 at 224
    want = {"a.jpg": resized[:, :, 56:280], "b.jpg": resized[:, :, 10:234]}
    got = {"a.jpg": resized[:, :, 55:279], "b.jpg": resized[:, :, 10:234] + 1e-7}
    sizes = {"a.jpg": (2999, 2001), "b.jpg": (3000, 2000)}
    out = peers.pixel_parity(got, want, sizes, 224)
    assert out["images_differing"] == 1 and out["crop_shifts_rows_cols"] == {"+0,-1": 1}
    assert out["explained_by_floored_crop_origin"] == 1 and out["unexplained"] == []
    row = {"precision": "fp32", "pixels": out}
    assert "exactly where flooring the crop origin" in peers.findings(row)[0]
    noise = {"a.jpg": want["a.jpg"] + 0.5, "b.jpg": want["b.jpg"]}
    assert peers.pixel_parity(noise, want, sizes, 224)["unexplained"] == ["a.jpg"]


def test_compare_and_speed_rows() -> None:
    a = np.eye(3, 4, dtype=np.float32)
    b = a.copy()
    b[2, 3] = 0.01
    fig = peers.compare(b, a)
    assert fig["rows"] == 3 and fig["rows_over_1e-4"] == 1 and fig["max_abs_diff"] == 0.01
    assert 0.9999 < fig["min_cosine"] < 1.0
    rows = peers.speed_rows({"x": [2.0, 1.0, 4.0]}, 8, "images_per_s", {"x": {"library": "l"}})
    assert rows["x"] == {
        "median_s": 2.0,
        "best_s": 1.0,
        "rounds": 3,
        "median_images_per_s": 4.0,
        "best_images_per_s": 8.0,
        "library": "l",
    }


def test_speedups_are_relative_to_clip_rt_default() -> None:
    rows = {"clip-rt default": {"median_ms": 100.0, "best_ms": 50.0}, "peer": {"median_ms": 250.0, "best_ms": 50.0}}
    peers.speedups(rows, "clip-rt default", "ms")
    assert rows["peer"]["speedup_of_clip_rt_default"] == {"median": 2.5, "best": 1.0}
    assert rows["clip-rt default"]["speedup_of_clip_rt_default"] == {"median": 1.0, "best": 1.0}


def test_round_prompts_are_new_each_round() -> None:
    a, b = peers.round_prompts(1), peers.round_prompts(2)
    assert len(a) == len(set(a)) == 80 and not set(a) & set(b)


def test_vm_hwm_and_unmet_pins() -> None:
    assert peer_models.vm_hwm_mb("Name:\tx\nVmHWM:\t  2048 kB\nVmRSS:\t 1024 kB\n") == (2.0, 1.0)
    with pytest.raises(ValueError, match="VmHWM"):
        peer_models.vm_hwm_mb("Name:\tx\n")
    assert peers.unmet_pins("pytest") == []  # this environment satisfies pytest's own requirements


def test_fastembed_preprocessor_config_follows_the_manifest() -> None:
    shortest = peer_models.fastembed_preprocessor_config(ImageConfig(size=(224, 224), mean=MEAN, std=STD))
    assert shortest["size"] == {"shortest_edge": 224} and shortest["crop_size"] == {"height": 224, "width": 224}
    assert shortest["resample"] == 3 and shortest["image_mean"] == list(MEAN) and shortest["do_center_crop"]
    squash = peer_models.fastembed_preprocessor_config(
        ImageConfig(size=(224, 224), mean=MEAN, std=STD, interpolation="bilinear", resize_mode="squash")
    )
    assert squash["size"] == {"height": 224, "width": 224} and not squash["do_center_crop"] and squash["resample"] == 2
    with pytest.raises(ValueError, match="letterbox"):
        peer_models.fastembed_preprocessor_config(
            ImageConfig(size=(224, 224), mean=MEAN, std=STD, resize_mode="longest")
        )


def test_fastembed_tokenizer_cleans_as_clip_rt_does(tmp_path: Path) -> None:
    from tokenizers import Tokenizer

    import clip_rt

    bundle = build_fake_bundle(tmp_path / "b", precisions=("fp32",))
    manifest = read_manifest(bundle)
    files = peer_models.fastembed_tokenizer_files(manifest.text, json.loads((bundle / "tokenizer.json").read_text()))
    assert files["tokenizer_config.json"]["model_max_length"] == manifest.text.context_length
    assert "!" not in files["special_tokens_map.json"].values()
    tok = Tokenizer.from_str(json.dumps(files["tokenizer.json"]))
    prompts = ["A  Photo of the   CAT ", "a photo of a dog ."]
    ours = clip_rt.load(bundle, cache=False).tokenizer().encode_batch(prompts)
    for encoding, row, n in zip(tok.encode_batch(prompts), ours.ids, ours.lengths):
        assert [i for i, m in zip(encoding.ids, encoding.attention_mask) if m] == row[:n].tolist()
    with pytest.raises(ValueError, match="dynamic_sequence"):
        peer_models.fastembed_tokenizer_files(TextConfig(context_length=77, vocab_size=10), {})


def test_with_input_renames_and_casts(tmp_path: Path) -> None:
    import onnx
    import onnxruntime as ort

    bundle = build_fake_bundle(tmp_path / "b", precisions=("fp32",))
    model = onnx.load(str(bundle / "text_fp32.onnx"))
    ids = np.array([[62, 5, 7, 63, 0]], dtype=np.int64)
    want = ort.InferenceSession(model.SerializeToString()).run(None, {"input_ids": ids})[0]
    peer_models.with_input(model, "input_ids", "TEXT", onnx.TensorProto.INT32)
    onnx.checker.check_model(model)
    got = ort.InferenceSession(model.SerializeToString()).run(None, {"TEXT": ids.astype(np.int32)})[0]
    np.testing.assert_array_equal(got, want)
    image = onnx.load(str(bundle / "image_fp32.onnx"))
    peer_models.with_input(image, "pixel_values", "IMAGE")
    assert [i.name for i in image.graph.input] == ["IMAGE"]
    with pytest.raises(ValueError, match="no input 'nope'"):
        peer_models.with_input(image, "nope", "X")


def test_network_is_refused_and_recorded() -> None:
    script = (
        "import json, os, socket\nfrom bench.peer_models import forbid_network, NetworkBlocked\n"
        "attempts = forbid_network()\n"
        "try:\n    socket.create_connection(('example.com', 80), timeout=2)\n"
        "except NetworkBlocked:\n    pass\n"
        "try:\n    socket.create_connection(('127.0.0.1', 9), timeout=2)\n"  # loopback: allowed (refused by the OS)
        "except OSError:\n    pass\n"
        "print(json.dumps([attempts, os.environ['HF_HUB_OFFLINE']]))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=60, check=True
    )
    assert json.loads(out.stdout) == [["getaddrinfo example.com"], "1"]


# -- the peers on a fake bundle -------------------------------------------------------------------


@pytest.fixture(scope="module")
def fake(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path]]:
    """A fake bundle at 224 px (onnx_clip's fixed size) and two JPEGs: 300x224 (both crop rules
    agree) and 224x227 (torchvision's origin 2, floored 1)."""
    root = tmp_path_factory.mktemp("peers")
    bundle = build_fake_bundle(root / "bundle", precisions=("fp32",), image_size=224)
    rng = np.random.default_rng(0)
    photos = []
    for name, (w, h) in (("same.jpg", (300, 224)), ("odd.jpg", (224, 227))):
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(root / name, quality=95)
        photos.append(root / name)
    return bundle, photos


def test_fastembed_on_the_bundle_graphs(fake: tuple[Path, list[Path]], tmp_path: Path) -> None:
    pytest.importorskip("fastembed")
    bundle, photos = fake
    folders = peer_models.PeerFolders(tmp_path, bundle)
    built = folders.build(["fp32"], onnx_clip=False)
    assert (tmp_path / "fastembed" / "image-fp32" / "model.onnx").resolve() == (bundle / "image_fp32.onnx").resolve()
    assert "unchanged" in built["fastembed fp32 image"]["model.onnx"]
    fe = peer_models.fastembed_runtime(folders, "fp32")
    ref = peer_models.clip_rt_runtime(bundle, "fp32")
    px = peers.pixel_parity(
        {p.name: fe.pixels(p) for p in photos},
        {p.name: ref.pixels(p) for p in photos},
        {"same.jpg": (300, 224), "odd.jpg": (224, 227)},
        224,
    )
    assert px["crop_shifts_rows_cols"] == {"-1,+0": 1} and px["explained_by_floored_crop_origin"] == 1
    img = peers.compare(fe.embed_images(photos, None), ref.embed_images(photos, None))
    assert img["rows_over_1e-4"] <= 1  # only the odd photo can differ
    prompts = ["a photo of a cat.", "A  Photo of the DOG"]
    np.testing.assert_allclose(fe.embed_texts(prompts), ref.embed_texts(prompts), atol=1e-6)
    assert fe.token_ids(prompts) == ref.token_ids(prompts)


def test_onnx_clip_on_the_bundle_graphs(fake: tuple[Path, list[Path]], tmp_path: Path) -> None:
    pytest.importorskip("onnx_clip")
    bundle, photos = fake
    folders = peer_models.PeerFolders(tmp_path, bundle)
    assert folders.build([], onnx_clip=True)["onnx_clip fp32"]["rebuilt"]
    assert not folders.build([], onnx_clip=True)["onnx_clip fp32"]["rebuilt"]  # kept while the bundle is the same
    oc = peer_models.onnx_clip_runtime(folders)
    ref = peer_models.clip_rt_runtime(bundle, "fp32")
    got, want = oc.embed_images(photos, None), ref.embed_images(photos, None)
    np.testing.assert_allclose(got[0], want[0], atol=1e-5)  # same crop: same embedding
    np.testing.assert_allclose(oc.embed_images(photos, 1), got, atol=1e-6)
    assert peers.crop_shift(oc.pixels(photos[1]), ref.pixels(photos[1])) == (-1, 0)


@pytest.mark.slow
def test_the_whole_benchmark_on_a_fake_bundle(fake: tuple[Path, list[Path]], tmp_path: Path) -> None:
    pytest.importorskip("skimage")  # bench/photos.py
    bundle, _ = fake
    names = ["clip-rt fp32 (onnxruntime)", "clip-rt default"]
    try:
        import fastembed  # noqa: F401

        names.append("fastembed fp32")
    except ImportError:
        pass
    argv = [
        "--quick",
        "--bundle",
        str(bundle),
        "--runtimes",
        *names,
        "--photos",
        "3",
        "--images",
        "2",
        "--megapixels",
        "0.05",
        "--work-dir",
        str(tmp_path / "work"),
        "--out",
        str(tmp_path / "out"),
    ]
    # A child process: the benchmark refuses the network for the rest of its process (an audit hook).
    subprocess.run([sys.executable, "-m", "bench.peers", *argv], cwd=REPO, check=True, timeout=600)
    result = json.loads((tmp_path / "out" / "peers.json").read_text())
    assert result["command"].startswith("python -m bench.peers --quick")
    assert result["network"]["attempts"] == [] and result["network"]["attempts_in_memory_children"] == []
    assert result["machine"]["isa"] is not None and result["versions"]["clip-rt"]
    assert set(result["parity"]["rows"]) == set(names)
    assert result["parity"]["rows"]["clip-rt fp32 (onnxruntime)"]["image"]["max_abs_diff"] == 0.0
    images = result["speed"]["images"]["rows"]
    assert all(r["median_images_per_s"] > 0 and r["rounds"] == 1 for r in images.values())
    assert {r["rounds"] for r in result["speed"]["text"]["rows"].values()} == {2}
    assert set(result["speed"]["one_photo"]["rows"]) == set(names)
    assert result["speed"]["text"]["rows"]["clip-rt default"]["speedup_of_clip_rt_default"]["median"] == 1.0
    memory = result["memory"]["rows"]
    assert set(memory) == set(names) and all(r["peak_rss_mb"] > 10 for r in memory.values())
    if "fastembed fp32" in names:
        assert set(images) >= {"fastembed fp32, default batch", "fastembed fp32, batch 8"}
