"""Ray Data jobs (`clip-rt ray embed|classify`, clip_rt.scale): a real local Ray (2 CPUs, on
127.0.0.1, stopped by the fixture), results against the single-machine CLI, resume after a
killed driver, damaged parts. Skipped, with the reason, only where the [ray] extra is missing."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from clip_rt_fixtures.fake_bundle import build_fake_bundle

pytest.importorskip("ray.data", reason="the [ray] extra (ray[data]) is not installed: pip install -e '.[ray]'")
pa = pytest.importorskip("pyarrow")

from clip_rt.cli import main
from clip_rt.inputs.discover import path_key
from clip_rt.scale import parts
from clip_rt.scale import ray as crt_ray


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    """A local Ray with 2 CPUs on 127.0.0.1 for this module; its workers get a clip-rt home of
    their own (they inherit the environment when Ray starts)."""
    import ray

    home = tmp_path_factory.mktemp("ray-workers-home")
    old = os.environ.get("CLIP_RT_HOME")
    os.environ["CLIP_RT_HOME"] = str(home)
    try:
        started = crt_ray.init(num_cpus=2, object_store_mb=256)
        assert started, "a Ray was already running in this process"
        address = ray.get_runtime_context().gcs_address
        assert address.startswith("127.0.0.1:"), address
        yield address
    finally:
        crt_ray.shutdown()
        if old is None:
            os.environ.pop("CLIP_RT_HOME", None)
        else:
            os.environ["CLIP_RT_HOME"] = old
    assert not ray.is_initialized()


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_fake_bundle(tmp_path_factory.mktemp("bundle") / "fake-clip")


def photo_dir(folder: Path, n: int = 14) -> Path:
    """Good images of several sizes and modes, in a tree, plus the usual broken files."""
    rng = np.random.default_rng(0)
    (folder / "sub").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        arr = rng.integers(0, 255, size=(18 + i, 24 + 2 * i, 3), dtype=np.uint8)
        name = folder / ("sub" if i % 3 == 0 else "") / f"img{i:03d}.{'png' if i % 2 else 'jpg'}"
        Image.fromarray(arr).save(name)
    (folder / "notes.jpg").write_text("not a jpeg at all")
    (folder / "empty.png").write_bytes(b"")
    good = folder / "img001.png"
    (folder / "truncated.png").write_bytes(good.read_bytes()[:60])
    return folder


def invoke(args: list[str]) -> Any:
    return CliRunner().invoke(main, args, catch_exceptions=False)


def rows_by_path(out: Path) -> dict[str, dict[str, Any]]:
    table = parts.read_table(str(out))
    rows = table.to_pylist()
    paths = [r["path"] for r in rows]
    assert len(paths) == len(set(paths)), "a path was written twice"
    return {r["path"]: r for r in rows}


@pytest.mark.slow
def test_embed_equals_cli_index_and_reports_bad_files(ray_cluster: str, bundle: Path, tmp_path: Path) -> None:
    imgs = photo_dir(tmp_path / "photos")
    r = invoke(["index", str(imgs), "-o", str(tmp_path / "idx"), "-m", str(bundle)])
    assert r.exit_code == 1  # the broken files
    meta = json.loads((tmp_path / "idx" / "index.json").read_text())
    cli = np.load(tmp_path / "idx" / meta["embeddings"])
    cli_by_path = {path_key(os.path.join(meta["root"], e["path"])): (cli[i], e) for i, e in enumerate(meta["entries"])}

    out = tmp_path / "out"
    r = invoke(
        ["ray", "embed", str(imgs), "-o", str(out), "-m", str(bundle), "--part-rows", "4", "--address", ray_cluster]
    )
    assert r.exit_code == 1, r.output
    assert "17 images in" in r.stderr and "3 failed" in r.stderr
    assert "notes.jpg: not an image" in r.stderr
    rows = rows_by_path(out)
    assert len(rows) == 17
    ok = {p: row for p, row in rows.items() if row["error"] is None}
    assert set(ok) == set(cli_by_path)
    worst = 0.0
    for p, row in ok.items():
        emb, entry = cli_by_path[p]
        worst = max(worst, float(np.abs(np.asarray(row["embedding"], np.float32) - emb).max()))
        assert (row["width"], row["height"]) == (entry["width"], entry["height"])
    assert worst <= 1e-6, worst
    bad = {os.path.basename(p): row for p, row in rows.items() if row["error"] is not None}
    assert set(bad) == {"notes.jpg", "empty.png", "truncated.png"}
    assert all(row["embedding"] is None and row["width"] is None for row in bad.values())
    # Parts are finished files only, named by content; the job description is beside them.
    names = sorted(p.name for p in out.iterdir())
    assert names[0] == parts.JOB_FILE and all(n.startswith("part-") and n.endswith(".parquet") for n in names[1:])
    t = parts.read_table(str(out))
    assert t.schema.field("embedding").type == pa.list_(pa.float32(), 8)
    assert json.loads(t.schema.metadata[parts.METADATA_KEY])["fingerprint"] == meta["fingerprint"]


@pytest.mark.slow
def test_classify_equals_cli_classify(ray_cluster: str, bundle: Path, tmp_path: Path) -> None:
    imgs = photo_dir(tmp_path / "photos", n=9)
    jsonl = tmp_path / "run.jsonl"
    args = ["-l", "cat,dog,car,tree", "--template", "a photo of a {}.", "--template", "a {}", "-m", str(bundle)]
    r = invoke(["classify", str(imgs), "-o", str(jsonl), *args])
    assert r.exit_code == 1
    cli = {path_key(d["path"]): d for d in map(json.loads, jsonl.read_text().splitlines())}

    out = tmp_path / "out"
    r = invoke(
        [
            "ray",
            "classify",
            str(imgs),
            "-o",
            str(out),
            *args,
            "--actors",
            "2",
            "--part-rows",
            "5",
            "--address",
            ray_cluster,
        ]
    )
    assert r.exit_code == 1, r.output
    rows = rows_by_path(out)
    assert set(rows) == set(cli)
    for p, row in rows.items():
        want = cli[p]
        assert row["label"] == want["label"]
        assert row["error"] == want["error"]
        if want["error"] is None:
            assert abs(row["score"] - want["score"]) <= 1e-6
            got = dict(zip(["cat", "dog", "car", "tree"], row["scores"]))
            assert all(abs(got[k] - v) <= 1e-6 for k, v in want["scores"].items())
        else:
            assert row["scores"] is None and row["score"] is None

    # A rerun does nothing new; other labels are refused before any work.
    r = invoke(["ray", "classify", str(imgs), "-o", str(out), *args, "--address", ray_cluster])
    assert "(0 new, 12 already done)" in r.stderr, r.output
    r = invoke(
        ["ray", "classify", str(imgs), "-o", str(out), "-l", "cat,dog", "-m", str(bundle), "--address", ray_cluster]
    )
    assert r.exit_code == 1 and "written by a different run" in r.stderr and "labels" in r.stderr


@pytest.mark.slow
def test_ship_bundle_and_bytes_input_give_the_same_rows(ray_cluster: str, bundle: Path, tmp_path: Path) -> None:
    import ray

    imgs = photo_dir(tmp_path / "photos", n=6)
    ref = crt_ray.embed_images([str(imgs)], model=str(bundle)).to_arrow_refs()
    base = {r["path"]: r for r in pa.concat_tables(ray.get(ref)).to_pylist()}
    shipped = crt_ray.embed_images([str(imgs)], model=str(bundle), ship_bundle=True).take_all()
    assert {r["path"]: r["embedding"] for r in shipped} == {p: r["embedding"] for p, r in base.items()}
    # Image bytes read by Ray (as for s3:// inputs): same embeddings, errors name the file.
    ds = ray.data.read_binary_files(str(imgs), include_paths=True)
    via_bytes = {path_key(r["path"]): r for r in crt_ray.embed_images(ds, model=str(bundle)).take_all()}
    assert set(via_bytes) == set(base)
    for p, r in via_bytes.items():
        assert r["embedding"] == base[p]["embedding"]
        assert (r["error"] is None) == (base[p]["error"] is None)
        if r["error"]:
            assert r["error"].startswith(r["path"] + ": ")


KILLED_DRIVER = textwrap.dedent("""
    import sys, time
    import ray
    from clip_rt.scale import ray as crt_ray

    address, folder, out, bundle = sys.argv[1:5]
    crt_ray.init(address)
    def slow(row):
        time.sleep(0.15)  # a slow reader: the job is still running when the test kills it
        return row
    rows = crt_ray.local_rows([folder])
    ds = ray.data.from_items(rows, override_num_blocks=len(rows)).map(slow, num_cpus=0)
    crt_ray.run_job(ds, out, bundle, part_rows=3, actors=1)
    print("finished")
