"""clip_rt.adapt without a model: labelled-set discovery, metrics and the advice, the probe and
its cross-validation, and the head file (round trip, damage, hostile headers)."""

from __future__ import annotations

import hashlib
import json
import os
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from clip_rt.adapt import probe
from clip_rt.adapt.dataset import read_labelled_set
from clip_rt.adapt.head import (
    MAGIC,
    CrossValidated,
    Head,
    HeadError,
    HeadModel,
    Training,
    check_compatible,
    check_head_arguments,
)
from clip_rt.adapt.metrics import compare, mcnemar_p, score, top_k_for
from clip_rt.errors import InputError


def png(path: Path, colour: tuple[int, int, int] = (200, 10, 10)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), colour).save(path)
    return path


# -- labelled sets -------------------------------------------------------------------------------
def test_folders_are_classes(tmp_path: Path) -> None:
    png(tmp_path / "cat" / "a.png")
    png(tmp_path / "cat" / "deeper" / "b.png")
    png(tmp_path / "dog" / "c.png")
    png(tmp_path / "loose.png")
    (tmp_path / "dog" / "notes.txt").write_text("not an image")
    (tmp_path / ".hidden").mkdir()
    png(tmp_path / ".hidden" / "x.png")
    (tmp_path / "empty").mkdir()
    found = read_labelled_set(tmp_path)
    assert found.labels == ["cat", "dog", "empty"]
    assert found.counts() == {"cat": 2, "dog": 1, "empty": 0}
    assert [Path(i.path).name for i in found.items] == ["a.png", "b.png", "c.png"]
    assert any("directly in" in n and "loose.png" in n for n in found.notes)
    assert any("'empty'" in n for n in found.notes)


def test_folder_errors(tmp_path: Path) -> None:
    png(tmp_path / "a" / "x.png")
    with pytest.raises(InputError, match="no class folders"):
        read_labelled_set(tmp_path / "a")  # images, but no subfolder
    with pytest.raises(InputError, match="at least two classes"):
        read_labelled_set(tmp_path)  # one class folder: "a"
    with pytest.raises(InputError, match="does not exist"):
        read_labelled_set(tmp_path / "nope")
    (tmp_path / "list.txt").write_text("x")
    with pytest.raises(InputError, match="neither a folder nor a .csv"):
        read_labelled_set(tmp_path / "list.txt")
    png(tmp_path / "b " / "y.png")
    png(tmp_path / "b" / "y.png")
    with pytest.raises(InputError, match="same label once spaces"):
        read_labelled_set(tmp_path)


def test_csv_set(tmp_path: Path) -> None:
    png(tmp_path / "imgs" / "1.png")
    png(tmp_path / "imgs" / "2, two.png")
    csv = tmp_path / "set.csv"
    csv.write_bytes(
        '\ufeffpath,label\nimgs/1.png,cat\n"imgs/2, two.png",chien 🐶\nimgs/missing.png,cat\n'
        "./imgs/1.png,cat\n".encode()
    )
    found = read_labelled_set(csv)
    assert found.labels == ["cat", "chien 🐶"]
    assert [os.path.relpath(i.path, tmp_path) for i in found.items] == [
        "imgs/1.png",
        "imgs/2, two.png",
        "imgs/missing.png",
    ]  # duplicate dropped
    csv.write_text("imgs/1.png,cat\nimgs/1.png,dog\n")
    with pytest.raises(InputError, match="labelled 'cat' on line 1 and 'dog' on line 2"):
        read_labelled_set(csv)
    csv.write_text("imgs/1.png,cat,extra\n")
    with pytest.raises(InputError, match="line 1 has 3 column"):
        read_labelled_set(csv)
    csv.write_text("imgs/1.png,  \n")
    with pytest.raises(InputError, match="line 1: label"):
        read_labelled_set(csv)
    csv.write_bytes(b"imgs/1.png,caf\xe9\n")
    with pytest.raises(InputError, match="not valid UTF-8"):
        read_labelled_set(csv)


# -- metrics and advice --------------------------------------------------------------------------
def test_score_confusion_top_k_and_pairs() -> None:
    labels = ["a", "b", "c"]
    probs = np.array([[0.7, 0.2, 0.1], [0.1, 0.6, 0.3], [0.5, 0.4, 0.1], [0.2, 0.5, 0.3], [0.1, 0.2, 0.7]])
    truth = np.array([0, 1, 1, 2, 2])
    s = score("x", labels, probs, truth)
    assert s.accuracy == pytest.approx(3 / 5) and s.top_k == 3 and s.top_k_accuracy == 1.0
    assert s.confusion.tolist() == [[1, 0, 0], [1, 1, 0], [0, 1, 1]]  # rows true, columns predicted
    per = {c.label: c for c in s.per_class()}
    assert per["a"].precision == 0.5 and per["a"].recall == 1.0 and per["b"].recall == 0.5
    assert s.confused_pairs() == [("b", "a", 1), ("c", "b", 1)]
    assert top_k_for(5) == 5 and top_k_for(6) == 5 and top_k_for(3) == 3
    j = s.to_json()
    assert j["confusion"] == s.confusion.tolist() and j["labels"] == labels and "top5_accuracy" not in j
    many = score("y", list("abcdefg"), np.eye(7)[[1, 0, 2, 3, 4, 5, 6]], np.arange(7))
    assert many.top_k == 5 and many.to_json()["top5_accuracy"] == 1.0 and many.accuracy == pytest.approx(5 / 7)


