"""Zero-shot maths against a hand-written reference, and label/template validation."""

from __future__ import annotations

import hashlib
import math

import numpy as np
import pytest

from clip_rt.errors import InputError
from clip_rt.zeroshot import (
    Classification,
    Label,
    ZeroShotClassifier,
    check_templates,
    class_embeddings,
    parse_labels,
    softmax,
)

DIM = 6


def raw_vec(text: str) -> np.ndarray:
    seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")
    return np.random.default_rng(seed).standard_normal(DIM)


def fake_encode_text(texts: list[str]) -> np.ndarray:
    # Deliberately *not* normalised: the ensemble must normalise each prompt itself.
    return np.stack([3.0 * raw_vec(t) for t in texts]).astype(np.float32)


def reference_probs(image: list[float], labels: list[str], templates: list[str], scale: float) -> list[float]:
    """CLIP's recipe written out longhand in pure Python."""

    def unit(v: list[float]) -> list[float]:
        n = math.sqrt(sum(x * x for x in v))
        return [x / n for x in v]

    classes = []
    for lab in labels:
        prompts = [unit(list(raw_vec(t.replace("{}", lab)))) for t in templates]
        mean = [sum(p[d] for p in prompts) / len(prompts) for d in range(DIM)]
        classes.append(unit(mean))
    img = unit(image)
    logits = [scale * sum(a * b for a, b in zip(img, c)) for c in classes]
    m = max(logits)
    exps = [math.exp(z - m) for z in logits]
    return [e / sum(exps) for e in exps]


def test_ensemble_and_softmax_match_the_reference() -> None:
    labels = ["cat", "dog", "school bus", "tree"]
    templates = ["a photo of a {}.", "a blurry photo of a {}.", "a sketch of the {}."]
    parsed = parse_labels(labels)
    clf = ZeroShotClassifier(parsed, class_embeddings(parsed, templates, fake_encode_text), logit_scale=100.0)
    rng = np.random.default_rng(1)
    images = rng.standard_normal((5, DIM)) * 0.1 + class_embeddings(parse_labels(["dog"]), templates, fake_encode_text)
    got = clf.probabilities(images)
    for row, image in zip(got, images):
        np.testing.assert_allclose(row, reference_probs(list(image), labels, templates, 100.0), rtol=1e-5, atol=1e-6)
    results = clf.classify_embeddings(images, top_k=2)
    assert all(r.label == "dog" for r in results)  # the images were built near "dog"
    assert results[0].score == pytest.approx(float(got[0, 1]))
    assert sum(results[0].scores.values()) == pytest.approx(1.0, abs=1e-5)


def test_logit_bias_is_in_the_logits_and_cancels_in_softmax() -> None:
    parsed = parse_labels(["a", "b", "c"])
    emb = class_embeddings(parsed, ["{}"], fake_encode_text)
    plain = ZeroShotClassifier(parsed, emb, 10.0)
    biased = ZeroShotClassifier(parsed, emb, 10.0, logit_bias=-7.5)
    img = raw_vec("img")[None, :]
    np.testing.assert_allclose(biased.logits(img), plain.logits(img) - 7.5, rtol=1e-6)
    np.testing.assert_allclose(biased.probabilities(img), plain.probabilities(img), rtol=1e-6)


def test_top_k_order_and_ties() -> None:
    parsed = parse_labels(["first", "second", "third"])
    emb = np.array([[1, 0], [1, 0], [0, 1]], dtype=np.float32)  # first and second tie
    clf = ZeroShotClassifier(parsed, emb, logit_scale=1.0)
    (res,) = clf.classify_embeddings(np.array([[1.0, 0.0]]), top_k=5)
    assert [name for name, _ in res.top_k] == ["first", "second", "third"]  # k capped at 3
    e, one = math.e, 1.0
    assert res.top_k[0][1] == pytest.approx(e / (2 * e + one))
    assert res.label == "first"
    (res1,) = clf.classify_embeddings(np.array([0.0, 2.0]), top_k=1)  # a 1-D embedding is one image
    assert res1.top_k == [("third", res1.score)]
    for bad in (0, -1, 1.5, True, "2"):
        with pytest.raises(InputError, match="top_k"):
            clf.classify_embeddings(np.array([[1.0, 0.0]]), top_k=bad)  # type: ignore[arg-type]
    with pytest.raises(InputError, match=r"shape \(N, 2\)"):
        clf.logits(np.zeros((1, 3)))


def test_classification_to_dict_is_plain_data() -> None:
    c = Classification(label="cat", score=0.9, scores={"cat": 0.9, "dog": 0.1}, top_k=[("cat", 0.9)])
    assert c.to_dict() == {"label": "cat", "score": 0.9, "scores": {"cat": 0.9, "dog": 0.1}, "top_k": [["cat", 0.9]]}


def test_softmax_is_stable_for_large_logits() -> None:
    p = softmax(np.array([[1000.0, 999.0, -1000.0]]))
    assert np.isfinite(p).all() and p[0, 0] == pytest.approx(1 / (1 + math.exp(-1)))


# -- labels ------------------------------------------------------------------------------
def test_label_forms() -> None:
    assert parse_labels(["cat", " dog "]) == [Label("cat"), Label("dog")]
    assert parse_labels("cat") == [Label("cat")]
    assert parse_labels({"cat": ["a kitty", "a cat"], "dog": None, "bird": "a bird in flight"}) == [
        Label("cat", ("a kitty", "a cat")),
        Label("dog"),
        Label("bird", ("a bird in flight",)),
    ]
    assert parse_labels([Label("cat", ("meow",)), "dog"]) == [Label("cat", ("meow",)), Label("dog")]


def test_own_prompts_replace_the_templates() -> None:
    parsed = parse_labels({"cat": ["a kitty"], "dog": None})
    assert parsed[0].texts(["a photo of a {}."]) == ["a kitty"]
    assert parsed[1].texts(["a photo of a {}.", "{} and {}"]) == ["a photo of a dog.", "dog and dog"]
    emb = class_embeddings(parsed, ["a photo of a {}."], fake_encode_text)
    want = raw_vec("a kitty") / np.linalg.norm(raw_vec("a kitty"))
    np.testing.assert_allclose(emb[0], want, rtol=1e-5)


@pytest.mark.parametrize(
    "labels, message",
    [
        ([], "no labels"),
        ({}, "no labels"),
        (["cat", "dog", "cat", "dog", "bird"], "duplicate labels: 'cat', 'dog'"),
        (["cat", " cat"], "duplicate labels: 'cat'"),
        (["cat", "  "], "blank label"),
        ([""], "blank label"),
        (["cat", 3], "must be a string"),
        ({"cat": [""]}, "prompts must be non-empty"),
        (42, "labels must be"),
    ],
)
def test_bad_labels(labels, message) -> None:
    with pytest.raises(InputError, match=message):
        parse_labels(labels)


def test_templates_validation() -> None:
    assert check_templates("a {}") == ("a {}",)
    with pytest.raises(InputError, match="'a photo of a cat.' has no"):
        check_templates(["a photo of a {}.", "a photo of a cat."])
    with pytest.raises(InputError, match="no prompt templates"):
        check_templates([])