""")


@pytest.mark.slow
def test_killed_driver_then_rerun_loses_and_duplicates_nothing(ray_cluster: str, bundle: Path, tmp_path: Path) -> None:
    imgs = photo_dir(tmp_path / "photos", n=40)
    out = tmp_path / "out"
    script = tmp_path / "driver.py"
    script.write_text(KILLED_DRIVER)
    proc = subprocess.Popen(
        [sys.executable, str(script), ray_cluster, str(imgs), str(out), str(bundle)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and proc.poll() is None:
            if out.is_dir() and len(parts.finished_parts(str(out))) >= 2:
                break
            time.sleep(0.1)
        assert proc.poll() is None, proc.communicate()[1].decode()[-3000:]
        os.killpg(proc.pid, signal.SIGKILL)  # the driver and anything it spawned
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
    before = {p.name for p in parts.finished_parts(str(out))}
    assert 2 <= len(before) and len(parts.read_table(str(out))) < 43
    # What a kill mid-write leaves: a temporary part. It must never count as done.
    (out / ".part-0000.parquet.tmp-dead").write_bytes(b"PAR1 half a file")

    r = invoke(
        ["ray", "embed", str(imgs), "-o", str(out), "-m", str(bundle), "--part-rows", "3", "--address", ray_cluster]
    )
    assert r.exit_code == 1, r.output  # the 3 broken files
    rows = rows_by_path(out)  # asserts no duplicates
    expected = {path_key(str(p)) for p in imgs.rglob("*") if p.is_file()}
    assert set(rows) == expected
    assert before <= {p.name for p in parts.finished_parts(str(out))}  # finished parts were kept
    assert not [p for p in out.iterdir() if parts.TMP_MARK in p.name]


@pytest.mark.slow
def test_damaged_part_is_moved_aside_and_redone(ray_cluster: str, bundle: Path, tmp_path: Path) -> None:
    imgs = photo_dir(tmp_path / "photos", n=6)
    out = tmp_path / "out"
    assert (
        invoke(
            ["ray", "embed", str(imgs), "-o", str(out), "-m", str(bundle), "--part-rows", "3", "--address", ray_cluster]
        ).exit_code
        == 1
    )
    victim = parts.finished_parts(str(out))[0]
    victim.write_bytes(victim.read_bytes()[:100])  # a final-named file that is not whole
    with pytest.raises(Exception, match="not a readable Parquet part"):
        parts.read_table(str(out))
    r = invoke(
        ["ray", "embed", str(imgs), "-o", str(out), "-m", str(bundle), "--part-rows", "3", "--address", ray_cluster]
    )
    assert "moved aside" in r.stderr and r.exit_code == 1
    assert set(rows_by_path(out)) == {path_key(str(p)) for p in imgs.rglob("*") if p.is_file()}
    assert (out / (victim.name + parts.DAMAGED_SUFFIX)).exists()


def test_output_folder_checks(tmp_path: Path, bundle: Path) -> None:
    from clip_rt.bundle.manifest import read_manifest
    from clip_rt.errors import InputError

    ident = parts.identity("embed", read_manifest(bundle), "fp32")
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("x")
    with pytest.raises(InputError, match="not a clip-rt job"):
        parts.prepare_output(str(foreign), ident)
    out = tmp_path / "out"
    parts.prepare_output(str(out), ident)
    (out / ".part-abc.parquet.tmp-1").write_bytes(b"partial")
    parts.prepare_output(str(out), ident)
    assert sorted(p.name for p in out.iterdir()) == [parts.JOB_FILE]
    with pytest.raises(InputError, match="different run.*precision"):
        parts.prepare_output(str(out), {**ident, "precision": "fp16"})
    parts.prepare_output(str(out), {**ident, "precision": "fp16"}, overwrite=True)
    assert parts.read_job(str(out))["precision"] == "fp16"
    # The part name follows its content, so a retried write replaces instead of duplicating.
    assert parts.part_name(["a", "b"]) == parts.part_name(["a", "b"]) != parts.part_name(["a", "c"])


def test_cli_without_ray_says_how_to_install(hide_module, tmp_path: Path, bundle: Path) -> None:  # noqa: ANN001
    hide_module("ray")
    r = invoke(["ray", "embed", str(tmp_path), "-o", str(tmp_path / "out"), "-m", str(bundle)])
    assert r.exit_code == 1 and "pip install 'clip-rt[ray]'" in r.stderr


def test_a_source_without_images_fails_before_the_output_is_made(tmp_path: Path, bundle: Path) -> None:
    from clip_rt.errors import InputError

    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("not an image")
    with pytest.raises(InputError, match="no images found under '.*empty'"):
        crt_ray.local_rows(str(empty))
    out = tmp_path / "out"
    with pytest.raises(InputError, match="no images found"):
        crt_ray.run_job(str(empty), out, bundle)
    assert not out.exists()


def test_a_local_run_starts_its_own_ray_even_beside_another_local_cluster(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without an address, Ray would join a local cluster another program started (its
    ray_current_cluster file) and then refuse num_cpus: a local run asks for a Ray of its own."""
    ray = pytest.importorskip("ray")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    seen: dict[str, Any] = {}

    class Stop(Exception):
        pass

    def fake_init(**kwargs: Any) -> None:
        seen.update(kwargs)
        raise Stop

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", fake_init)
    with pytest.raises(Stop):
        crt_ray.init(num_cpus=1)
    assert seen["address"] == "local" and seen["num_cpus"] == 1
