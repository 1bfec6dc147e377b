"""`clip-rt classify`: records, formats, exit codes, non-UTF-8 names, resume (kill -9 included).

Most tests inject a small fake model (colour embeddings: a red image is "red") through
`clip_rt.cli.common.load_model`, so they test the command, not the network. The end-to-end
test at the bottom uses the real tiny bundle when tests/conftest.py provides one.
"""

from __future__ import annotations

import csv
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from clip_rt.cli import common, main

TESTS = Path(__file__).resolve().parent
WORDS = ["red", "green", "blue", "yellow", "cyan", "magenta", "white", "black"]


# -- a fake model with the ClipModel interface -------------------------------------------
class FakeClassifier:
    def __init__(self, model: FakeModel, labels: Any, templates: tuple[str, ...]) -> None:
        # A list of names, or {name: own prompts | None} like ClipModel.classifier.
        own = labels if isinstance(labels, dict) else dict.fromkeys(labels)
        self.labels = list(own)
        rows = []
        for name, prompts in own.items():
            e = model.encode_text(list(prompts) if prompts else [t.format(name) for t in templates]).mean(0)
            rows.append(e / np.linalg.norm(e))
        self.text = np.stack(rows)

    def classify_embeddings(self, embs: np.ndarray, top_k: int = 1) -> list[Any]:
        logits = 100.0 * embs @ self.text.T
        p = np.exp(logits - logits.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        out = []
        for row in p:
            order = np.argsort(-row, kind="stable")
            out.append(
                SimpleNamespace(
                    label=self.labels[order[0]],
                    score=float(row[order[0]]),
                    scores={lab: float(s) for lab, s in zip(self.labels, row)},
                    top_k=[(self.labels[i], float(row[i])) for i in order[:top_k]],
                )
            )
        return out


class FakeModel:
    """Embeds an image as its normalised mean colour; a text as the colour words it names."""

    def __init__(self, delay: float = 0.0, name: str = "fake-bundle", fingerprint: str = "f" * 32) -> None:
        self.delay = delay
        self.manifest = SimpleNamespace(name=name, fingerprint=fingerprint)
        self.precision = "fp32"
        self.logit_scale = 100.0
        self.scoring = "softmax"

    @staticmethod
    def _embed(img: Image.Image) -> np.ndarray:
        rgb = np.asarray(img.convert("RGB"), dtype=np.float64).reshape(-1, 3).mean(0)
        v = np.concatenate([rgb - rgb.mean() + 1e-3, [0.0] * 5])
        return (v / np.linalg.norm(v)).astype(np.float32)

    def iter_images(self, sources: list[Any], batch_size: int = 32) -> Any:
        for i, src in enumerate(sources):
            time.sleep(self.delay)
            try:
                with Image.open(src) as im:
                    im.load()
                    yield SimpleNamespace(
                        index=i,
                        source=src,
                        embedding=self._embed(im),
                        width=im.width,
                        height=im.height,
                        error=None,
                        notes=[],
                    )
            except (OSError, ValueError) as exc:
                yield SimpleNamespace(
                    index=i,
                    source=src,
                    embedding=None,
                    width=None,
                    height=None,
                    error=f"cannot read image: {exc}",
                    notes=[],
                )

    def encode_image(self, images: list[Any]) -> np.ndarray:
        out = []
        for im in images:
            if not isinstance(im, Image.Image):
                with Image.open(im) as f:
                    out.append(self._embed(f))
            else:
                out.append(self._embed(im))
        return np.stack(out)

    def encode_text(self, texts: list[str]) -> np.ndarray:
        rgb = {
            "red": (1, -0.5, -0.5),
            "green": (-0.5, 1, -0.5),
            "blue": (-0.5, -0.5, 1),
            "yellow": (0.5, 0.5, -1),
            "cyan": (-1, 0.5, 0.5),
            "magenta": (0.5, -1, 0.5),
        }
        out = []
        for t in texts:
            v = np.zeros(8)
            for w, c in rgb.items():
                if w in t.lower():
                    v[:3] += c
            v[3 + (sum(map(ord, t)) % 5)] += 0.05  # texts with no colour still differ
            out.append(v / np.linalg.norm(v))
        return np.stack(out).astype(np.float32)

    draft = False

    def preprocess(self, image: Image.Image) -> Any:
        """The real model's PreprocessedImage; its pixels here are the embedding itself, which
        encode_pixels passes on."""
        from clip_rt.model import PreprocessedImage

        return PreprocessedImage(self._embed(image), image.width, image.height, [])

    def encode_pixels(self, pixels: np.ndarray) -> np.ndarray:
        return np.asarray(pixels, dtype=np.float32)

    def classifier(self, labels: list[str], templates: tuple[str, ...]) -> FakeClassifier:
        return FakeClassifier(self, labels, templates)

    def session(self, encoder: str) -> None:
        """The real model opens (and checksums) the graph here; the fake has none."""

    def prepare(self, encoders: Any = ("image", "text")) -> None:
        """The real model creates and checks its sessions here; the fake has none."""

    def release(self, encoder: str) -> None:
        """The real model frees the session here."""

    def similarity(self, image: Any, texts: list[str]) -> np.ndarray:
        logits = 100.0 * self.encode_text(texts) @ self.encode_image([image])[0]
        p = np.exp(logits - logits.max())
        return p / p.sum()


def install_fake(monkeypatch: pytest.MonkeyPatch, **kw: Any) -> None:
    monkeypatch.setattr(common, "load_model", lambda *a, **k: FakeModel(**kw))


def run_cli_with_fake(delay: float) -> None:
    """Entry point for subprocess tests: the real CLI with the fake model."""
    common.load_model = lambda *a, **k: FakeModel(delay=delay)  # type: ignore[assignment]
    main()


def make_images(folder: Path) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    spec = {
        "a_red.png": ((220, 20, 30), (64, 48)),
        "b_green.JPG": ((20, 200, 40), (40, 40)),
        "c_blue.jpeg": ((10, 30, 230), (96, 54)),
        "sub/d_red.webp": ((200, 10, 10), (30, 45)),
    }
    paths = {}
    for name, (colour, size) in spec.items():
        p = folder / name
        p.parent.mkdir(exist_ok=True)
        Image.new("RGB", size, colour).save(p)
        paths[name] = p
    (folder / "notes.txt").write_text("not an image")
    return paths


def invoke(args: list[str], **kw: Any) -> Any:
    return CliRunner().invoke(main, args, catch_exceptions=False, **kw)


# -- tests -----------------------------------------------------------------------------
def test_folder_jsonl_records(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    install_fake(monkeypatch)
    make_images(tmp_path / "imgs")
    out = tmp_path / "run.jsonl"
    r = invoke(["classify", str(tmp_path / "imgs"), "--labels", "red,green,blue", "-o", str(out)])
    assert r.exit_code == 0, r.output
    recs = [json.loads(line) for line in out.read_text().splitlines()]
    names = [os.path.relpath(x["path"], tmp_path / "imgs") for x in recs]
    assert names == ["a_red.png", "b_green.JPG", "c_blue.jpeg", "sub/d_red.webp"]  # sorted, .txt skipped
    assert [x["label"] for x in recs] == ["red", "green", "blue", "red"]
    assert set(recs[0]) == {"path", "label", "score", "scores", "width", "height", "error"}
    assert set(recs[0]["scores"]) == {"red", "green", "blue"}
    assert abs(sum(recs[0]["scores"].values()) - 1) < 1e-4
    assert (recs[2]["width"], recs[2]["height"]) == (96, 54)
    assert "4 processed, 0 failed" in r.stderr


def test_bad_file_gives_exit_1_and_every_record(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    install_fake(monkeypatch)
    make_images(tmp_path / "imgs")
    (tmp_path / "imgs" / "broken.png").write_bytes(b"\x89PNG not really")
    r = invoke(["classify", str(tmp_path / "imgs"), "-l", "red,green,blue", "--format", "json"])
    assert r.exit_code == 1
    recs = json.loads(r.stdout)
    assert len(recs) == 5
    bad = [x for x in recs if x["error"]]
    assert [os.path.basename(x["path"]) for x in bad] == ["broken.png"]
    assert bad[0]["label"] is None and bad[0]["score"] is None
    assert "5 processed, 1 failed" in r.stderr and "broken.png" in r.stderr


def test_csv_header_bom_and_label_columns(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    install_fake(monkeypatch)
    imgs = make_images(tmp_path / "imgs")
    out = tmp_path / "r.csv"
    r = invoke(
        ["classify", str(imgs["a_red.png"]), str(imgs["c_blue.jpeg"]), "-l", "red,blue,猫", "-o", str(out), "--csv-bom"]
    )
    assert r.exit_code == 0, r.output
    raw = out.read_bytes()
    assert raw.startswith(b"\xef\xbb\xbf")
    rows = list(csv.reader(io.StringIO(raw.decode("utf-8-sig"))))
    assert rows[0] == ["path", "label", "score", "width", "height", "error", "score_red", "score_blue", "score_猫"]
    assert [row[1] for row in rows[1:]] == ["red", "blue"]
    assert rows[1][3:5] == ["64", "48"]


def test_stdin_paths_table_and_top_k(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    install_fake(monkeypatch)
    imgs = make_images(tmp_path / "imgs")
    listing = f"{imgs['c_blue.jpeg']}\n\n{imgs['a_red.png']}\n".encode()
    r = invoke(["classify", "-", "-l", "red,green,blue", "--top-k", "2"], input=listing)
    assert r.exit_code == 0, r.output
    lines = r.stdout.splitlines()
    assert lines[0].split()[:3] == ["score", "label", "size"]
    assert "blue" in lines[1] and "c_blue.jpeg" in lines[1] and "[blue" in lines[1]
    assert "red" in lines[2] and "a_red.png" in lines[2]


@pytest.mark.skipif(sys.platform != "linux", reason="non-UTF-8 file names are a POSIX byte-name feature")
def test_non_utf8_file_name_survives(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    install_fake(monkeypatch)
    folder = tmp_path / "imgs"
    folder.mkdir()
    raw_name = os.path.join(os.fsencode(folder), b"caf\xe9_red.png")  # latin-1 bytes
    Image.new("RGB", (8, 8), (250, 0, 0)).save(os.fsdecode(raw_name), format="PNG")
    out_jsonl, out_csv = tmp_path / "r.jsonl", tmp_path / "r.csv"
    assert invoke(["classify", str(folder), "-l", "red,blue", "-o", str(out_jsonl)]).exit_code == 0
    assert invoke(["classify", str(folder), "-l", "red,blue", "-o", str(out_csv)]).exit_code == 0
    rec = json.loads(out_jsonl.read_bytes().decode("utf-8"))  # still valid UTF-8 JSON
    assert os.fsencode(rec["path"]) == raw_name and rec["label"] == "red"
    assert raw_name in out_csv.read_bytes()  # CSV keeps the original bytes
    table = invoke(["classify", str(folder), "-l", "red,blue"])
    assert "caf\\xe9_red.png" in table.stdout
    to_stdout = invoke(["classify", str(folder), "-l", "red,blue", "--format", "csv"])
    assert to_stdout.exit_code == 0 and raw_name in to_stdout.stdout_bytes


def test_labels_json_file_with_own_prompts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    install_fake(monkeypatch)
    imgs = make_images(tmp_path / "imgs")
    spec = tmp_path / "labels.json"
    # "warm" has its own prompts (naming red), "cool" goes through the templates and names nothing.
    spec.write_text(json.dumps({"warm": ["something red", "a red thing"], "cool": None}))
    r = invoke(["classify", str(imgs["a_red.png"]), "--labels-file", str(spec), "--format", "jsonl"])
    assert r.exit_code == 0, r.output
    rec = json.loads(r.stdout)
    assert rec["label"] == "warm" and set(rec["scores"]) == {"warm", "cool"}
    spec.write_text(json.dumps({"warm": []}))
    assert invoke(["classify", str(imgs["a_red.png"]), "--labels-file", str(spec)]).exit_code == 2
    spec.write_text("{not json")
    assert invoke(["classify", str(imgs["a_red.png"]), "--labels-file", str(spec)]).exit_code == 2
    txt = tmp_path / "labels.txt"
    txt.write_text("# colours\nred\n\nblue\n", encoding="utf-8")
    r = invoke(["classify", str(imgs["c_blue.jpeg"]), "--labels-file", str(txt), "--format", "jsonl"])
    assert json.loads(r.stdout)["label"] == "blue" and set(json.loads(r.stdout)["scores"]) == {"red", "blue"}


def test_usage_errors_exit_2(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    install_fake(monkeypatch)
    imgs = make_images(tmp_path / "imgs")
    p = str(imgs["a_red.png"])
    assert invoke(["classify", p]).exit_code == 2  # no labels
    assert invoke(["classify", p, "-l", "a,b", "--format", "xml"]).exit_code == 2
    assert invoke(["classify", p, "-l", "a,b", "--resume"]).exit_code == 2  # resume without -o
    assert invoke(["classify", p, "-l", "a,b", "-o", str(tmp_path / "x.json"), "--resume"]).exit_code == 2
    assert invoke(["classify", p, "-l", "a,b", "--top-k", "3"]).exit_code == 2
    assert invoke(["classify", p, "-l", "a,a"]).exit_code == 2
    assert invoke(["classify", p, "-l", "a,b", "--template", "no placeholder"]).exit_code == 2
    r = invoke(["classify", str(tmp_path / "missing.png"), p, "-l", "a,b", "--format", "jsonl"])
    assert r.exit_code == 1 and "2 processed, 1 failed" in r.stderr  # a missing file is a failed record
    assert json.loads(r.stdout.splitlines()[0])["error"]


def test_missing_model_exits_1_with_export_hint(tmp_path: Path) -> None:
    Image.new("RGB", (8, 8)).save(tmp_path / "x.png")
    r = CliRunner().invoke(main, ["classify", str(tmp_path / "x.png"), "-l", "a,b", "--model", "ViT-B-32-openai"])
    assert r.exit_code == 1
    assert "clip-rt export" in r.output and "ViT-B-32" in r.output


def test_resume_refuses_other_labels_or_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    install_fake(monkeypatch)
    make_images(tmp_path / "imgs")
    out = str(tmp_path / "r.jsonl")
    assert invoke(["classify", str(tmp_path / "imgs"), "-l", "red,blue", "-o", out]).exit_code == 0
    r = invoke(["classify", str(tmp_path / "imgs"), "-l", "red,green", "-o", out, "--resume"])
    assert r.exit_code == 1 and "different run" in r.output and "labels" in r.output
    monkeypatch.setattr(common, "load_model", lambda *a, **k: FakeModel(fingerprint="0" * 32))
    r = invoke(["classify", str(tmp_path / "imgs"), "-l", "red,blue", "-o", out, "--resume"])
    assert r.exit_code == 1 and "fingerprint" in r.output


@pytest.mark.parametrize("ext", ["jsonl", "csv"])
def test_resume_drops_torn_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ext: str) -> None:
    install_fake(monkeypatch)
    make_images(tmp_path / "imgs")
    full, part = tmp_path / f"full.{ext}", tmp_path / f"part.{ext}"
    args = [str(tmp_path / "imgs"), "-l", "red,green,blue"]
    assert invoke(["classify", *args, "-o", str(full)]).exit_code == 0
    data = full.read_bytes()
    lines = data.splitlines(keepends=True)
    # Two whole records (plus CSV header) and half of the next one: a kill -9 mid-write.
    keep = 3 if ext == "csv" else 2
    part.write_bytes(b"".join(lines[:keep]) + lines[keep][:17])
    Path(str(part) + ".clip-rt.json").write_bytes(Path(str(full) + ".clip-rt.json").read_bytes())
    r = invoke(["classify", *args, "-o", str(part), "--resume"])
    assert r.exit_code == 0, r.output
    assert part.read_bytes() == data
    assert "already done" in r.stderr


@pytest.mark.slow
def test_resume_after_kill_9_matches_uninterrupted_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(40):
        Image.new("RGB", (16 + i, 16), ((i * 37) % 256, (i * 91) % 256, (i * 53) % 256)).save(folder / f"{i:03d}.png")
    out = tmp_path / "run.jsonl"
    code = f"import sys; sys.path.insert(0, {str(TESTS)!r}); import test_cli_classify as t; t.run_cli_with_fake(0.08)"
    cmd = [
        sys.executable,
        "-c",
        code,
        "classify",
        str(folder),
        "-l",
        "red,green,blue",
        "-o",
        str(out),
        "--batch-size",
        "2",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while time.time() < deadline and (not out.exists() or out.read_bytes().count(b"\n") < 6):
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_lines = out.read_bytes().count(b"\n")
    assert 6 <= killed_lines < 40, "the run should have been killed half-way"
    with open(out, "ab") as f:
        f.write(b'{"path": "torn')  # a torn write on top, as if killed inside write()
    resumed = subprocess.run(cmd[:3] + cmd[3:] + ["--resume"], capture_output=True, timeout=120)
    assert resumed.returncode == 0, resumed.stderr
    install_fake(monkeypatch)
    ref = tmp_path / "ref.jsonl"
    assert invoke(["classify", str(folder), "-l", "red,green,blue", "-o", str(ref)]).exit_code == 0
    assert out.read_text().splitlines() == ref.read_text().splitlines()
    assert len(ref.read_text().splitlines()) == 40


def test_end_to_end_with_real_bundle(real_bundle: Path, tmp_path: Path) -> None:
    make_images(tmp_path / "imgs")
    (tmp_path / "imgs" / "broken.jpg").write_bytes(b"nope")
    out = tmp_path / "r.jsonl"
    args = ["classify", str(tmp_path / "imgs"), "-l", "cat,dog,car", "--model", str(real_bundle), "-o", str(out)]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 1, r.output  # broken.jpg
    recs = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(recs) == 5 and [os.path.basename(x["path"]) for x in recs if x["error"]] == ["broken.jpg"]
    for x in recs:
        if not x["error"]:
            assert x["label"] in ("cat", "dog", "car") and abs(sum(x["scores"].values()) - 1) < 1e-4
            assert x["score"] == max(x["scores"].values())
    # Same input, --resume on a complete output: nothing is recomputed, nothing duplicated.
    before = out.read_bytes()
    r = CliRunner().invoke(main, args + ["--resume"])
    assert r.exit_code == 1 and out.read_bytes() == before


# -- review fixes: path spellings on resume, unlistable folders, CSV header, .json label keys --
@pytest.mark.parametrize("spelling", ["dot", "absolute"])
def test_resume_matches_other_spellings_of_the_same_paths(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, spelling: str
) -> None:
    install_fake(monkeypatch)
    make_images(tmp_path / "photos")
    if sys.platform == "linux":  # a non-UTF-8 name (surrogate-escaped str) must match too
        raw = os.path.join(os.fsencode(tmp_path / "photos"), b"z_caf\xe9_red.png")
        Image.new("RGB", (8, 8), (250, 0, 0)).save(os.fsdecode(raw), format="PNG")
    monkeypatch.chdir(tmp_path)
    labels = ["-l", "red,green,blue"]
    assert invoke(["classify", "photos", *labels, "-o", "r.jsonl"]).exit_code == 0
    full = Path("r.jsonl").read_bytes()
    other = "./photos" if spelling == "dot" else str(tmp_path / "photos")
    # A complete output: nothing is new.
    r = invoke(["classify", other, *labels, "-o", "r.jsonl", "--resume"])
    assert r.exit_code == 0, r.output
    assert Path("r.jsonl").read_bytes() == full
    n = full.count(b"\n")
    assert f"{n} processed, 0 failed, {n} already done" in r.stderr
    # Killed after two records: only the rest is appended, under the spelling given now.
    Path("r.jsonl").write_bytes(b"".join(full.splitlines(keepends=True)[:2]))
    r = invoke(["classify", other, *labels, "-o", "r.jsonl", "--resume"])
    assert r.exit_code == 0, r.output
    recs = [json.loads(line) for line in Path("r.jsonl").read_text().splitlines()]
    assert len(recs) == n
    assert [os.path.basename(x["path"]) for x in recs] == [
        os.path.basename(json.loads(line)["path"]) for line in full.decode().splitlines()
    ]
    assert all(x["path"].startswith(other + os.sep) for x in recs[2:])


def test_discover_dedupes_spellings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from clip_rt.inputs.discover import discover

    make_images(tmp_path / "photos")
    monkeypatch.chdir(tmp_path)
    found = discover(["photos", "./photos/a_red.png", str(tmp_path / "photos" / "sub")])
    assert [os.path.relpath(p) for p in found] == [
        "photos/a_red.png",
        "photos/b_green.JPG",
        "photos/c_blue.jpeg",
        "photos/sub/d_red.webp",
    ]


def fail_listing(monkeypatch: pytest.MonkeyPatch, folder: Path) -> None:
    """Make os.walk's listing of *folder* fail as an unreadable folder does (root ignores modes)."""
    real_scandir = os.scandir

    def scandir(path: Any = ".") -> Any:
        if os.path.abspath(os.fspath(path)) == str(folder):
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)


def test_unlistable_subfolder_is_a_failed_record(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    install_fake(monkeypatch)
    make_images(tmp_path / "imgs")
    fail_listing(monkeypatch, tmp_path / "imgs" / "sub")
    out = tmp_path / "r.jsonl"
    args = ["classify", str(tmp_path / "imgs"), "-l", "red,green,blue", "-o", str(out)]
    r = invoke(args)
    assert r.exit_code == 1, r.output
    recs = [json.loads(line) for line in out.read_text().splitlines()]
    assert recs[0] == {
        "path": str(tmp_path / "imgs" / "sub"),
        "label": None,
        "score": None,
        "scores": {},
        "width": None,
        "height": None,
        "error": "cannot list folder: Permission denied",
    }
    assert [os.path.basename(x["path"]) for x in recs[1:]] == ["a_red.png", "b_green.JPG", "c_blue.jpeg"]
    assert "4 processed, 1 failed" in r.stderr
    assert f"failed: {tmp_path / 'imgs' / 'sub'}: cannot list folder: Permission denied" in r.stderr
    # Still unlistable on --resume: no second record, still exit 1.
    before = out.read_bytes()
    r = invoke(args + ["--resume"])
    assert r.exit_code == 1 and out.read_bytes() == before


def test_unreadable_folder_with_real_permissions(tmp_path: Path) -> None:
    import shutil
    import tempfile

    from clip_rt.inputs.discover import discover

    root = Path(tempfile.mkdtemp(prefix="clip-rt-walk-"))  # not under pytest's 0700 tmp: nobody reaches it
    try:
        os.chmod(root, 0o755)
        make_images(root / "imgs")
        os.chmod(root / "imgs", 0o755)
        os.chmod(root / "imgs" / "sub", 0)
        errors: list[tuple[str, str]] = []
        if os.geteuid() == 0:  # root lists anything: drop to nobody for the walk
            os.seteuid(65534)
            try:
                found = discover([str(root / "imgs")], errors=errors)
            finally:
                os.seteuid(0)
        else:
            found = discover([str(root / "imgs")], errors=errors)
        assert [os.path.basename(p) for p in found] == ["a_red.png", "b_green.JPG", "c_blue.jpeg"]
        assert errors == [(str(root / "imgs" / "sub"), "cannot list folder: Permission denied")]
    finally:
        os.chmod(root / "imgs" / "sub", 0o755)
        shutil.rmtree(root)


@pytest.mark.parametrize("bom", [False, True])
@pytest.mark.parametrize("cut", ["newline", "half"])
def test_csv_resume_after_kill_in_header(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, bom: bool, cut: str) -> None:
    install_fake(monkeypatch)
    make_images(tmp_path / "imgs")
    args = [str(tmp_path / "imgs"), "-l", "red,green,blue"] + (["--csv-bom"] if bom else [])
    full, part = tmp_path / "full.csv", tmp_path / "part.csv"
    assert invoke(["classify", *args, "-o", str(full)]).exit_code == 0
    data = full.read_bytes()
    header = data.splitlines()[0]  # BOM included, newline not
    part.write_bytes(header if cut == "newline" else header[: len(header) // 2])
    Path(str(part) + ".clip-rt.json").write_bytes(Path(str(full) + ".clip-rt.json").read_bytes())
    r = invoke(["classify", *args, "-o", str(part), "--resume"])
    assert r.exit_code == 0, r.output
    assert b"\x00" not in part.read_bytes()
    assert part.read_bytes() == data


def test_json_labels_keys_are_stripped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    install_fake(monkeypatch)
    imgs = make_images(tmp_path / "imgs")
    spec = tmp_path / "labels.json"
    spec.write_text(json.dumps({" red": None, "blue ": ["something blue"]}))
    out = tmp_path / "r.csv"
    r = invoke(
        ["classify", str(imgs["a_red.png"]), str(imgs["c_blue.jpeg"]), "--labels-file", str(spec), "-o", str(out)]
    )
    assert r.exit_code == 0, r.output
    rows = list(csv.DictReader(io.StringIO(out.read_text())))
    assert list(rows[0])[-2:] == ["score_red", "score_blue"]
    assert [row["label"] for row in rows] == ["red", "blue"]
    assert all(row["score_red"] and row["score_blue"] for row in rows)


@pytest.mark.parametrize(
    "text, named",
    [
        ('{"  ": null, "red": null}', "'  '"),
        ('{" red": null, "red": ["a red thing"]}', "' red' and 'red'"),
        ('{"red": null, "red": ["a red thing"]}', "'red'"),
    ],
)
def test_json_labels_blank_or_colliding_keys_exit_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str, named: str
) -> None:
    install_fake(monkeypatch)
    imgs = make_images(tmp_path / "imgs")
    spec = tmp_path / "labels.json"
    spec.write_text(text)
    r = invoke(["classify", str(imgs["a_red.png"]), "--labels-file", str(spec)])
    assert r.exit_code == 2 and named in r.output, r.output


@pytest.mark.parametrize("content", [[], ["notes.txt", "sub/data.csv"]])
def test_a_folder_without_images_is_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, content: list[str]
) -> None:
    loaded: list[str] = []
    monkeypatch.setattr(common, "load_model", lambda *a, **k: loaded.append("model") or FakeModel())
    folder = tmp_path / "photos"
    folder.mkdir()
    for name in content:
        (folder / name).parent.mkdir(exist_ok=True)
        (folder / name).write_text("x")
    out = tmp_path / "run.jsonl"
    r = invoke(["classify", str(folder), "-l", "cat,dog", "-o", str(out)])
    assert r.exit_code == 1
    assert r.stderr.strip().splitlines() == [
        f"Error: no images found under {str(folder)!r} (looked for .bmp, "
        ".gif, .jpeg, .jpg, .png, .tif, .tiff, .webp files, subfolders included)"
    ]
    assert not loaded and not out.exists()  # said before the model loads or the output is made
    r = invoke(["classify", "-", "-l", "cat,dog"], input=b"")
    assert r.exit_code == 1 and "no images found under standard input" in r.stderr
