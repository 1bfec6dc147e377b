"""Reliability: bad text and arguments, damaged bundles, interrupted and concurrent classify runs.

Torch-free: the bundle is fixtures/fake_bundle.py (real manifest, ONNX graphs and tokenizer) run by
the real runtime. Subprocess runs go through ``runner.py`` (written per test), which starts the
real ``clip-rt`` CLI, optionally after waiting for a start file (so that concurrent processes
really overlap) and with a per-image decode delay (so that a signal lands mid-run).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

import clip_rt
from clip_rt import templates as builtin_templates
from clip_rt.cli import main
from clip_rt.errors import BundleError, ChecksumError, InputError, ModelNotFoundError
from clip_rt_fixtures.fake_bundle import build_fake_bundle

RUNNER = """
import os, signal, sys, time
# Ctrl-C as in a terminal, even when the test runner was started with SIGINT ignored (a
# background job): an ignored SIGINT is inherited and Python would keep ignoring it.
signal.signal(signal.SIGINT, signal.default_int_handler)
delay = float(os.environ.get("DECODE_DELAY", "0"))
if delay:
    from clip_rt import model
    real = model.ClipModel._decode
    def slow(self, index, source):
        time.sleep(delay)
        return real(self, index, source)
    model.ClipModel._decode = slow
start = os.environ.get("START_FILE")
if start:
    deadline = time.time() + 60
    while not os.path.exists(start) and time.time() < deadline:
        time.sleep(0.005)