def test_mcnemar_and_advice() -> None:
    assert mcnemar_p(0, 0) == 1.0
    assert mcnemar_p(10, 0) == pytest.approx(2 / 1024)
    assert mcnemar_p(3, 2) == 1.0
    z = np.array([True] * 50 + [False] * 30)
    h = np.array([True] * 50 + [True] * 25 + [False] * 5)
    c = compare(z, h, "5-fold cross-validation of 80 images")
    assert c.verdict == "head"
    assert c.advice() == "zero-shot 0.62, head 0.94 on 5-fold cross-validation of 80 images: use the head"
    small = compare(np.array([True, False, False, True]), np.array([True, True, False, True]), "4 images")
    assert small.verdict == "unclear" and "within chance" in small.advice()
    same = compare(h, h, "80 images")
    assert same.verdict == "zero-shot" and "zero-shot is as good" in same.advice()
    worse = compare(h, z, "80 images")
    assert "zero-shot is better" in worse.advice()
    assert "blend weight 0" in compare(z, z, "x", blend=0.0).advice()


# -- the probe -----------------------------------------------------------------------------------
def blobs(n_per: int, centres: np.ndarray, spread: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = np.concatenate([c + spread * rng.standard_normal((n_per, centres.shape[1])) for c in centres])
    y = np.repeat(np.arange(len(centres)), n_per)
    return probe.normalise(x), y


def test_lbfgs_minimises_a_quadratic() -> None:
    a = np.array([[3.0, 0.5], [0.5, 1.0]])
    b = np.array([1.0, -2.0])
    x = probe.lbfgs(lambda v: (0.5 * v @ a @ v - b @ v, a @ v - b), np.zeros(2))
    assert np.allclose(x, np.linalg.solve(a, b), atol=1e-6)


def test_logistic_regression_matches_its_optimality_condition() -> None:
    x, y = blobs(20, np.eye(3, 6) * 2, 1.0, 0)
    params = probe.fit_logistic(x, y, 3, c=0.5)
    p = probe.probe_probabilities(x, params)
    onehot = np.eye(3)[y]
    grad_w = x.T @ (p - onehot) / len(y) + params[:-1] / (0.5 * len(y))
    assert np.abs(grad_w).max() < 1e-5 and np.abs((p - onehot).mean(0)).max() < 1e-5


def test_folds_are_stratified_and_seeded() -> None:
    y = np.repeat([0, 1, 2], [10, 7, 5])
    f = probe.stratified_folds(y, 5, seed=3)
    for cls in range(3):
        counts = np.bincount(f[y == cls], minlength=5)
        assert counts.max() - counts.min() <= 1
    assert np.array_equal(f, probe.stratified_folds(y, 5, seed=3))
    assert not np.array_equal(f, probe.stratified_folds(y, 5, seed=4))
    assert probe.check_trainable({"a": 10, "b": 3}, 5) == 3
    with pytest.raises(InputError, match="at least 2 readable images per class.*'b' \\(1\\)"):
        probe.check_trainable({"a": 10, "b": 1}, 5)


def test_cross_validation_never_below_zero_shot() -> None:
    centres = np.random.default_rng(1).standard_normal((4, 16))
    x, y = blobs(12, centres, 0.8, 2)
    # A zero-shot classifier that is already perfect, and a useless one.
    perfect = np.eye(4)[y] * 0.9 + 0.025
    cv = probe.cross_validate(x, y, perfect, 4, folds=4, seed=0)
    assert cv.chosen.accuracy >= cv.zero_shot_accuracy == 1.0
    useless = np.full((len(y), 4), 0.25)
    cv = probe.cross_validate(x, y, useless, 4, folds=4, seed=0)
    assert cv.chosen.accuracy >= 0.9 and cv.chosen.blend > 0
    assert len(cv.candidates) == len(probe.C_GRID) * len(probe.BLEND_GRID)
    again = probe.cross_validate(x, y, useless, 4, folds=4, seed=0)
    assert (again.chosen, again.best_probe) == (cv.chosen, cv.best_probe)  # deterministic


def test_fit_final_folds_the_scaling_into_the_weights() -> None:
    centres = np.random.default_rng(5).standard_normal((3, 8))
    x, y = blobs(10, centres, 0.5, 6)
    fitted = probe.fit_final(x, y, 3, c=1.0)
    scaling = probe.Scaling.fit(x)
    params = probe.fit_logistic(scaling.apply(x), y, 3, 1.0)
    want = probe.probe_probabilities(scaling.apply(x), params)
    got = probe.softmax(x @ fitted.weight.astype(np.float64) + fitted.bias)
    assert np.allclose(got, want, atol=1e-4)


# -- the head file -------------------------------------------------------------------------------
def make_head(
    labels: tuple[str, ...] = ("cat", "dog", "chien 🐶"), dim: int = 6, blend: float = 0.5, precision: str = "fp32"
) -> Head:
    rng = np.random.default_rng(0)
    c = len(labels)
    return Head(
        labels=labels,
        weight=rng.standard_normal((dim, c)).astype(np.float32),
        bias=rng.standard_normal(c).astype(np.float32),
        zero_shot=probe.normalise(rng.standard_normal((c, dim))).astype(np.float32),
        logit_scale=100.0,
        blend=blend,
        templates=("a photo of a {}.",),
        model=HeadModel("fake", "ab" * 16, precision, dim),
        training=Training(3 * c, dict.fromkeys(labels, 3), 0, 3, 0, 1.0, [1.0], [0.0, 0.5, 1.0]),
        cv=CrossValidated(0.5, 0.9, 0.95, 3 * c, 3, 4, 0),
        label_prompts={"cat": ("a cat",)},
    )


def test_head_round_trip(tmp_path: Path) -> None:
    head = make_head()
    path = head.save(tmp_path / "h.head")
    back = Head.load(path)
    assert back.labels == head.labels and back.blend == 0.5 and back.label_prompts == {"cat": ("a cat",)}
    assert back.model == head.model and back.training == head.training and back.cv == head.cv
    x = probe.normalise(np.random.default_rng(1).standard_normal((5, 6))).astype(np.float32)
    assert np.array_equal(back.probabilities(x), head.probabilities(x))
    assert np.allclose(head.probabilities(x).sum(axis=1), 1.0, atol=1e-6)
    want = 0.5 * head.zero_shot_probabilities(x) + 0.5 * head.probe_probabilities(x)
    assert np.allclose(head.probabilities(x), want, atol=1e-6)
    assert back.digest == head.digest and Path(path).read_bytes() == head.to_bytes()
    out = head.classify_embeddings(x, top_k=2)
    assert len(out) == 5 and len(out[0].top_k) == 2 and out[0].label in head.labels
    with pytest.raises(InputError, match=r"shape \(N, 6\)"):
        head.probabilities(np.zeros((2, 7), np.float32))


def test_damaged_head_files(tmp_path: Path) -> None:
    data = make_head().to_bytes()
    path = tmp_path / "h.head"
    cases = {
        "flipped": data[:200] + bytes([data[200] ^ 1]) + data[201:],
        "truncated": data[: len(data) // 2],
        "empty": b"",
        "text": b"hello, I am a text file\n",
        "pickle": b"\x80\x04\x95" + data[3:],
        "tail cut": data[:-1],
    }
    for name, blob in cases.items():
        path.write_bytes(blob)
        with pytest.raises(HeadError) as err:
            Head.load(path)
        assert str(path) in str(err.value), name
        assert "damaged" in str(err.value) or "not a clip-rt head" in str(err.value), (name, err.value)
    with pytest.raises(HeadError, match="does not exist"):
        Head.load(tmp_path / "nope.head")
    with pytest.raises(HeadError, match="is a folder"):
        Head.load(tmp_path)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(HeadError, match="not a regular file"):
        Head.load(fifo)  # refused, not read (reading would wait for a writer forever)


def forge(header: dict[str, Any], data: bytes) -> bytes:
    """A file with a valid checksum around *header*: what a hostile writer can make."""
    raw = json.dumps(header).encode()
    body = MAGIC + struct.pack("<Q", len(raw)) + raw + data
    return body + hashlib.sha256(body).digest()


def split(blob: bytes) -> tuple[dict[str, Any], bytes]:
    (n,) = struct.unpack("<Q", blob[16:24])
    return json.loads(blob[24 : 24 + n]), blob[24 + n : -32]


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda h, d: (dict(h, format_version=7), d), "newer clip-rt"),
        (lambda h, d: (dict(h, labels=["cat", "cat", "x"]), d), "duplicate labels"),
        (lambda h, d: (dict(h, labels=h["labels"][:2]), d), "expected \\[6, 2\\]"),
        (lambda h, d: ({**h, "model": {**h["model"], "embed_dim": 65536}}, d), "expected \\[65536, 3\\]"),
        (
            lambda h, d: (
                {**h, "tensors": {**h["tensors"], "weight": {"dtype": "float32", "shape": [10**9, 3], "offset": 0}}},
                d,
            ),
            "tensors.weight.shape",
        ),
        (
            lambda h, d: ({**h, "tensors": {**h["tensors"], "bias": {**h["tensors"]["bias"], "offset": 4}}}, d),
            "starts at byte 4",
        ),
        (lambda h, d: (h, d + b"\0\0\0\0"), "bytes after the last tensor"),
        (lambda h, d: (h, d[:-4]), "runs past the end"),
        (lambda h, d: (h, struct.pack("<f", float("nan")) + d[4:]), "not finite"),
        (lambda h, d: (dict(h, blend=1.5), d), "blend: expected a finite number from 0 to 1"),
        (lambda h, d: ({**h, "zero_shot": {**h["zero_shot"], "label_prompts": {"bird": ["x"]}}}, d), "does not have"),
        (lambda h, d: ({k: v for k, v in h.items() if k != "model"}, d), "model: required field"),
        (lambda h, d: ({**h, "model": {**h["model"], "fingerprint": "../../etc"}}, d), "hexadecimal"),
        (lambda h, d: (["not", "an", "object"], d), "expected an object"),
    ],
)
def test_hostile_headers_are_refused(tmp_path: Path, change: Any, message: str) -> None:
    header, data = split(make_head().to_bytes())
    bad_header, bad_data = change(header, data)
    with pytest.raises(HeadError, match=message):
        Head.from_bytes(forge(bad_header, bad_data), "h")
    # the unchanged file reads back fine
    assert Head.from_bytes(forge(header, data), "h").labels == make_head().labels


