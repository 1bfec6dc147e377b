"""`clip-rt fit`, `clip-rt eval` and `--head` end to end on the torch-free fake bundle (real
manifest, ONNX graphs and runtime), with generated labelled sets (colours, gradients) and
crops of scikit-image's photographs. The fake bundle's text tower is random, so zero-shot is
near chance there: what these tests show is the head learning from the images."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

import clip_rt  # noqa: E402
from clip_rt import adapt  # noqa: E402
from clip_rt.adapt.head import Head, HeadError  # noqa: E402
from clip_rt.cli import main  # noqa: E402
from clip_rt.errors import InputError  # noqa: E402
from clip_rt_fixtures.fake_bundle import build_fake_bundle  # noqa: E402
from clip_rt_fixtures.labelled_sets import FOUR, generated_set, photo_set  # noqa: E402


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_fake_bundle(tmp_path_factory.mktemp("adapt") / "fake", embed_dim=32)


@pytest.fixture(scope="module")
def other_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Another bundle (other weights, so another fingerprint), same shapes."""
    return build_fake_bundle(tmp_path_factory.mktemp("adapt-other") / "other", embed_dim=32, seed=1)


@pytest.fixture(scope="module")
def sets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("sets")
    return {"train": generated_set(root / "train", 12, seed=1), "test": generated_set(root / "test", 10, seed=2)}