from clip_rt.cli import main
sys.argv[0] = "clip-rt"
main()
"""


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_fake_bundle(tmp_path_factory.mktemp("bundle") / "fake-clip")


@pytest.fixture
def bundle_copy(bundle: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(bundle, tmp_path / "damaged"))


@pytest.fixture
def runner_py(tmp_path: Path) -> Path:
    path = tmp_path / "runner.py"
    path.write_text(RUNNER)
    return path


def make_folder(folder: Path, n: int, seed: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        h, w = (int(x) for x in rng.integers(8, 48, size=2))
        arr = np.clip(rng.integers(0, 256, 3) + rng.integers(-30, 31, (h, w, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(arr).save(folder / f"{i:03d}.{'png' if i % 2 else 'jpg'}")
    return folder


def cli(args: list[str]) -> Any:
    return CliRunner().invoke(main, args)


def jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def assert_same_records(got: list[dict[str, Any]], want: list[dict[str, Any]]) -> None:
    """Same paths in the same order, same labels/sizes/errors, scores equal to float noise
    (ONNX Runtime may round differently when the batch is split differently)."""
    assert [r["path"] for r in got] == [r["path"] for r in want]
    for g, w in zip(got, want):
        assert (g["label"], g["width"], g["height"], g["error"]) == (w["label"], w["width"], w["height"], w["error"])
        assert g["scores"].keys() == w["scores"].keys()
        for k in w["scores"]:
            assert g["scores"][k] == pytest.approx(w["scores"][k], abs=1e-5)


def one_image() -> np.ndarray:
    return np.full((20, 30, 3), (200, 30, 20), dtype=np.uint8)


# -- 1. bad text and arguments: API -------------------------------------------------------------
@pytest.mark.parametrize(
    "labels, templates, error",
    [
        ([], builtin_templates.SIMPLE, "no labels given: expected at least one class label"),
        (["cat", "dog", "cat"], builtin_templates.SIMPLE, "duplicate labels: 'cat'"),
        (["cat", "  "], builtin_templates.SIMPLE, "blank label '  '"),
        (["cat", 3], builtin_templates.SIMPLE, "a label must be a string, got int: 3"),
        (["cat", "dog"], ["a photo of a cat"], "template 'a photo of a cat' has no {} placeholder for the label"),
        (["cat", "dog"], [], "no prompt templates given"),
    ],
)
def test_api_bad_labels_and_templates(bundle: Path, labels: Any, templates: Any, error: str) -> None:
    model = clip_rt.load(bundle)
    with pytest.raises(InputError, match=re.escape(error)):
        model.classify([one_image()], labels=labels, templates=templates)
    with pytest.raises(InputError, match=re.escape(error)):
        model.classifier(labels, templates)
    assert model.open_encoders == ()  # refused before any graph ran


def test_api_bad_text_and_arguments(bundle: Path) -> None:
    model = clip_rt.load(bundle)
    with pytest.raises(InputError, match="texts must be strings, got int: 3"):
        model.encode_text(["ok", 3])  # type: ignore[list-item]
    with pytest.raises(InputError, match="batch_size must be a positive integer, got 0"):
        model.classify([one_image()], ["cat", "dog"], batch_size=0)
    with pytest.raises(InputError, match="top_k must be a positive integer, got 0"):
        model.classify([one_image()], ["cat", "dog"], top_k=0)
    with pytest.raises(InputError, match="no texts given"):
        model.similarity(one_image(), [])


def test_api_over_long_prompts_are_truncated_like_open_clip_and_warned_once(bundle: Path) -> None:
    model = clip_rt.load(bundle, cache=False)
    ctx = model.manifest.text.context_length  # 16: SOT + 14 words + EOT
    words = ("red green blue cat dog bird " * 6).split()
    long_labels = [" ".join(words[i:]) for i in range(3)]  # all longer than the context
    with pytest.warns(UserWarning) as caught:
        model.classify([one_image()], labels=long_labels + ["cat"], templates=builtin_templates.SIMPLE)
    truncation = [w for w in caught if "truncated" in str(w.message)]
    assert len(truncation) == 1, [str(w.message) for w in caught]  # one warning for 9 long prompts
    assert str(truncation[0].message).startswith(f"9 text(s) longer than the context length of {ctx} tokens")
    # open_clip keeps the first context_length - 2 tokens and ends with EOT.
    long_text = " ".join(words)
    with pytest.warns(UserWarning, match="truncated"):
        got = model.encode_text(long_text)
    np.testing.assert_allclose(got, model.encode_text(" ".join(words[: ctx - 2])), atol=1e-6)
    assert not np.allclose(got, model.encode_text(" ".join(words[: ctx - 3])), atol=1e-3)


def test_api_unknown_model_says_how_to_export() -> None:
    with pytest.raises(ModelNotFoundError) as info:
        clip_rt.load("ViT-B-32-openai")
    message = str(info.value)
    assert "no bundle named 'ViT-B-32-openai'" in message
    assert "clip-rt export ViT-B-32 --pretrained openai" in message


# -- 1. damaged bundles: API and CLI ------------------------------------------------------------
def _flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def _edit_manifest(bundle: Path, change: Any) -> None:
    path = bundle / "manifest.json"
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


DAMAGE = {
    "flipped byte in the image graph": (
        lambda b: _flip_byte(b / "image_fp32.onnx"),
        ChecksumError,
        r"image_fp32\.onnx: sha256 [0-9a-f]{16}\.\.\. does not match the manifest's",
    ),
    "flipped byte in the text graph": (
        lambda b: _flip_byte(b / "text_fp32.onnx"),
        ChecksumError,
        r"text_fp32\.onnx: sha256 .* re-export it",
    ),
    "flipped byte in the tokenizer": (
        lambda b: _flip_byte(b / "tokenizer.json"),
        ChecksumError,
        r"tokenizer\.json: sha256",
    ),
    "truncated image graph": (
        lambda b: (b / "image_fp32.onnx").write_bytes(b"\x08\x07"),
        ChecksumError,
        r"image_fp32\.onnx: size 2 bytes does not match the manifest's \d+",
    ),
    "missing text graph": (
        lambda b: (b / "text_fp32.onnx").unlink(),
        BundleError,
        r"text_fp32\.onnx is missing \(listed in the manifest\)",
    ),
    "missing manifest": (
        lambda b: (b / "manifest.json").unlink(),
        ModelNotFoundError,
        r"is a directory but not a clip-rt bundle: expected manifest\.json inside it",
    ),
    "newer format_version": (
        lambda b: _edit_manifest(b, lambda d: d.update(format_version=99)),
        BundleError,
        r"bundle format version 99 is newer than this clip-rt reads \(up to 2\); "
        r"upgrade clip-rt or re-export the model",
    ),
    "manifest not JSON": (
        lambda b: (b / "manifest.json").write_text('{"format_version": 1,'),
        BundleError,
        r"manifest\.json: not valid JSON",
    ),
    "manifest without graphs": (
        lambda b: _edit_manifest(b, lambda d: d.pop("graphs")),
        BundleError,
        r"malformed manifest: graphs: required field is missing",
    ),
}


@pytest.mark.parametrize("case", list(DAMAGE))
def test_damaged_bundle_api(bundle_copy: Path, case: str) -> None:
    damage, error, message = DAMAGE[case]
    damage(bundle_copy)
    with pytest.raises(error, match=message):
        clip_rt.load(bundle_copy).classify([one_image()], ["cat", "dog"])


@pytest.mark.parametrize("case", list(DAMAGE))
def test_damaged_bundle_cli_exit_1_one_line(bundle_copy: Path, tmp_path: Path, case: str) -> None:
    damage, _, message = DAMAGE[case]
    damage(bundle_copy)
    folder = make_folder(tmp_path / "imgs", 3, seed=1)
    out = tmp_path / "run.jsonl"
    r = cli(["classify", str(folder), "-l", "cat,dog", "-m", str(bundle_copy), "-o", str(out)])
    assert r.exit_code == 1, r.output
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), r.stderr  # no traceback
    assert re.search(message, lines[0]), lines[0]
    assert not out.exists() or out.read_text() == ""  # no records from a broken model


def test_damaged_image_graph_leaves_an_existing_output_untouched(
    bundle: Path, bundle_copy: Path, tmp_path: Path
) -> None:
    """The image graph is opened before -o is truncated: a rerun without --resume against a
    damaged bundle must not wipe the records of the earlier run."""
    folder = make_folder(tmp_path / "imgs", 3, seed=1)
    out = tmp_path / "run.jsonl"
    assert cli(["classify", str(folder), "-l", "cat,dog", "-m", str(bundle), "-o", str(out)]).exit_code == 0
    before = out.read_bytes()
    assert before.count(b"\n") == 3
    _flip_byte(bundle_copy / "image_fp32.onnx")
    r = cli(["classify", str(folder), "-l", "cat,dog", "-m", str(bundle_copy), "-o", str(out)])
    assert r.exit_code == 1 and "image_fp32.onnx" in r.stderr, r.stderr
    assert out.read_bytes() == before


def test_damage_to_an_encoder_not_needed_is_found_when_it_is(bundle_copy: Path) -> None:
    """Files are verified when their encoder is first used: text-only use of a bundle with a
    damaged image graph works; the first image then fails with the file named."""
    _flip_byte(bundle_copy / "image_fp32.onnx")
    model = clip_rt.load(bundle_copy)
    assert model.encode_text(["cat"]).shape == (1, model.embed_dim)
    with pytest.raises(ChecksumError, match="image_fp32.onnx"):
        list(model.iter_images([one_image()]))


# -- 1. bad text and arguments: CLI -------------------------------------------------------------
@pytest.mark.parametrize(
    "args, message",
    [
        (["-l", ","], "no labels given: expected at least one non-empty label"),
        (["-l", ""], "no labels given: expected at least one non-empty label"),
        (["-l", "cat,dog,cat"], "duplicate labels: cat"),
        (["-l", "cat,dog", "--template", "a photo"], "template 'a photo' has no {} placeholder for the label"),
        (["-l", "cat,dog", "--template", "a {}", "--templates", "simple"], "give --template or --templates, not both"),
        (["-l", "cat,dog", "--top-k", "3"], "--top-k 3 is more than the 2 labels given"),
        (["-l", "cat,dog", "--batch-size", "0"], "Invalid value for '--batch-size'"),
    ],
)
def test_cli_bad_labels_and_templates_exit_2(bundle: Path, tmp_path: Path, args: list[str], message: str) -> None:
    folder = make_folder(tmp_path / "imgs", 2, seed=0)
    r = cli(["classify", str(folder), "-m", str(bundle), *args])
    assert r.exit_code == 2, r.output
    assert message in r.stderr


def test_cli_labels_file_empty_or_duplicates(bundle: Path, tmp_path: Path) -> None:
    folder = make_folder(tmp_path / "imgs", 2, seed=0)
    empty = tmp_path / "labels.txt"
    empty.write_text("# only a comment\n\n   \n")
    r = cli(["classify", str(folder), "-m", str(bundle), "--labels-file", str(empty)])
    assert r.exit_code == 2 and "no labels given" in r.stderr
    dupes = tmp_path / "dupes.txt"
    dupes.write_text("cat\ndog\ncat\n")
    r = cli(["classify", str(folder), "-m", str(bundle), "--labels-file", str(dupes)])
    assert r.exit_code == 2 and "duplicate labels: cat" in r.stderr


def test_cli_over_long_prompts_are_reported_on_one_line(bundle: Path, tmp_path: Path) -> None:
    folder = make_folder(tmp_path / "imgs", 3, seed=0)
    long_labels = ["red green blue " * 8, "cat dog bird " * 8, "car"]
    out = tmp_path / "run.jsonl"
    r = cli(
        [
            "classify",
            str(folder),
            "-m",
            str(bundle),
            "-l",
            ",".join(long_labels),
            "--templates",
            "imagenet",
            "-o",
            str(out),
        ]
    )
    assert r.exit_code == 0, r.output
    mentions = [line for line in r.stderr.splitlines() if "truncated" in line]
    assert len(mentions) == 1, r.stderr  # 160 truncated prompts, one line
    assert mentions[0].startswith("warning: 160 text(s) longer than the context length of 16 tokens")
    assert "warnings.warn" not in r.stderr and ".py:" not in r.stderr  # no Python source location
    assert len(jsonl(out)) == 3


def test_cli_unknown_model_exit_1_says_how_to_export(tmp_path: Path) -> None:
    folder = make_folder(tmp_path / "imgs", 1, seed=0)
    r = cli(["classify", str(folder), "-l", "cat,dog", "-m", "ViT-L-14-openai"])
    assert r.exit_code == 1
    assert r.stderr.startswith("Error: no bundle named 'ViT-L-14-openai'")
    assert "`clip-rt export ViT-L-14 --pretrained openai`" in r.stderr
    assert "Traceback" not in r.stderr


# -- 1. with a bundle exported from open_clip (skipped without torch) ----------------------------
@pytest.mark.torch
@pytest.mark.slow
def test_exported_bundle_truncates_like_open_clip(tiny_bundle_dir: Path) -> None:
    open_clip = pytest.importorskip("open_clip")
    model = clip_rt.load(tiny_bundle_dir, precision="fp32", cache=False)
    long_text = "a photo of a very " + "very " * 100 + "big cat"
    with pytest.warns(UserWarning) as caught:
        got = model.encode_text([long_text, "a cat"])
    assert len([w for w in caught if "truncated" in str(w.message)]) == 1
    ids = open_clip.tokenize([long_text], context_length=model.manifest.text.context_length).numpy()
    want = model.session("text").run({"input_ids": ids.astype(np.int64)})[0]
    np.testing.assert_allclose(got[0], want[0], atol=1e-5)


# -- 2. interrupted classify --------------------------------------------------------------------
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_mid_run_then_resume_gives_the_uninterrupted_result(
    bundle: Path, tmp_path: Path, runner_py: Path, signum: int
) -> None:
    folder = make_folder(tmp_path / "imgs", 60, seed=3)
    out, ref = tmp_path / "run.jsonl", tmp_path / "ref.jsonl"
    args = ["classify", str(folder), "-l", "cat,dog,bird", "-m", str(bundle), "--batch-size", "2"]
    env = {**os.environ, "DECODE_DELAY": "0.1"}
    proc = subprocess.Popen(
        [sys.executable, str(runner_py), *args, "-o", str(out)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.time() + 60
    while time.time() < deadline and (not out.exists() or out.read_bytes().count(b"\n") < 10):
        time.sleep(0.02)
    proc.send_signal(signum)
    sent = time.time()
    try:
        proc.wait(timeout=10)
    finally:
        proc.kill()
    took = time.time() - sent
    stderr = proc.stderr.read().decode() if proc.stderr else ""
    assert took < 5, f"took {took:.1f} s to stop"
    assert proc.returncode != 0, stderr
    assert "Traceback" not in stderr, stderr
    data = out.read_bytes()
    assert data.endswith(b"\n"), "a torn record was left behind"
    partial = [json.loads(line) for line in data.splitlines()]
    assert 10 <= len(partial) < 60, "the signal should have landed half-way"

    resumed = subprocess.run(
        [sys.executable, str(runner_py), *args, "-o", str(out), "--resume"], capture_output=True, timeout=120
    )
    assert resumed.returncode == 0, resumed.stderr
    assert f"60 processed, 0 failed, {len(partial)} already done" in resumed.stderr.decode()
    assert cli([*args, "-o", str(ref)]).exit_code == 0
    got = jsonl(out)
    assert got[: len(partial)] == partial  # what was on disk was kept as it was
    assert_same_records(got, jsonl(ref))  # no loss, no duplicate, same results


# -- 3. concurrent processes sharing one store and prompt cache ---------------------------------
def test_four_processes_share_the_store_and_prompt_cache(
    bundle: Path, tmp_path: Path, runner_py: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "home"
    shutil.copytree(bundle, home / "models" / "fake-clip")
    common = ["cat", "dog", "bird", "car"]
    labels = [common + [f"red thing {i}", f"blue thing {i}"] for i in range(4)]
    folders = [make_folder(tmp_path / f"imgs{i}", 20, seed=10 + i) for i in range(4)]
    start = tmp_path / "go"
    env = {**os.environ, "CLIP_RT_HOME": str(home), "START_FILE": str(start)}
    procs = []
    for i in range(4):
        cmd = [
            sys.executable,
            str(runner_py),
            "classify",
            str(folders[i]),
            "-m",
            "fake-clip",
            "-l",
            ",".join(labels[i]),
            "--templates",
            "imagenet",
            "-o",
            str(tmp_path / f"out{i}.jsonl"),
        ]
        procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))
    time.sleep(1.0)  # let every process import and reach the start line
    start.touch()
    for p in procs:
        _, err = p.communicate(timeout=180)
        assert p.returncode == 0, err.decode()

    # The cache: intact, and every prompt of every process is in it exactly once.
    db = home / "cache" / "prompts.sqlite"
    con = sqlite3.connect(db)
    try:
        assert con.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        rows = con.execute("SELECT text, embedding FROM text_embeddings").fetchall()
    finally:
        con.close()
    imagenet = builtin_templates.by_name("imagenet")
    prompts = {t.replace("{}", lab) for labs in labels for lab in labs for t in imagenet}
    assert len(rows) == len({r[0] for r in rows}) == len(prompts)
    assert {r[0] for r in rows} == prompts
    fresh = clip_rt.load(bundle, cache=False)
    sample = sorted(prompts)[::37]
    stored = {text: np.frombuffer(blob, dtype=np.float32) for text, blob in rows}
    np.testing.assert_allclose(np.stack([stored[t] for t in sample]), fresh.encode_text(sample), atol=1e-6)
    json.loads((home / "cache" / "verified.json").read_text())  # the checksum memo is valid JSON

    # Same results as one process at a time, each with an empty store.
    for i in range(4):
        monkeypatch.setenv("CLIP_RT_HOME", str(tmp_path / f"solo-home{i}"))
        solo = tmp_path / f"solo{i}.jsonl"
        r = cli(
            [
                "classify",
                str(folders[i]),
                "-m",
                str(bundle),
                "-l",
                ",".join(labels[i]),
                "--templates",
                "imagenet",
                "-o",
                str(solo),
            ]
        )
        assert r.exit_code == 0, r.output
        assert_same_records(jsonl(tmp_path / f"out{i}.jsonl"), jsonl(solo))