def test_duplicate_keys_and_huge_header_length() -> None:
    header, data = split(make_head().to_bytes())
    raw = json.dumps(header)[:-1] + ', "blend": 0.1}'
    body = MAGIC + struct.pack("<Q", len(raw)) + raw.encode() + data
    with pytest.raises(HeadError, match="not valid JSON.*twice"):
        Head.from_bytes(body + hashlib.sha256(body).digest(), "h")
    body = MAGIC + struct.pack("<Q", 2**62) + b"{}"
    with pytest.raises(HeadError, match="does not fit"):
        Head.from_bytes(body + hashlib.sha256(body).digest(), "h")


def test_compatibility_rules() -> None:
    head = make_head(precision="int8")
    with pytest.raises(HeadError, match="fitted on bundle 'fake'.*not on 'other'"):
        check_compatible(head, fingerprint="cd" * 16, precision="int8", bundle="other")
    assert check_compatible(head, fingerprint="ab" * 16, precision="int8", bundle="fake") is None
    warning = check_compatible(head, fingerprint="ab" * 16, precision="fp32", bundle="fake")
    assert warning and "int8" in warning and "eval --head" in warning
    check_head_arguments(head, None, None)
    check_head_arguments(head, ["cat", "dog", "chien 🐶"], None)
    with pytest.raises(InputError, match="differ from the head's"):
        check_head_arguments(head, ["dog", "cat", "chien 🐶"], None)
    with pytest.raises(InputError, match="own prompts"):
        check_head_arguments(head, {"cat": ["x"], "dog": None, "chien 🐶": None}, None)
    with pytest.raises(InputError, match="templates cannot be given"):
        check_head_arguments(head, None, ["a {}"])


