"""`clip-rt serve` over real HTTP: a subprocess on a free loopback port, the tiny fake bundle.

Every endpoint, parity with the in-process API (bit for bit, fp32), the OpenAI client,
files under --allow-dir only, search against a `clip-rt index` folder, and the metrics.
Bad requests: test_serve_errors.py; batching, overload, API key, SIGTERM: test_serve_ops.py.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")

import clip_rt  # noqa: E402
from clip_rt_fixtures.fake_bundle import build_fake_bundle  # noqa: E402
from clip_rt_fixtures.server import Server, b64, call, data_url, metric, png_bytes  # noqa: E402


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """The fake bundle, a folder of photos with an index of them, and a server for them."""
    root = tmp_path_factory.mktemp("serve")
    bundle = build_fake_bundle(root / "fake")
    photos = root / "photos"
    photos.mkdir()
    for i, colour in enumerate([(250, 10, 10), (10, 250, 10), (10, 10, 250)]):
        (photos / f"p{i}.png").write_bytes(png_bytes((32 + 8 * i, 24), colour))
    outside = root / "outside"
    outside.mkdir()
    (outside / "secret.png").write_bytes(png_bytes())
    (photos / "link.png").symlink_to(outside / "secret.png")
    index_dir = root / "photos.idx"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CLIP_RT_HOME", str(root / "home-index"))
        from clip_rt.outputs.search_index import update_index

        update_index(str(index_dir), str(photos), clip_rt.load(bundle, cache=False))
    server = Server(
        [
            str(bundle),
            "--allow-dir",
            str(photos),
            "--index",
            f"photos={index_dir}",
            "--max-body-bytes",
            "1MiB",
            "--max-image-pixels",
            "250000",
            "--max-items",
            "16",
            "--max-wait-ms",
            "2",
        ],
        root / "home-server",
    )
    with server:
        yield {
            "bundle": bundle,
            "photos": photos,
            "outside": outside,
            "index": index_dir,
            "server": server,
            "root": root,
        }


@pytest.fixture
def model(env: dict[str, Any]) -> Any:
    return clip_rt.load(env["bundle"], cache=False)  # its own home: nothing shared with the server


def post(env: dict[str, Any], path: str, body: Any, **kw: Any) -> tuple[int, dict[str, str], Any]:
    return call(env["server"], "POST", path, body, **kw)


def vec(item: dict[str, Any]) -> np.ndarray:
    emb = item["embedding"]
    if isinstance(emb, str):
        return np.frombuffer(base64.b64decode(emb), dtype="<f4")
    return np.asarray(emb, dtype=np.float32)


# -- health and models ---------------------------------------------------------------------------
def test_health_ready_models(env: dict[str, Any]) -> None:
    s = env["server"]
    assert call(s, "GET", "/healthz")[2] == {"status": "ok"}
    status, _, ready = call(s, "GET", "/readyz")
    assert status == 200 and ready["status"] == "ready" and ready["models"] == ["fake-clip"]
    assert ready["indexes"][0]["name"] == "photos" and ready["indexes"][0]["images"] == 4
    status, _, models = call(s, "GET", "/v1/models")
    assert status == 200 and models["object"] == "list"
    info = models["data"][0]
    assert info["id"] == "fake-clip" and info["embed_dim"] == 8 and info["precision"] == "fp32"
    assert call(s, "GET", "/v1/models/fake-clip")[2]["id"] == "fake-clip"
    status, _, err = call(s, "GET", "/v1/models/nope")
    message = err["error"]["message"]
    assert status == 404 and "unknown model 'nope'" in message and "fake-clip" in message


# -- embeddings ----------------------------------------------------------------------------------
def test_text_embeddings_equal_the_api_bit_for_bit(env: dict[str, Any], model: Any) -> None:
    texts = ["a photo of a cat", "a red car", "two dogs ."]
    want = model.encode_text(texts)
    for fmt in ("float", "base64"):
        status, _, out = post(env, "/v1/embeddings", {"model": "fake-clip", "input": texts, "encoding_format": fmt})
        assert status == 200, out
        assert out["object"] == "list" and out["model"] == "fake-clip"
        assert [d["index"] for d in out["data"]] == [0, 1, 2]
        got = np.stack([vec(d) for d in out["data"]])
        assert got.dtype == np.float32 and np.array_equal(got, want)
        assert out["usage"]["prompt_tokens"] == out["usage"]["total_tokens"] > len(texts)
    # a single string, no model (the first served one)
    status, _, out = post(env, "/v1/embeddings", {"input": "a red car"})
    assert status == 200 and np.array_equal(vec(out["data"][0]), want[1])


def test_image_embeddings_mixed_with_text(env: dict[str, Any], model: Any) -> None:
    img1, img2 = png_bytes(seed=1, size=(50, 40)), png_bytes(seed=2, size=(30, 60), fmt="JPEG")
    body = {
        "input": [
            data_url(img1),
            "a photo of a cat",
            {"image": b64(img2)},
            {"text": "data:not an image"},
            {"image": data_url(img2, "image/jpeg")},
        ]
    }
    status, _, out = post(env, "/v1/embeddings", body)
    assert status == 200, out
    got = [vec(d) for d in out["data"]]
    imgs = model.encode_image([img1, img2])
    txt = model.encode_text(["a photo of a cat", "data:not an image"])
    for g, w in zip(got, [imgs[0], txt[0], imgs[1], txt[1], imgs[1]]):
        assert np.array_equal(g, w)


def test_openai_client(env: dict[str, Any], model: Any) -> None:
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=env["server"].url + "/v1", api_key="unused", max_retries=0)
    res = client.embeddings.create(model="fake-clip", input=["a photo of a cat", "a red car"])  # base64 by default
    want = model.encode_text(["a photo of a cat", "a red car"])
    assert np.array_equal(np.asarray([d.embedding for d in res.data], dtype=np.float32), want)
    assert res.model == "fake-clip" and res.usage.total_tokens > 0
    res = client.embeddings.create(model="fake-clip", input="a red car", encoding_format="float")
    assert np.array_equal(np.asarray(res.data[0].embedding, dtype=np.float32), want[1])
    # Asked for explicitly, base64 comes back as the raw string (the client decodes only its own default);
    # docs/serve.md says how to decode it.
    res = client.embeddings.create(model="fake-clip", input="a red car", encoding_format="base64")
    assert isinstance(res.data[0].embedding, str)
    assert np.array_equal(np.frombuffer(base64.b64decode(res.data[0].embedding), dtype="<f4"), want[1])
    img = png_bytes(seed=3)
    res = client.embeddings.create(model="fake-clip", input=[data_url(img)])
    assert np.array_equal(np.asarray(res.data[0].embedding, dtype=np.float32), model.encode_image([img])[0])
    with pytest.raises(openai.NotFoundError, match="unknown model"):
        client.embeddings.create(model="gpt-nope", input="x")
    with pytest.raises(openai.BadRequestError, match="empty"):
        client.embeddings.create(model="fake-clip", input=[])
    assert [m.id for m in client.models.list()] == ["fake-clip"]


# -- classify, similarity, search ------------------------------------------------------------------
def test_classify_equals_the_api(env: dict[str, Any], model: Any) -> None:
    imgs = [png_bytes(seed=i, size=(40 + i, 30)) for i in range(3)]
    labels = ["cat", "dog", "car", "tree"]
    want = model.classify(imgs, labels=labels, templates=clip_rt.templates.SIMPLE, top_k=2)
    status, _, out = post(env, "/classify", {"images": [data_url(b) for b in imgs], "labels": labels, "top_k": 2})
    assert status == 200, out
    assert out["labels"] == labels and out["templates"] == list(clip_rt.templates.SIMPLE)
    for r, w, i in zip(out["results"], want, range(3)):
        assert r["index"] == i and r["label"] == w.label and r["score"] == w.score and r["scores"] == w.scores
        assert [(t["label"], t["score"]) for t in r["top_k"]] == w.top_k
        assert (r["width"], r["height"]) == (40 + i, 30)
    # own prompts per label, a template set by name, and a second call (classifier cached)
    spec = {"feline": ["a photo of a cat", "a cat"], "car": None}
    want = model.classify(imgs[:1], labels=spec, templates=clip_rt.templates.IMAGENET, top_k=1)[0]
    for _ in range(2):
        status, _, out = post(
            env, "/classify", {"images": [b64(imgs[0])], "labels": spec, "templates": "imagenet", "top_k": 1}
        )
        assert status == 200 and out["results"][0]["scores"] == want.scores


def test_similarity_equals_the_api(env: dict[str, Any], model: Any) -> None:
    img = png_bytes(seed=5)
    texts = ["a photo of a cat", "a red car", "a tree"]
    want = model.similarity(img, texts)
    status, _, out = post(env, "/similarity", {"image": data_url(img), "texts": texts})
    assert status == 200, out
    assert [r["text"] for r in out["results"]] == texts
    assert np.array_equal(np.asarray([r["probability"] for r in out["results"]], dtype=np.float32), want)
    cos = model.encode_image([img]) @ model.encode_text(texts).T
    assert np.array_equal(np.asarray([r["cosine"] for r in out["results"]], dtype=np.float32), cos[0])


def test_search_text_and_image(env: dict[str, Any], model: Any) -> None:
    from clip_rt.outputs.search_index import SearchIndex

    index = SearchIndex.load(str(env["index"]))
    want = index.search(model.encode_text(["a red car"])[0], 3)
    status, _, out = post(env, "/search", {"query": "a red car", "top_k": 3})
    assert status == 200, out
    assert out["index"] == "photos" and out["model"] == "fake-clip"
    assert [(r["score"], r["path"]) for r in out["results"]] == [(pytest.approx(s, abs=0), p) for s, p in want]
    assert [r["rank"] for r in out["results"]] == [1, 2, 3]
    # an image query: the indexed file itself comes first
    p0 = env["photos"] / "p0.png"
    status, _, out = post(env, "/search", {"index": "photos", "query": {"image": b64(p0.read_bytes())}, "top_k": 1})
    assert status == 200 and out["results"][0]["path"] == str(p0) and out["results"][0]["score"] == pytest.approx(1.0)
    status, _, out = post(env, "/search", {"index": "nope", "query": "x"})
    assert status == 404 and "unknown index 'nope'" in out["error"]["message"]


def test_search_sees_index_updates(env: dict[str, Any], tmp_path: Path) -> None:
    """`clip-rt index` run again while the service runs: the next search reads the new index."""
    from clip_rt.outputs.search_index import update_index

    status, _, before = post(env, "/search", {"query": "a cat", "top_k": 100})
    assert status == 200 and len(before["results"]) == 4
    extra = env["photos"] / "new.png"
    extra.write_bytes(png_bytes(seed=9))
    try:
        update_index(str(env["index"]), str(env["photos"]), clip_rt.load(env["bundle"], cache=False))
        status, _, after = post(env, "/search", {"query": "a cat", "top_k": 100})
        assert status == 200 and str(extra) in [r["path"] for r in after["results"]]
    finally:
        extra.unlink()
        update_index(str(env["index"]), str(env["photos"]), clip_rt.load(env["bundle"], cache=False))


# -- files: only under --allow-dir -------------------------------------------------------------------
def test_paths_inside_allow_dir(env: dict[str, Any], model: Any) -> None:
    p1 = env["photos"] / "p1.png"
    want = model.encode_image([p1])[0]
    for path in (str(p1), "p1.png", str(env["photos"] / "sub" / ".." / "p1.png")):
        status, _, out = post(env, "/v1/embeddings", {"input": [{"path": path}]})
        assert status == 200, out
        assert np.array_equal(vec(out["data"][0]), want)


@pytest.mark.parametrize("how", ["absolute", "dotdot", "symlink", "proc"])
def test_paths_outside_allow_dir_are_refused(env: dict[str, Any], how: str) -> None:
    path = {
        "absolute": str(env["outside"] / "secret.png"),
        "dotdot": "../outside/secret.png",
        "symlink": str(env["photos"] / "link.png"),
        "proc": "/proc/self/environ",
    }[how]
    status, _, out = post(env, "/v1/embeddings", {"input": [{"path": path}]})
    assert status == 403, out
    assert out["error"]["type"] == "forbidden_path" and "outside the folder" in out["error"]["message"]
    assert out["error"]["param"] == "input[0]"


def test_metrics_text(env: dict[str, Any]) -> None:
    post(env, "/v1/embeddings", {"input": "a cat"})
    post(env, "/v1/embeddings", {"input": []})
    status, headers, text = call(env["server"], "GET", "/metrics")
    assert status == 200 and headers["content-type"].startswith("text/plain; version=0.0.4")
    assert metric(text, "clip_rt_requests_total", endpoint="/v1/embeddings", code="200") >= 1
    assert metric(text, "clip_rt_requests_total", endpoint="/v1/embeddings", code="400") >= 1
    assert metric(text, "clip_rt_errors_total", kind="invalid_request") >= 1
    assert metric(text, "clip_rt_items_total", model="fake-clip", encoder="text") >= 1
    assert 'clip_rt_queue_depth{model="fake-clip",encoder="image"} 0' in text
    assert metric(text, "clip_rt_batch_size_count", model="fake-clip", encoder="text") >= 1
    assert metric(text, "clip_rt_request_duration_seconds_bucket", endpoint="/v1/embeddings", le="+Inf") >= 2
    assert "# TYPE clip_rt_request_duration_seconds histogram" in text


def test_vitb32_parity(tmp_path: Path) -> None:
    """The real ViT-B-32 (random weights) over HTTP equals the API bit for bit (fp32)."""
    bundle = Path(os.environ.get("CLIP_RT_VITB32", "/work/bundles/ViT-B-32-random"))
    if not (bundle / "manifest.json").is_file():
        pytest.skip(f"no ViT-B-32 bundle at {bundle} (set CLIP_RT_VITB32)")
    img = png_bytes(seed=7, size=(320, 240))
    model = clip_rt.load(bundle, precision="fp32", cache=False)
    want_img, want_txt = model.encode_image([img])[0], model.encode_text(["a photo of a cat"])[0]
    with Server([f"{bundle}@fp32"], tmp_path / "home") as server:
        status, _, out = call(server, "POST", "/v1/embeddings", {"input": [data_url(img), "a photo of a cat"]})
    assert status == 200, out
    assert np.array_equal(vec(out["data"][0]), want_img) and np.array_equal(vec(out["data"][1]), want_txt)
