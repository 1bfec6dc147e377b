"""`clip-rt index` / `clip-rt search`: incremental updates, deletions, model refusal, queries."""

from __future__ import annotations

import json
import os
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from clip_rt.cli import common, main
from clip_rt.outputs.search_index import INDEX_FILE, MARKER_FILE, SearchIndex
from test_cli_classify import FakeModel, install_fake


def invoke(args: list[str]):  # noqa: ANN201
    return CliRunner().invoke(main, args, catch_exceptions=False)


def colour_dir(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, colour in {
        "red.png": (230, 10, 10),
        "green.png": (10, 220, 10),
        "blue.png": (10, 10, 230),
        "sub/yellow.jpg": (220, 220, 10),
    }.items():
        (folder / name).parent.mkdir(exist_ok=True)
        Image.new("RGB", (32, 24), colour).save(folder / name)
    return folder


class CountingFake(FakeModel):
    def __init__(self) -> None:
        super().__init__()
        self.embedded: list[str] = []

    def iter_images(self, sources, batch_size=32):  # noqa: ANN001, ANN201
        self.embedded.extend(os.path.basename(s) for s in sources)
        return super().iter_images(sources, batch_size)


def test_index_then_search_text_and_image(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    install_fake(monkeypatch)
    imgs = colour_dir(tmp_path / "imgs")
    idx = tmp_path / "idx"
    r = invoke(["index", str(imgs), "-o", str(idx)])
    assert r.exit_code == 0, r.output
    assert "4 images indexed (4 new" in r.stderr
    meta = json.loads((idx / INDEX_FILE).read_text())
    assert meta["fingerprint"] == "f" * 32 and meta["precision"] == "fp32" and meta["count"] == 4
    emb = np.load(idx / meta["embeddings"])
    assert emb.dtype == np.float32 and emb.shape == (4, 8)

    r = invoke(["search", str(idx), "a blue square", "--top-k", "2"])
    assert r.exit_code == 0, r.output
    lines = r.stdout.splitlines()
    assert lines[0].split() == ["rank", "score", "path"]
    assert lines[1].split()[0] == "1" and lines[1].endswith("blue.png") and len(lines) == 3
    r = invoke(["search", str(idx), "--image", str(imgs / "sub" / "yellow.jpg"), "--format", "json"])
    hits = json.loads(r.stdout)
    assert hits[0]["path"].endswith("yellow.jpg") and hits[0]["score"] > 0.99 and len(hits) == 4
    assert [h["rank"] for h in hits] == [1, 2, 3, 4]
    assert hits[0]["score"] >= hits[1]["score"] >= hits[3]["score"]


def test_reindex_embeds_only_new_and_changed_drops_deleted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    imgs = colour_dir(tmp_path / "imgs")
    idx = str(tmp_path / "idx")
    fake = CountingFake()
    monkeypatch.setattr(common, "load_model", lambda *a, **k: fake)
    assert invoke(["index", str(imgs), "-o", idx]).exit_code == 0
    assert sorted(fake.embedded) == ["blue.png", "green.png", "red.png", "yellow.jpg"]

    fake.embedded.clear()
    (imgs / "green.png").unlink()
    Image.new("RGB", (10, 10), (250, 0, 250)).save(imgs / "magenta.png")
    Image.new("RGB", (40, 24), (10, 10, 200)).save(imgs / "blue.png")  # changed size
    r = invoke(["index", str(imgs), "-o", idx])
    assert r.exit_code == 0, r.output
    assert sorted(fake.embedded) == ["blue.png", "magenta.png"]
    assert "1 new, 1 changed, 1 removed, 2 unchanged" in r.stderr
    index = SearchIndex.load(idx)
    assert [e.path for e in index.entries] == ["blue.png", "magenta.png", "red.png", "sub/yellow.jpg"]
    assert (index.entries[0].width, index.entries[0].height) == (40, 24)
    assert len(list(Path(idx).glob("embeddings-*.npy"))) == 1  # the old generation is gone

    fake.embedded.clear()
    assert invoke(["index", str(imgs), "-o", idx]).exit_code == 0
    assert fake.embedded == []


def test_other_bundle_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    install_fake(monkeypatch)
    imgs = colour_dir(tmp_path / "imgs")
    idx = str(tmp_path / "idx")
    assert invoke(["index", str(imgs), "-o", idx]).exit_code == 0
    monkeypatch.setattr(common, "load_model", lambda *a, **k: FakeModel(name="other", fingerprint="0" * 32))
    r = invoke(["index", str(imgs), "-o", idx])
    assert r.exit_code == 1 and "fingerprint" in r.output and "--rebuild" in r.output
    r = invoke(["search", idx, "red", "--model", "other"])
    assert r.exit_code == 1 and "was built with bundle 'fake-bundle'" in r.output
    r = invoke(["index", str(imgs), "-o", idx, "--rebuild"])
    assert r.exit_code == 0 and SearchIndex.load(idx).fingerprint == "0" * 32


def test_unreadable_image_is_left_out_exit_1(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    install_fake(monkeypatch)
    imgs = colour_dir(tmp_path / "imgs")
    (imgs / "broken.png").write_bytes(b"garbage")
    r = invoke(["index", str(imgs), "-o", str(tmp_path / "idx")])
    assert r.exit_code == 1
    assert "4 images indexed" in r.stderr and "1 failed" in r.stderr and "broken.png" in r.stderr
    assert len(SearchIndex.load(str(tmp_path / "idx")).entries) == 4


def test_search_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    install_fake(monkeypatch)
    imgs = colour_dir(tmp_path / "imgs")
    idx = str(tmp_path / "idx")
    assert invoke(["index", str(imgs), "-o", idx]).exit_code == 0
    assert invoke(["search", idx]).exit_code == 2  # no query
    assert invoke(["search", idx, "red", "--image", str(imgs / "red.png")]).exit_code == 2
    assert invoke(["search", idx, "red", "--top-k", "0"]).exit_code == 2
    r = invoke(["search", str(imgs), "red"])
    assert r.exit_code == 1 and "not a clip-rt index" in r.output


def test_missing_model_hint(tmp_path: Path) -> None:
    imgs = colour_dir(tmp_path / "imgs")
    r = CliRunner().invoke(main, ["index", str(imgs), "-o", str(tmp_path / "idx")])
    assert r.exit_code == 1 and "clip-rt export" in r.output


def test_real_bundle_index_and_search(real_bundle: Path, tmp_path: Path) -> None:
    imgs = colour_dir(tmp_path / "imgs")
    idx = str(tmp_path / "idx")
    r = CliRunner().invoke(main, ["index", str(imgs), "-o", idx, "--model", str(real_bundle)])
    assert r.exit_code == 0, r.output
    # No --model: search uses the bundle directory recorded in the index.
    r = CliRunner().invoke(main, ["search", idx, "--image", str(imgs / "red.png"), "--format", "json"])
    assert r.exit_code == 0, r.output
    hits = json.loads(r.stdout)
    assert hits[0]["path"].endswith("red.png") and hits[0]["score"] == pytest.approx(1, abs=1e-4)
    r = CliRunner().invoke(main, ["search", idx, "a photo of a red car", "-k", "2"])
    assert r.exit_code == 0 and len(r.stdout.splitlines()) == 3


@pytest.mark.skipif(sys.platform != "linux", reason="non-UTF-8 file names are a POSIX byte-name feature")
def test_non_utf8_names_round_trip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    install_fake(monkeypatch)
    imgs = colour_dir(tmp_path / "imgs")
    raw = os.path.join(os.fsencode(imgs), b"caf\xe9.png")
    Image.new("RGB", (8, 8), (250, 0, 250)).save(os.fsdecode(raw), format="PNG")
    idx = str(tmp_path / "idx")
    assert invoke(["index", str(imgs), "-o", idx]).exit_code == 0
    (tmp_path / "idx" / INDEX_FILE).read_bytes().decode("utf-8")  # still valid UTF-8
    index = SearchIndex.load(idx)
    assert os.fsencode(index.abs_path(index.entries[1])) == raw  # sorted: blue, caf\xe9, green...
    r = invoke(["index", str(imgs), "-o", idx])
    assert "5 unchanged" in r.stderr  # the odd name matched its stored entry
    r = invoke(["search", idx, "--image", os.fsdecode(raw), "-k", "1"])
    assert "caf\\xe9.png" in r.stdout


def _npy_header_claiming(shape: tuple[int, ...], dtype: str = "<f4") -> bytes:
    import io

    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": dtype, "fortran_order": False, "shape": shape})
    return buf.getvalue() + b"\0" * 64


@pytest.mark.parametrize(
    "damage",
    [
        "json_missing_key",
        "json_list",
        "entry_keys",
        "npy_missing",
        "npy_garbage",
        "npy_empty",
        "json_folder",
        "npy_folder",
        "entries_dict",
        "entry_size_str",
        "entry_path_int",
        "embed_dim_str",
        "root_int",
        "npy_huge_header",
        "npy_nan",
        "npy_int",
        "npy_object",
    ],
)
def test_damaged_index_is_one_line_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, damage: str) -> None:
    install_fake(monkeypatch)
    imgs = colour_dir(tmp_path / "imgs")
    idx = tmp_path / "idx"
    assert invoke(["index", str(imgs), "-o", str(idx)]).exit_code == 0
    meta_path = idx / INDEX_FILE
    meta = json.loads(meta_path.read_text())
    npy = idx / meta["embeddings"]
    if damage == "json_missing_key":
        del meta["entries"]
        meta_path.write_text(json.dumps(meta))
    elif damage == "json_list":
        meta_path.write_text("[1, 2]")
    elif damage == "entry_keys":
        meta["entries"][0] = {"path": "red.png"}
        meta_path.write_text(json.dumps(meta))
    elif damage == "npy_missing":
        npy.unlink()
    elif damage == "npy_garbage":
        npy.write_bytes(b"not an npy file at all")
    elif damage == "npy_empty":
        npy.write_bytes(b"")
    elif damage == "json_folder":
        meta_path.unlink()
        meta_path.mkdir()
    elif damage == "npy_folder":
        npy.unlink()
        npy.mkdir()
    elif damage.startswith(("entr", "embed", "root")):
        if damage == "entries_dict":
            meta["entries"] = {"red.png": 1}
        elif damage == "entry_size_str":
            meta["entries"][1]["size"] = "12"
        elif damage == "entry_path_int":
            meta["entries"][1]["path"] = 7
        elif damage == "embed_dim_str":
            meta["embed_dim"] = "8"
        else:
            meta["root"] = 5
        meta_path.write_text(json.dumps(meta))
    elif damage == "npy_huge_header":  # a header claiming 20 TB: refused before any allocation
        npy.write_bytes(_npy_header_claiming((10**10, 512)))
    elif damage == "npy_nan":
        emb = np.load(npy)
        emb[2, :] = np.nan
        np.save(npy, emb)
    elif damage == "npy_int":
        np.save(npy, np.zeros((4, 8), np.int64))
    else:
        np.save(npy, np.array([None] * 4, dtype=object).reshape(4, 1), allow_pickle=True)
    for args in (["search", str(idx), "red"], ["index", str(imgs), "-o", str(idx)]):
        r = CliRunner().invoke(main, args)
        assert r.exit_code == 1, (args, r.output, r.exc_info)
        assert isinstance(r.exception, SystemExit)  # a ClickException, not a traceback
        lines = r.output.strip().splitlines()
        assert len(lines) == 1 and "damaged" in lines[0] and "--rebuild" in lines[0], r.output
    r = invoke(["index", str(imgs), "-o", str(idx), "--rebuild"])  # the hint works
    assert r.exit_code == 0 and len(SearchIndex.load(str(idx)).entries) == 4
    assert invoke(["search", str(idx), "red"]).exit_code == 0


def test_update_cleans_what_a_crash_left(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    install_fake(monkeypatch)
    imgs = colour_dir(tmp_path / "imgs")
    idx = tmp_path / "idx"
    assert invoke(["index", str(imgs), "-o", str(idx)]).exit_code == 0
    left = [".embeddings-2.npy.999-1.tmp", ".index.json.999-1.tmp", "embeddings-0.npy", "embeddings-7.npy"]
    for name in left:
        (idx / name).write_bytes(b"half written")
    Image.new("RGB", (8, 8), (1, 2, 3)).save(imgs / "new.png")
    r = invoke(["index", str(imgs), "-o", str(idx)])
    assert r.exit_code == 0, r.output
    meta = json.loads((idx / INDEX_FILE).read_text())
    assert sorted(os.listdir(idx)) == sorted([".lock", MARKER_FILE, INDEX_FILE, meta["embeddings"]])
    assert len(SearchIndex.load(str(idx)).entries) == 5


def test_full_disk_during_an_update_keeps_the_index(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import subprocess

    install_fake(monkeypatch)
    imgs = colour_dir(tmp_path / "imgs")
    idx = tmp_path / "idx"
    assert invoke(["index", str(imgs), "-o", str(idx)]).exit_code == 0
    before = {p.name: p.read_bytes() for p in idx.iterdir()}
    for i in range(30):
        Image.new("RGB", (8, 8), (i, 2 * i, 3)).save(imgs / f"n{i}.png")
    tests = Path(__file__).resolve().parent
    code = (
        "import resource, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
        "resource.setrlimit(resource.RLIMIT_FSIZE, (600, 600)); "
        f"sys.path.insert(0, {str(tests)!r}); import test_cli_classify as t; t.run_cli_with_fake(0)"
    )
    p = subprocess.run(
        [sys.executable, "-c", code, "index", str(imgs), "-o", str(idx)],
        capture_output=True,
        timeout=120,
        env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
    )
    err = p.stderr.decode()
    assert p.returncode == 1 and err.startswith("Error: cannot write index") and "File too large" in err, err
    assert len(err.strip().splitlines()) == 1
    assert {q.name: q.read_bytes() for q in idx.iterdir()} == before
    assert invoke(["search", str(idx), "red"]).exit_code == 0


def test_load_retries_when_an_update_replaced_the_embeddings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A search that read index.json just before an update replaced it (and deleted the
    embeddings file it named) re-reads index.json instead of crashing."""
    import clip_rt.outputs.search_index as si

    install_fake(monkeypatch)
    imgs = colour_dir(tmp_path / "imgs")
    idx = tmp_path / "idx"
    assert invoke(["index", str(imgs), "-o", str(idx)]).exit_code == 0
    current = (idx / INDEX_FILE).read_text()
    stale = json.loads(current)
    stale["embeddings"], stale["generation"] = "embeddings-0.npy", 0  # the generation the update deleted
    (idx / INDEX_FILE).write_text(json.dumps(stale))
    real_load = np.load
    calls: list[str] = []

    def load_then_finish_update(path, *a, **k):  # noqa: ANN001, ANN202
        calls.append(os.path.basename(path))
        if len(calls) == 1:
            (idx / INDEX_FILE).write_text(current)  # the update commits while we read
        return real_load(path, *a, **k)

    monkeypatch.setattr(si.np, "load", load_then_finish_update)
    index = SearchIndex.load(str(idx))
    assert calls == ["embeddings-0.npy", "embeddings-1.npy"]
    assert index.generation == 1 and len(index.entries) == 4


class RendezvousFake(FakeModel):
    """Waits (up to 1 s) inside the update for the other update to get there too: without a
    lock both read the same generation; with it the second waits for the first to finish."""

    def __init__(self, here: threading.Event, other: threading.Event) -> None:
        super().__init__()
        self.here, self.other = here, other

    def iter_images(self, sources, batch_size=32):  # noqa: ANN001, ANN201
        self.here.set()
        self.other.wait(1.0)
        return super().iter_images(sources, batch_size)


def test_overlapping_updates_are_serialised(tmp_path: Path) -> None:

    from clip_rt.outputs.search_index import update_index

    imgs = colour_dir(tmp_path / "imgs")
    idx = str(tmp_path / "idx")
    update_index(idx, str(imgs), FakeModel())  # generation 1
    Image.new("RGB", (10, 10), (250, 0, 250)).save(imgs / "magenta.png")
    a, b = threading.Event(), threading.Event()
    errors: list[BaseException] = []

    def run(model: FakeModel) -> None:
        try:
            update_index(idx, str(imgs), model)
        except BaseException as exc:  # noqa: BLE001  (reported by the assert below)
            errors.append(exc)

    threads = [
        threading.Thread(target=run, args=(RendezvousFake(a, b),)),
        threading.Thread(target=run, args=(RendezvousFake(b, a),)),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert errors == []
    index = SearchIndex.load(idx)
    assert index.generation == 3  # two updates, one after the other, each a new generation
    assert [e.path for e in index.entries] == ["blue.png", "green.png", "magenta.png", "red.png", "sub/yellow.jpg"]
    leftovers = sorted(p.name for p in Path(idx).iterdir())
    assert leftovers == [MARKER_FILE, ".lock", "embeddings-3.npy", INDEX_FILE]


def test_unlistable_folder_keeps_its_entries_exit_1(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A subfolder that cannot be listed on a re-index is named and exits 1; the entries indexed
    under it earlier stay (its files are not known to be gone)."""
    install_fake(monkeypatch)
    imgs = colour_dir(tmp_path / "imgs")
    idx = str(tmp_path / "idx")
    assert invoke(["index", str(imgs), "-o", idx]).exit_code == 0
    before = SearchIndex.load(idx)
    Image.new("RGB", (10, 10), (250, 0, 250)).save(imgs / "magenta.png")
    real_scandir = os.scandir

    def scandir(path="."):  # noqa: ANN001, ANN202  (root ignores permission bits: fail the listing here)
        if os.path.abspath(os.fspath(path)) == str(imgs / "sub"):
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    r = invoke(["index", str(imgs), "-o", idx])
    assert r.exit_code == 1, r.output
    assert f"failed: {imgs / 'sub'}: cannot list folder: Permission denied" in r.stderr
    assert "0 removed" in r.stderr and "1 kept from folders that could not be listed" in r.stderr
    index = SearchIndex.load(idx)
    assert [e.path for e in index.entries] == ["blue.png", "green.png", "magenta.png", "red.png", "sub/yellow.jpg"]
    old_row = before.embeddings[[e.path for e in before.entries].index("sub/yellow.jpg")]
    assert np.array_equal(index.embeddings[4], old_row)
    monkeypatch.setattr(os, "scandir", real_scandir)
    (imgs / "sub" / "yellow.jpg").unlink()  # listable again: a deleted file is dropped as usual
    r = invoke(["index", str(imgs), "-o", idx])
    assert r.exit_code == 0 and "1 removed" in r.stderr
    assert [e.path for e in SearchIndex.load(idx).entries] == ["blue.png", "green.png", "magenta.png", "red.png"]


def test_empty_folder_is_an_error_and_leaves_the_index(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    install_fake(monkeypatch)
    imgs = colour_dir(tmp_path / "imgs")
    idx = tmp_path / "idx"
    assert invoke(["index", str(imgs), "-o", str(idx)]).exit_code == 0
    before = {p.name: p.read_bytes() for p in idx.iterdir() if p.is_file()}
    for p in list(imgs.rglob("*.*")):
        p.unlink()
    (imgs / "readme.txt").write_text("no images here")
    r = invoke(["index", str(imgs), "-o", str(idx)])
    assert r.exit_code == 1
    assert r.stderr.strip().splitlines() == [
        f"Error: no images found under {str(imgs)!r} (looked for .bmp, .gif, "
        ".jpeg, .jpg, .png, .tif, .tiff, .webp files, subfolders included)"
    ]
    assert {p.name: p.read_bytes() for p in idx.iterdir() if p.is_file()} == before


def test_search_shows_paths_relative_to_the_current_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    install_fake(monkeypatch)
    colour_dir(tmp_path / "work" / "imgs")
    monkeypatch.chdir(tmp_path / "work")
    assert invoke(["index", "imgs", "-o", "idx"]).exit_code == 0
    r = invoke(["search", "idx", "a blue square", "--format", "json"])
    assert sorted(h["path"] for h in json.loads(r.stdout)) == sorted(
        ["imgs/red.png", "imgs/green.png", "imgs/blue.png", os.path.join("imgs", "sub", "yellow.jpg")]
    )
    classified = invoke(["classify", "imgs", "-l", "red,blue", "--format", "json"])
    assert sorted(rec["path"] for rec in json.loads(classified.stdout)) == sorted(
        h["path"] for h in json.loads(r.stdout)
    )  # the same paths as `classify` shows
    table = invoke(["search", "idx", "a blue square"]).stdout.splitlines()[1:]
    assert sorted(line.split()[-1] for line in table) == sorted(h["path"] for h in json.loads(r.stdout))
    # Outside the current folder: absolute, as stored.
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    r = invoke(["search", str(tmp_path / "work" / "idx"), "a blue square", "--format", "json"])
    assert all(os.path.isabs(h["path"]) for h in json.loads(r.stdout))
