"""`clip-rt serve --head NAME=FILE`: /classify with a fitted head over real HTTP (a subprocess on
a free loopback port, stopped by the fixture), and the heads refused before the port is bound."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")

import clip_rt  # noqa: E402
from clip_rt.cli import main  # noqa: E402
from clip_rt_fixtures.fake_bundle import build_fake_bundle  # noqa: E402
from clip_rt_fixtures.labelled_sets import FOUR, generated_set  # noqa: E402
from clip_rt_fixtures.server import Server, b64, call  # noqa: E402


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("serve-head")
    bundle = build_fake_bundle(root / "fake", embed_dim=32)
    other = build_fake_bundle(root / "other", embed_dim=32, seed=1)
    train, test = generated_set(root / "train", 10, seed=1), generated_set(root / "test", 3, seed=2)
    head = root / "shapes.head"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CLIP_RT_HOME", str(root / "home-fit"))
        r = CliRunner().invoke(main, ["fit", str(train), "-m", str(bundle), "-o", str(head)])
    assert r.exit_code == 0, r.output
    server = Server([str(bundle), "--head", f"shapes={head}", "--max-wait-ms", "2"], root / "home-server")
    with server:
        yield {"bundle": bundle, "other": other, "head": head, "test": test, "server": server, "root": root}


def post(env: dict[str, Any], body: Any) -> tuple[int, dict[str, str], Any]:
    return call(env["server"], "POST", "/classify", body)


def test_classify_with_a_head_equals_the_api(env: dict[str, Any]) -> None:
    photos = [sorted((env["test"] / c).iterdir())[0] for c in FOUR]
    want = clip_rt.load(env["bundle"], cache=False).classify(photos, head=env["head"], top_k=2)
    status, _, out = post(env, {"head": "shapes", "images": [b64(p.read_bytes()) for p in photos], "top_k": 2})
    assert status == 200, out
    assert out["head"] == "shapes" and out["labels"] == sorted(FOUR) and out["scoring"] == "softmax"
    assert [r["label"] for r in out["results"]] == [c.label for c in want] == list(FOUR)
    for got, ref in zip(out["results"], want):
        assert got["score"] == pytest.approx(ref.score, abs=1e-6)
        assert [t["label"] for t in got["top_k"]] == [lab for lab, _ in ref.top_k]
    # The same labels may be repeated; the model the head names may be given.
    status, _, again = post(
        env, {"head": "shapes", "images": [b64(photos[0].read_bytes())], "labels": sorted(FOUR), "model": "fake-clip"}
    )
    assert status == 200 and again["results"][0]["label"] == "red"
    ready = call(env["server"], "GET", "/readyz")[2]
    assert ready["heads"][0]["name"] == "shapes" and ready["heads"][0]["model"] == "fake-clip"


@pytest.mark.parametrize(
    "extra, status, param",
    [
        ({"head": "nope"}, 404, "head"),
        ({"head": "shapes", "labels": ["red", "blue"]}, 400, "labels"),
        ({"head": "shapes", "templates": "imagenet"}, 400, "templates"),
        ({"head": "shapes", "model": "other-model"}, 404, "model"),
        ({"head": 3}, 400, "head"),
    ],
)
def test_bad_head_requests(env: dict[str, Any], extra: dict[str, Any], status: int, param: str) -> None:
    photo = sorted((env["test"] / "red").iterdir())[0]
    got, _, out = post(env, {"images": [b64(photo.read_bytes())], **extra})
    assert got == status, out
    assert out["error"]["param"] == param


def test_zero_shot_still_works_beside_a_head(env: dict[str, Any]) -> None:
    photo = sorted((env["test"] / "red").iterdir())[0]
    status, _, out = post(env, {"images": [b64(photo.read_bytes())], "labels": ["red", "blue"]})
    assert status == 200 and "head" not in out and out["labels"] == ["red", "blue"]


def test_foreign_or_damaged_head_fails_the_command(env: dict[str, Any], tmp_path: Path) -> None:
    damaged = tmp_path / "damaged.head"
    damaged.write_bytes(env["head"].read_bytes()[:100])
    for model, head, message in (
        (env["other"], env["head"], "none of the served models is that bundle"),
        (env["bundle"], damaged, "damaged"),
        (env["bundle"], tmp_path / "missing.head", "does not exist"),
    ):
        r = CliRunner().invoke(main, ["serve", str(model), "--head", f"h={head}", "--port", "0"])
        assert r.exit_code == 1 and message in r.output, r.output
    r = CliRunner().invoke(
        main, ["serve", str(env["bundle"]), "--head", f"h={env['head']}", "--head", f"h={env['head']}"]
    )
    assert r.exit_code == 1 and "two heads share the name" in r.output
