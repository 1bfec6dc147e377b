"""`clip-rt ray classify --head`: a fitted head on Ray Data gives the rows `classify --head` gives,
its output is not resumed with another head or none, and a head of another bundle is refused
before Ray starts. A real local Ray (2 CPUs, 127.0.0.1), stopped by the fixture."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from clip_rt_fixtures.fake_bundle import build_fake_bundle  # noqa: E402
from clip_rt_fixtures.labelled_sets import FOUR, generated_set  # noqa: E402

pytest.importorskip("ray.data", reason="the [ray] extra (ray[data]) is not installed: pip install -e '.[ray]'")
pytest.importorskip("pyarrow")

from clip_rt.cli import main  # noqa: E402
from clip_rt.inputs.discover import path_key  # noqa: E402
from clip_rt.scale import parts  # noqa: E402
from clip_rt.scale import ray as crt_ray  # noqa: E402


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    import ray

    home = tmp_path_factory.mktemp("ray-workers-home")
    old = os.environ.get("CLIP_RT_HOME")
    os.environ["CLIP_RT_HOME"] = str(home)
    try:
        assert crt_ray.init(num_cpus=2, object_store_mb=256), "a Ray was already running in this process"
        yield ray.get_runtime_context().gcs_address
    finally:
        crt_ray.shutdown()
        if old is None:
            os.environ.pop("CLIP_RT_HOME", None)
        else:
            os.environ["CLIP_RT_HOME"] = old
    assert not ray.is_initialized()


def invoke(args: list[str]) -> Any:
    return CliRunner().invoke(main, args)


@pytest.mark.slow
def test_ray_classify_with_head_equals_cli(ray_cluster: str, tmp_path: Path) -> None:
    bundle = build_fake_bundle(tmp_path / "fake", embed_dim=32)
    other = build_fake_bundle(tmp_path / "other", embed_dim=32, seed=1)
    train, test = generated_set(tmp_path / "train", 8, seed=1), generated_set(tmp_path / "test", 3, seed=2)
    (test / "red" / "broken.png").write_bytes(b"nope")
    head = tmp_path / "shapes.head"
    assert invoke(["fit", str(train), "-m", str(bundle), "-o", str(head)]).exit_code == 0
    jsonl = tmp_path / "cli.jsonl"
    assert invoke(["classify", str(test), "-m", str(bundle), "--head", str(head), "-o", str(jsonl)]).exit_code == 1
    cli = {path_key(d["path"]): d for d in map(json.loads, jsonl.read_text().splitlines())}

    out = tmp_path / "out"
    args = ["ray", "classify", str(test), "-o", str(out), "-m", str(bundle), "--address", ray_cluster]
    r = invoke([*args, "--head", str(head), "--part-rows", "5"])
    assert r.exit_code == 1, r.output  # broken.png
    rows = {r["path"]: r for r in parts.read_table(str(out)).to_pylist()}
    assert set(rows) == set(cli) and len(rows) == 13
    labels = sorted(FOUR)
    for p, row in rows.items():
        want = cli[p]
        assert row["label"] == want["label"] and row["error"] == want["error"]
        if want["error"] is None:
            assert abs(row["score"] - want["score"]) <= 1e-6
            assert all(abs(a - want["scores"][k]) <= 1e-6 for k, a in zip(labels, row["scores"]))
    assert sum(r["label"] == os.path.basename(os.path.dirname(p)) for p, r in rows.items()) >= 11

    # Another head, or none, is refused on this output; a head of another bundle before Ray runs.
    other_head = tmp_path / "other.head"
    assert invoke(["fit", str(train), "-m", str(bundle), "-o", str(other_head), "--seed", "5"]).exit_code == 0
    r = invoke([*args, "--head", str(other_head)])
    assert r.exit_code == 1 and "head" in r.stderr, r.output
    r = invoke([*args, "-l", ",".join(labels)])
    assert r.exit_code == 1 and "head" in r.stderr, r.output
    r = invoke(["ray", "classify", str(test), "-o", str(tmp_path / "out2"), "-m", str(other), "--head", str(head)])
    assert r.exit_code == 1 and "fitted on bundle" in r.output and not (tmp_path / "out2").exists()