def test_head_validates_what_the_api_builds() -> None:
    with pytest.raises(HeadError, match="weight: expected shape"):
        Head(
            labels=("a", "b"),
            weight=np.zeros((3, 3), np.float32),
            bias=np.zeros(2, np.float32),
            zero_shot=np.zeros((2, 3), np.float32),
            logit_scale=1.0,
            blend=1.0,
            templates=(),
            model=HeadModel("m", "ab" * 16, "fp32", 3),
            training=make_head().training,
            cv=make_head().cv,
        )


def test_probe_agrees_with_scikit_learn() -> None:
    """The same loss as scikit-learn's LogisticRegression (C * sum of cross-entropy + ||W||^2 / 2,
    bias not penalised), so the same probabilities; scikit-learn is only the reference here."""
    linear_model = pytest.importorskip("sklearn.linear_model")
    centres = np.random.default_rng(7).standard_normal((3, 10))
    x, y = blobs(15, centres, 1.2, 8)
    for c in (0.01, 1.0, 100.0):
        ours = probe.probe_probabilities(x, probe.fit_logistic(x, y, 3, c))
        ref = linear_model.LogisticRegression(C=c, tol=1e-10, max_iter=10_000).fit(x, y).predict_proba(x)
        assert np.abs(ours - ref).max() < 1e-4, c
