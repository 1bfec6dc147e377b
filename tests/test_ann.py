"""ANN search (clip_rt.outputs.ann) over an index and a Parquet output: recall against exact
search, the on-disk format and its version, staleness, damage, and `clip-rt search --method`."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from clip_rt.cli import main
from clip_rt.outputs import ann
from clip_rt.outputs.collection import open_collection
from clip_rt.outputs.search_index import Entry, SearchIndex
from test_cli_classify import FakeModel, install_fake

faiss = pytest.importorskip("faiss", reason="the [ann] extra (faiss-cpu) is not installed")


def clustered(n: int, dim: int, seed: int = 0, clusters: int = 40) -> np.ndarray:
    """Unit vectors around a few centres that share an offset (CLIP-like, not uniform noise)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim)) + 2.0 * rng.standard_normal(dim)
    x = centres[rng.integers(0, clusters, n)] + 0.6 * rng.standard_normal((n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def write_index(folder: Path, vectors: np.ndarray, *, fingerprint: str = "f" * 32, generation: int = 0) -> Path:
    entries = [
        Entry(path=f"img{i:06d}.jpg", size=100 + i, mtime_ns=i, width=32, height=24) for i in range(len(vectors))
    ]
    idx = SearchIndex(
        root=str(folder / "photos"),
        model="fake-bundle",
        fingerprint=fingerprint,
        precision="fp32",
        embed_dim=vectors.shape[1],
        entries=entries,
        embeddings=vectors,
        generation=generation,
    )
    idx.save(str(folder / "idx"))
    return folder / "idx"


def test_recall_at_10_against_exact(tmp_path: Path) -> None:
    base = clustered(6000, 32)
    coll = open_collection(str(write_index(tmp_path, base)))
    queries = clustered(200, 32, seed=1)
    spec = ann.AnnSpec(nprobe=8, rows_per_list=100)  # 64 lists, 8 probed: a real approximation
    assert spec.nlist(6000) == 64
    hits = 0
    for q in queries:
        approx, how = ann.search(coll, q, 10, mode="ann", spec=spec)
        exact, how_exact = ann.search(coll, q, 10, mode="exact")
        assert how == "ann" and how_exact == "exact"
        hits += len({p for _, p in approx} & {p for _, p in exact})
        # Scores of what the index finds are exact inner products (full float32 vectors are stored).
        by_path = {p: s for s, p in exact}
        for s, p in approx:
            if p in by_path:
                assert abs(s - by_path[p]) < 1e-5
    recall = hits / (10 * len(queries))
    assert recall >= 0.95, recall


def test_format_is_documented_versioned_and_rebuilt_when_stale(tmp_path: Path) -> None:
    base = clustered(3000, 16)
    folder = write_index(tmp_path, base)
    coll = open_collection(str(folder))
    messages: list[str] = []
    ann.search(coll, base[5], 3, mode="ann", on_message=messages.append)
    assert any("building the ANN index over 3000" in m for m in messages)
    meta = json.loads((folder / "ann" / ann.ANN_FILE).read_text())
    assert meta["format"] == ann.ANN_FORMAT and meta["backend"] == "faiss" and meta["metric"] == "inner_product"
    assert meta["factory"] == "IVF8,Flat" and meta["params"]["nlist"] == 8 and meta["params"]["nprobe"] == 64
    assert meta["count"] == 3000 and meta["dim"] == 16
    assert (folder / "ann" / meta["file"]).stat().st_size == meta["bytes"]

    messages.clear()  # current: opened, not rebuilt
    ((hit, _),) = [ann.search(open_collection(str(folder)), base[5], 1, mode="ann", on_message=messages.append)]
    assert messages == [] and hit[0][1].endswith("img000005.jpg")

    meta["format"] = ann.ANN_FORMAT + 1  # written by a newer clip-rt
    (folder / "ann" / ann.ANN_FILE).write_text(json.dumps(meta))
    ann.search(open_collection(str(folder)), base[5], 1, mode="ann", on_message=messages.append)
    assert any("out of date" in m for m in messages)

    # The embeddings change (an index update writes a new generation): the ANN index follows.
    changed = clustered(2500, 16, seed=3)
    write_index(tmp_path, changed, generation=1)
    messages.clear()
    hits, _ = ann.search(open_collection(str(folder)), changed[7], 1, mode="ann", on_message=messages.append)
    assert any("changed" in m for m in messages) and hits[0][1].endswith("img000007.jpg")
    assert len(list((folder / "ann").glob("vectors-*.faiss"))) == 1  # the old generation is gone


@pytest.mark.parametrize("damage", ["truncate", "zeros", "bad-json", "missing-file", "wrong-size-field"])
def test_damaged_ann_index_is_reported_and_rebuilt(tmp_path: Path, damage: str) -> None:
    base = clustered(2000, 16)
    folder = write_index(tmp_path, base)
    ann.search(open_collection(str(folder)), base[0], 1, mode="ann")
    meta_path = folder / "ann" / ann.ANN_FILE
    meta = json.loads(meta_path.read_text())
    graph = folder / "ann" / meta["file"]
    if damage == "truncate":
        graph.write_bytes(graph.read_bytes()[: graph.stat().st_size // 2])
    elif damage == "zeros":
        graph.write_bytes(b"\0" * graph.stat().st_size)
    elif damage == "bad-json":
        meta_path.write_text("{not json")
    elif damage == "missing-file":
        graph.unlink()
    else:
        meta["bytes"] = "many"
        meta_path.write_text(json.dumps(meta))
    with pytest.raises(Exception, match="damaged"):
        ann.open_ann(str(folder / "ann"), open_collection(str(folder)))
    with pytest.warns(RuntimeWarning, match="damaged"):
        hits, how = ann.search(open_collection(str(folder)), base[11], 1, mode="ann")
    assert how == "ann" and hits[0][1].endswith("img000011.jpg")
    ann.open_ann(str(folder / "ann"), open_collection(str(folder)))  # sound again


def test_auto_mode_threshold_and_missing_faiss(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, hide_module) -> None:  # noqa: ANN001
    base = clustered(500, 16)
    folder = write_index(tmp_path, base)
    monkeypatch.setattr(ann, "EXACT_BELOW", 1000)
    assert ann.search(open_collection(str(folder)), base[0], 3)[1] == "exact"
    monkeypatch.setattr(ann, "EXACT_BELOW", 100)
    assert ann.search(open_collection(str(folder)), base[0], 3)[1] == "ann"
    hide_module("faiss")
    messages: list[str] = []
    assert ann.search(open_collection(str(folder)), base[0], 3, on_message=messages.append)[1] == "exact"
    assert "install clip-rt[ann]" in messages[0]
    with pytest.raises(ann.AnnUnavailable, match=r"pip install 'clip-rt\[ann\]'"):
        ann.search(open_collection(str(folder)), base[0], 3, mode="ann")


def test_cli_search_methods_on_index_and_parquet(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pa = pytest.importorskip("pyarrow")
    from clip_rt.scale import parts

    install_fake(monkeypatch)
    fake = FakeModel()
    base = clustered(3000, 8)
    colours = fake.encode_text(["red", "green", "blue"])
    base[:3] = colours  # rows that match the queries exactly
    folder = write_index(tmp_path, base)

    def run(target: Path, method: str) -> list[dict]:
        r = CliRunner().invoke(
            main, ["search", str(target), "green", "-k", "5", "--format", "json", "--method", method]
        )
        assert r.exit_code == 0, r.output
        return json.loads(r.stdout)

    exact, approx = run(folder, "exact"), run(folder, "ann")
    assert exact[0]["path"].endswith("img000001.jpg") and exact[0]["score"] == pytest.approx(1.0, abs=1e-5)
    assert [h["path"] for h in approx] == [h["path"] for h in exact]

    # The same vectors as a `clip-rt ray` output (two parts, and a failed row without embedding).
    out = tmp_path / "out"
    ident = {
        "format": parts.JOB_FORMAT,
        "kind": "embed",
        "model": "fake-bundle",
        "fingerprint": "f" * 32,
        "precision": "fp32",
        "embed_dim": 8,
        "bundle_dir": None,
    }
    parts.prepare_output(str(out), ident)
    schema = parts.schema(ident)
    for lo, hi in ((0, 1500), (1500, 3000)):
        rows = {
            "path": [f"/data/img{i:06d}.jpg" for i in range(lo, hi)],
            "width": [32] * (hi - lo),
            "height": [24] * (hi - lo),
            "embedding": list(base[lo:hi]),
            "error": [None] * (hi - lo),
        }
        parts.write_part(str(out), pa.Table.from_pydict(rows, schema=schema))
    parts.write_part(
        str(out),
        pa.Table.from_pydict(
            {
                "path": ["/data/broken.jpg"],
                "width": [None],
                "height": [None],
                "embedding": [None],
                "error": ["/data/broken.jpg: not an image"],
            },
            schema=schema,
        ),
    )
    assert open_collection(str(out)).count == 3000
    pexact, papprox = run(out, "exact"), run(out, "ann")
    assert [h["path"] for h in pexact] == ["/data/" + Path(h["path"]).name for h in exact]
    assert [h["path"] for h in papprox] == [h["path"] for h in pexact]
    assert (out / "_ann" / ann.ANN_FILE).exists()
    # Another model is refused, as for an index.
    monkeypatch.setattr("clip_rt.cli.common.load_model", lambda *a, **k: FakeModel(fingerprint="0" * 32))
    r = CliRunner().invoke(main, ["search", str(out), "green"])
    assert r.exit_code == 1 and "fingerprint" in r.output


def test_exact_search_ties_and_small_k() -> None:
    vecs = np.array([[1, 0], [1, 0], [0, 1]], dtype=np.float32)
    scores, rows = ann.exact_search(vecs, np.array([1, 0], np.float32), 5)
    assert rows.tolist() == [0, 1, 2] and scores.tolist() == [1, 1, 0]


def test_cli_and_modules_import_no_optional_extra() -> None:
    import subprocess

    code = (
        "import sys, clip_rt.cli, clip_rt.outputs.ann, clip_rt.outputs.collection, clip_rt.scale.parts, "
        "clip_rt.scale.ray; print([m for m in ('ray', 'pyarrow', 'faiss', 'torch') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