@pytest.fixture(scope="module")
def head_file(bundle: Path, sets: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("head") / "shapes.head"
    r = invoke(["fit", str(sets["train"]), "-m", str(bundle), "-o", str(out)])
    assert r.exit_code == 0, r.output
    return out


def invoke(args: list[str]) -> Any:
    return CliRunner().invoke(main, args)


# -- the check: a held-out split of a generated 4-class set ----------------------------------
def test_head_on_held_out_generated_set(bundle: Path, sets: dict[str, Path]) -> None:
    model = clip_rt.load(bundle, cache=False)
    fitted = adapt.fit(model, sets["train"], seed=0)
    head = fitted.head
    assert head.labels == tuple(sorted(FOUR)) and head.training.per_class == dict.fromkeys(sorted(FOUR), 12)
    assert head.training.folds == 5 and head.cv.images == 48 and not fitted.failed
    assert head.cv.head_accuracy >= head.cv.zero_shot_accuracy
    result = adapt.evaluate(model, sets["test"], head=head)
    by_name = {r.name: r for r in result.runs}
    held_out_head, held_out_zero_shot = by_name["head"].accuracy, by_name["zero-shot:head"].accuracy
    assert held_out_head >= 0.9 and held_out_head >= held_out_zero_shot
    assert result.primary.images == 40 and result.comparison is not None
    assert result.advice().startswith(f"zero-shot {held_out_zero_shot:.2f}, head {held_out_head:.2f} on 40 images")


def test_fit_is_deterministic_and_the_api_applies_the_head(bundle: Path, sets: dict[str, Path], tmp_path: Path) -> None:
    model = clip_rt.load(bundle, cache=False)
    a = adapt.fit(model, sets["train"], seed=3).head
    b = adapt.fit(model, sets["train"], seed=3).head
    assert a.to_bytes() == b.to_bytes()
    path = a.save(tmp_path / "a.head")
    photos = sorted((sets["test"] / "red").iterdir())[:3] + sorted((sets["test"] / "vertical gradient").iterdir())[:2]
    want = a.probabilities(model.encode_image(photos))
    by_path = model.classify(photos, head=path)
    by_object = list(model.iter_classify(iter(photos), head=a, top_k=2))
    assert [c.label for c in by_path] == [a.labels[i] for i in want.argmax(1)]
    assert [c.label for c in by_path] == ["red"] * 3 + ["vertical gradient"] * 2
    assert [i.label for i in by_object] == [c.label for c in by_path] and all(i.ok for i in by_object)
    assert np.allclose([c.score for c in by_path], want.max(1), atol=1e-6)
    assert model.classify(photos, list(a.labels), head=a)[0].label == "red"  # the same labels: accepted
    with pytest.raises(InputError, match="differ from the head's"):
        model.classify(photos, ["red", "blue"], head=a)
    with pytest.raises(InputError, match="templates cannot be given"):
        model.classify(photos, templates=["a {}"], head=a)
    with pytest.raises(InputError, match="no labels given"):
        model.classify(photos)


def test_photos_from_scikit_image(bundle: Path, tmp_path: Path) -> None:
    pytest.importorskip("skimage")
    train, test = photo_set(tmp_path / "train", 12, seed=1), photo_set(tmp_path / "test", 10, seed=2)
    model = clip_rt.load(bundle, cache=False)
    head = adapt.fit(model, train).head
    result = adapt.evaluate(model, test, head=head, template_sets=adapt.builtin_sets(["simple"]))
    by_name = {r.name: r for r in result.runs}
    assert by_name["head"].accuracy >= 0.75 and by_name["head"].accuracy >= by_name["zero-shot:simple"].accuracy
    assert by_name["zero-shot:simple"].accuracy == by_name["zero-shot:head"].accuracy  # the same templates


def test_foreign_or_damaged_head_is_refused(
    bundle: Path, other_bundle: Path, head_file: Path, sets: dict[str, Path], tmp_path: Path
) -> None:
    other = clip_rt.load(other_bundle, cache=False)
    with pytest.raises(HeadError, match="fitted on bundle 'fake-clip'"):
        other.classify(sets["test"] / "red", head=head_file)
    with pytest.raises(HeadError, match="fitted on bundle"):
        adapt.evaluate(other, sets["test"], head=head_file)
    out = tmp_path / "r.jsonl"
    out.write_text("the user's earlier results\n")
    damaged = tmp_path / "damaged.head"
    damaged.write_bytes(head_file.read_bytes()[:-10])
    for head, model in ((head_file, other_bundle), (damaged, bundle)):
        r = invoke(["classify", str(sets["test"]), "-m", str(model), "--head", str(head), "-o", str(out)])
        assert r.exit_code == 1, r.output
        assert "fitted on bundle" in r.output or "damaged" in r.output
        assert out.read_text() == "the user's earlier results\n"  # nothing written, nothing truncated
    r = invoke(["eval", str(sets["test"]), "-m", str(other_bundle), "--head", str(head_file)])
    assert r.exit_code == 1 and "fitted on bundle" in r.output


# -- the command line ------------------------------------------------------------------------------------
def test_cli_fit(bundle: Path, sets: dict[str, Path], head_file: Path, tmp_path: Path) -> None:
    r = invoke(
        [
            "fit",
            str(sets["train"]),
            "-m",
            str(bundle),
            "-o",
            str(tmp_path / "again.head"),
            "--folds",
            "4",
            "--seed",
            "7",
            "--templates",
            "imagenet",
            "--no-blend",
        ]
    )
    assert r.exit_code == 0, r.output
    head = Head.load(tmp_path / "again.head")
    assert head.training.folds == 4 and head.training.seed == 7 and head.blend == 1.0 and len(head.templates) == 80
    lines = r.stdout.splitlines()
    assert "4-fold cross-validation of 48 images" in lines[-1] and "use the head" in lines[-1]
    assert "48 processed, 0 failed" in r.stderr
    # Usage errors: exit 2; a class with one image: exit 1 before the model loads.
    assert (
        invoke(["fit", str(sets["train"]), "-m", str(bundle), "-o", str(tmp_path / "x"), "--folds", "1"]).exit_code == 2
    )
    assert invoke(["fit", str(sets["train"]), "-m", str(bundle)]).exit_code == 2  # no -o
    tiny = tmp_path / "tiny"
    shutil.copytree(sets["train"], tiny)
    for p in sorted((tiny / "red").iterdir())[1:]:
        p.unlink()
    r = invoke(["fit", str(tiny), "-m", "no-such-model", "-o", str(tmp_path / "t.head")])
    assert r.exit_code == 1 and "'red' (1)" in r.output and not (tmp_path / "t.head").exists()


def test_cli_fit_with_unreadable_images(bundle: Path, sets: dict[str, Path], tmp_path: Path) -> None:
    data = tmp_path / "data"
    shutil.copytree(sets["train"], data)
    (data / "red" / "broken.png").write_bytes(b"not a png")
    (data / "blue" / "empty.jpg").write_bytes(b"")
    out = tmp_path / "h.head"
    r = invoke(["fit", str(data), "-m", str(bundle), "-o", str(out)])
    assert r.exit_code == 1, r.output
    assert "50 processed, 2 failed" in r.stderr and "broken.png" in r.stderr and "empty.jpg" in r.stderr
    head = Head.load(out)  # fitted and written without them
    assert head.training.images == 48 and head.training.failed == 2
    assert invoke(["fit", str(data), "-m", str(bundle), "-o", str(out), "--skip-errors"]).exit_code == 0


def test_cli_eval_json_templates_and_errors(
    bundle: Path, sets: dict[str, Path], head_file: Path, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    shutil.copytree(sets["test"], data)
    (data / "red" / "broken.png").write_bytes(b"not a png")
    js = tmp_path / "eval.json"
    r = invoke(
        [
            "eval",
            str(data),
            "-m",
            str(bundle),
            "--head",
            str(head_file),
            "--templates",
            "simple,imagenet",
            "--template",
            "a {} picture",
            "--template",
            "{}",
            "--json",
            str(js),
        ]
    )
    assert r.exit_code == 1, r.output  # broken.png
    assert "41 processed, 1 failed" in r.stderr and "broken.png" in r.stderr
    out = json.loads(js.read_text())
    assert [run["name"] for run in out["runs"]] == [
        "head",
        "zero-shot:head",
        "zero-shot:simple",
        "zero-shot:imagenet",
        "zero-shot:custom",
    ]
    assert out["labels"] == sorted(FOUR) and out["run"] == "head" and out["images"] == 40
    confusion = np.array(out["confusion"])
    assert confusion.shape == (4, 4) and confusion.sum() == 40 and (confusion.sum(axis=1) == 10).all()  # rows true
    assert out["accuracy"] == pytest.approx(np.trace(confusion) / 40) and out["accuracy"] >= 0.9
    assert out["top_k"] == 4 and out["failed"][0]["path"].endswith("broken.png")
    assert len(out["predictions"]) == 40 and set(out["predictions"][0]["predicted"]) == {r["name"] for r in out["runs"]}
    assert out["comparison"]["verdict"] == "head" and out["advice"].endswith("use the head")
    text = r.stdout
    assert "top-1   top-4" in text and "head: per class" in text and "precision  recall" in text
    assert text.splitlines()[-1] == out["advice"]
    # Without a head: the simple set; the advice says how to find out about a head.
    r = invoke(["eval", str(sets["test"]), "-m", str(bundle)])
    assert r.exit_code == 0 and "zero-shot:simple" in r.stdout and "clip-rt fit" in r.stdout.splitlines()[-1]
    # Usage errors.
    assert invoke(["eval", str(sets["test"]), "-m", str(bundle), "--templates", "nope"]).exit_code == 2
    assert invoke(["eval", str(sets["test"]), "-m", str(bundle), "--template", "no placeholder"]).exit_code == 2
    assert invoke(["eval", str(tmp_path / "missing"), "-m", str(bundle)]).exit_code == 2
    # A class the head does not know.
    extra = tmp_path / "extra"
    generated_set(extra, 3, seed=5, classes=("red", "green"))
    r = invoke(["eval", str(extra), "-m", str(bundle), "--head", str(head_file)])
    assert r.exit_code == 1 and "'green'" in r.output and "not among the head's labels" in r.output


def test_cli_eval_csv_and_report(bundle: Path, sets: dict[str, Path], tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    rows = ["path,label"] + [f"{p},{c}" for c in FOUR for p in sorted((sets["test"] / c).iterdir())]
    csv = tmp_path / "set.csv"
    csv.write_text("\n".join(rows) + "\n")
    report = tmp_path / "report"
    r = invoke(
        [
            "eval",
            str(csv),
            "-m",
            str(bundle),
            "--templates",
            "simple",
            "--templates",
            "imagenet",
            "--report",
            str(report),
        ]
    )
    assert r.exit_code == 0, r.output
    summary = json.loads((report / "summary.json").read_text())
    assert summary["images"] == 40 and summary["labels"] == list(FOUR)  # the CSV's order
    for name in summary["charts"]:
        assert (report / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    assert set(summary["charts"]) >= {
        "accuracy.png",
        "confusion_zero-shot_simple.png",
        "confusion_zero-shot_imagenet.png",
        "per_class_recall.png",
        "per_class_precision.png",
    }
    page = (report / "report.html").read_text(encoding="utf-8")
    assert 'id="matrix-1"' in page and 'id="matrix-2"' not in page and "true class" in page  # a table per run
    assert len(list((report / "thumbnails").glob("*.jpg"))) == 40
    (report / "accuracy.png").unlink()
    (report / "accuracy.png").mkdir()  # a folder where a chart goes: refused before any image is read
    r = invoke(["eval", str(csv), "-m", str(bundle), "--report", str(report)])
    assert r.exit_code == 1 and "accuracy.png" in r.output and "processed" not in r.output


def test_cli_classify_with_head(bundle: Path, sets: dict[str, Path], head_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "r.jsonl"
    r = invoke(
        [
            "classify",
            str(sets["test"] / "blue"),
            "-m",
            str(bundle),
            "--head",
            str(head_file),
            "-o",
            str(out),
            "--top-k",
            "2",
        ]
    )
    assert r.exit_code == 0, r.output
    records = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(records) == 10 and sum(x["label"] == "blue" for x in records) >= 9
    assert all(set(x["scores"]) == set(FOUR) and abs(sum(x["scores"].values()) - 1) < 1e-4 for x in records)
    side = json.loads(Path(str(out) + ".clip-rt.json").read_text())
    assert side["head"] == Head.load(head_file).digest and side["labels"] == sorted(FOUR)
    # Resuming with another head, or with none, is refused: the output holds this head's results.
    other = tmp_path / "other.head"
    assert invoke(["fit", str(sets["train"]), "-m", str(bundle), "-o", str(other), "--seed", "9"]).exit_code == 0
    for extra in (["--head", str(other)], ["-l", ",".join(sorted(FOUR))]):
        r = invoke(["classify", str(sets["test"] / "blue"), "-m", str(bundle), "-o", str(out), "--resume", *extra])
        assert r.exit_code == 1 and "head" in r.output, r.output
    # Labels given with a head must be exactly its labels; templates cannot be given.
    same = ",".join(sorted(FOUR))
    assert (
        invoke(
            ["classify", str(sets["test"] / "blue"), "-m", str(bundle), "--head", str(head_file), "-l", same]
        ).exit_code
        == 0
    )
    r = invoke(["classify", str(sets["test"] / "blue"), "-m", str(bundle), "--head", str(head_file), "-l", "red,blue"])
    assert r.exit_code == 2 and "differ from the head's" in r.output
    r = invoke(
        ["classify", str(sets["test"] / "blue"), "-m", str(bundle), "--head", str(head_file), "--templates", "imagenet"]
    )
    assert r.exit_code == 2 and "--head keeps the templates" in r.output
    assert invoke(["classify", str(sets["test"] / "blue"), "-m", str(bundle)]).exit_code == 2  # no labels, no head


def test_precision_mismatch_warns(bundle: Path, sets: dict[str, Path], head_file: Path) -> None:
    assert Head.load(head_file).model.precision == "fp32"
    r = invoke(
        ["classify", str(sets["test"] / "red"), "-m", str(bundle), "--precision", "fp16", "--head", str(head_file)]
    )
    assert r.exit_code == 0, r.output
    assert "warning: the head was fitted on fp32 image embeddings and this model computes fp16 ones" in r.stderr
    labels = [line.split()[1] for line in r.stdout.splitlines()[1:]]
    assert labels.count("red") >= 9


def test_video_with_head(bundle: Path, tmp_path: Path) -> None:
    av = pytest.importorskip("av")
    train = generated_set(tmp_path / "colours", 10, seed=1, classes=("red", "blue", "green"))
    head = tmp_path / "colours.head"
    assert invoke(["fit", str(train), "-m", str(bundle), "-o", str(head)]).exit_code == 0
    path = tmp_path / "v.mp4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for colour, count in (((200, 40, 40), 20), ((40, 60, 200), 20)):
            arr = np.empty((48, 64, 3), np.uint8)
            arr[:] = colour
            for _ in range(count):
                for packet in stream.encode(av.VideoFrame.from_ndarray(arr, format="rgb24")):
                    container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    r = invoke(["video", str(path), "-m", str(bundle), "--head", str(head), "--format", "json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert [s["label"] for s in out["segments"]] == ["red", "blue"]
    assert set(out["overall"]["scores"]) == {"red", "blue", "green"}


# -- a real architecture: ViT-B-32 with random weights (the export's session fixture) --------------------
@pytest.fixture(scope="module")
def vitb32(request: pytest.FixtureRequest) -> Path:
    pytest.importorskip("torch")
    pytest.importorskip("open_clip")
    try:
        return Path(request.getfixturevalue("vitb32_bundle_dir"))
    except pytest.FixtureLookupError:
        pytest.skip("tests/conftest.py has no vitb32_bundle_dir fixture")


@pytest.mark.torch
@pytest.mark.slow
def test_vitb32_head_on_held_out_sets(vitb32: Path, tmp_path: Path) -> None:
    """Random-weight ViT-B-32 features separate colours, gradients and photographs: the head
    learns them from 12 images per class; its zero-shot part (random text tower) cannot."""
    model = clip_rt.load(vitb32, cache=False)
    makers = [generated_set]
    try:
        import skimage.data  # noqa: F401

        makers.append(photo_set)
    except ImportError:
        pass
    for make in makers:
        train = make(tmp_path / make.__name__ / "train", 12, seed=1)
        test = make(tmp_path / make.__name__ / "test", 10, seed=2)
        head = adapt.fit(model, train).head
        result = adapt.evaluate(model, test, head=head)
        runs = {r.name: r.accuracy for r in result.runs}
        assert runs["head"] >= 0.9 and runs["head"] >= runs["zero-shot:head"], (make.__name__, runs)
        assert head.cv.head_accuracy >= head.cv.zero_shot_accuracy
