"""Sigmoid scoring (SigLIP-style bundles): per-label probabilities, and every front end says
which kind of score it shows. Torch-free (the fake bundle); open_clip's own formula is
checked against real exports in tests/test_model_families.py."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

import clip_rt
from clip_rt.bundle.manifest import FORMAT_VERSION, read_manifest
from clip_rt.cli import main
from clip_rt.zeroshot import Label, ZeroShotClassifier, scores_from_logits, sigmoid, softmax
from clip_rt_fixtures.fake_bundle import build_fake_bundle

SCALE, BIAS = 10.0, -3.0


@pytest.fixture()
def sigmoid_bundle(tmp_path: Path) -> Path:
    return build_fake_bundle(
        tmp_path / "fake-siglip", name="fake-siglip", logit_scale=SCALE, logit_bias=BIAS, scoring="sigmoid"
    )


@pytest.fixture()
def photo(tmp_path: Path) -> Path:
    rng = np.random.default_rng(3)
    path = tmp_path / "photo.png"
    Image.fromarray(rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)).save(path)
    return path


def test_sigmoid_is_the_logistic_function_without_overflow() -> None:
    z = np.array([-1000.0, -20.0, -1.0, 0.0, 1.0, 20.0, 1000.0])
    assert np.allclose(sigmoid(z), 1.0 / (1.0 + np.exp(-np.clip(z, -700, 700))), atol=1e-7)
    assert np.all(np.isfinite(sigmoid(z)))
    with pytest.raises(clip_rt.InputError, match="scoring must be one of"):
        scores_from_logits(z, "tanh")


def test_classifier_scores_each_label_with_its_own_sigmoid() -> None:
    rng = np.random.default_rng(0)
    classes = rng.normal(size=(4, 8)).astype(np.float32)
    images = rng.normal(size=(3, 8)).astype(np.float32)
    labels = [Label(n) for n in "abcd"]
    clf = ZeroShotClassifier(labels, classes, SCALE, BIAS, scoring="sigmoid")
    unit = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)  # noqa: E731
    want = 1.0 / (1.0 + np.exp(-(SCALE * unit(images) @ unit(classes).T + BIAS)))
    assert np.allclose(clf.probabilities(images), want, atol=1e-6)
    assert not np.allclose(clf.probabilities(images).sum(axis=1), 1.0)  # not a distribution over labels
    soft = ZeroShotClassifier(labels, classes, SCALE, BIAS)  # default: CLIP's softmax, bias irrelevant
    assert np.allclose(soft.probabilities(images), softmax(SCALE * unit(images) @ unit(classes).T), atol=1e-6)
    result = clf.classify_embeddings(images, top_k=2)[0]
    assert result.score == pytest.approx(max(result.scores.values()))


def test_manifest_records_scoring_and_needs_format_2(sigmoid_bundle: Path, tmp_path: Path) -> None:
    m = read_manifest(sigmoid_bundle)
    assert m.scoring == "sigmoid" and m.format_version == 2 == FORMAT_VERSION
    clip = read_manifest(build_fake_bundle(tmp_path / "fake-clip"))
    assert clip.scoring == "softmax" and clip.format_version == 1  # still readable by older runtimes
    # A manifest written before the field existed is a CLIP (softmax) bundle.
    data = json.loads((tmp_path / "fake-clip" / "manifest.json").read_text())
    data.pop("scoring")
    (tmp_path / "fake-clip" / "manifest.json").write_text(json.dumps(data))
    assert read_manifest(tmp_path / "fake-clip").scoring == "softmax"
    data["scoring"] = "tanh"
    (tmp_path / "fake-clip" / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(clip_rt.BundleError, match="scoring"):
        read_manifest(tmp_path / "fake-clip")


def test_api_similarity_and_classify_use_sigmoid(sigmoid_bundle: Path, photo: Path) -> None:
    model = clip_rt.load(sigmoid_bundle, cache=False)
    assert model.scoring == "sigmoid"
    texts = ["a photo of a cat", "dog", "a red car"]
    img = model.encode_image([photo])
    txt = model.encode_text(texts)
    want = 1.0 / (1.0 + np.exp(-(SCALE * img @ txt.T + BIAS)))[0]
    assert np.allclose(model.similarity(photo, texts), want, atol=1e-6)
    res = model.classify([photo], labels=["cat", "dog", "car"], templates=["a photo of a {}"])[0]
    cls = model.encode_text(["a photo of a cat", "a photo of a dog", "a photo of a car"])
    want = 1.0 / (1.0 + np.exp(-(SCALE * img @ cls.T + BIAS)))[0]
    assert np.allclose([res.scores[k] for k in ("cat", "dog", "car")], want, atol=1e-6)


def test_cli_says_which_scores_it_shows(sigmoid_bundle: Path, photo: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    r = runner.invoke(
        main, ["similarity", str(photo), "cat", "dog", "--model", str(sigmoid_bundle), "--format", "json"]
    )
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["scoring"] == "sigmoid"
    r = runner.invoke(main, ["similarity", str(photo), "cat", "dog", "--model", str(sigmoid_bundle)])
    assert "scores: sigmoid per label" in r.stderr
    results = tmp_path / "out.jsonl"
    r = runner.invoke(
        main, ["classify", str(photo), "-l", "cat,dog", "--model", str(sigmoid_bundle), "-o", str(results)]
    )
    assert r.exit_code == 0, r.output
    assert "scores: sigmoid per label" in r.stderr
    from clip_rt.outputs.record_output import sidecar_path

    assert json.loads(Path(sidecar_path(str(results))).read_text())["scoring"] == "sigmoid"


def test_report_summary_names_the_scoring(sigmoid_bundle: Path, photo: Path, tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    report = tmp_path / "report"
    r = CliRunner().invoke(
        main,
        [
            "classify",
            str(photo),
            "-l",
            "cat,dog",
            "--model",
            str(sigmoid_bundle),
            "--report",
            str(report),
            "-o",
            str(tmp_path / "r.csv"),
        ],
    )
    assert r.exit_code == 0, r.output
    summary = json.loads((report / "summary.json").read_text(encoding="utf-8"))
    assert summary["run"]["scoring"] == "sigmoid"


def test_server_says_which_scores_it_shows(sigmoid_bundle: Path, tmp_path: Path) -> None:
    pytest.importorskip("starlette")
    pytest.importorskip("uvicorn")
    from clip_rt_fixtures.server import Server, call, data_url, png_bytes

    model = clip_rt.load(sigmoid_bundle, cache=False)
    img = png_bytes(seed=2)
    texts = ["a photo of a cat", "a red car"]
    with Server([str(sigmoid_bundle)], tmp_path / "home-server") as server:
        status, _, out = call(server, "POST", "/similarity", {"image": data_url(img), "texts": texts})
        assert status == 200 and out["scoring"] == "sigmoid"
        got = np.asarray([r["probability"] for r in out["results"]], dtype=np.float32)
        assert np.array_equal(got, model.similarity(img, texts))
        status, _, out = call(server, "POST", "/classify", {"images": [data_url(img)], "labels": ["cat", "car"]})
        assert status == 200 and out["scoring"] == "sigmoid"
        want = model.classify([img], labels=["cat", "car"])[0]
        assert out["results"][0]["scores"] == want.scores
        status, _, out = call(server, "GET", "/v1/models")
        assert status == 200 and out["data"][0]["scoring"] == "sigmoid"
