"""The search page of `clip-rt serve` (GET /) and its thumbnails (GET /thumbnails/{index}/{row}).

Over HTTP: the page needs no key and holds no secret; thumbnails exist only for rows of a served
index, with the key, for the index generation a search answered from. In headless Chromium
(tests/browser_util.py): the key is asked for and used, a text query and an uploaded example
image fill the grid with thumbnails, names stay text, and the page asks nothing of any other
origin.
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from PIL import Image

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")

import clip_rt  # noqa: E402
from browser_util import artifacts_dir, images_loaded, launch, watch  # noqa: E402
from clip_rt_fixtures.fake_bundle import build_fake_bundle  # noqa: E402
from clip_rt_fixtures.server import Server, call, png_bytes  # noqa: E402

KEY = "s3cret-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
HOSTILE_NAME = "<img src=x onerror=alert(1)>.png"


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """Photos (one with a hostile name, one deleted after indexing), their index, and a
    service with an API key."""
    root = tmp_path_factory.mktemp("page")
    bundle = build_fake_bundle(root / "fake")
    photos = root / "photos"
    photos.mkdir()
    colours = [(250, 10, 10), (10, 250, 10), (10, 10, 250), (240, 240, 20), (20, 200, 200)]
    for i, colour in enumerate(colours):
        (photos / f"p{i}.png").write_bytes(png_bytes((64 + 16 * i, 48), colour))
    (photos / HOSTILE_NAME).write_bytes(png_bytes((40, 40), seed=3))
    (photos / "gone.png").write_bytes(png_bytes((30, 30), seed=4))
    index_dir = root / "photos.idx"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CLIP_RT_HOME", str(root / "home-index"))
        from clip_rt.outputs.search_index import update_index

        update_index(str(index_dir), str(photos), clip_rt.load(bundle, cache=False))
    (photos / "gone.png").unlink()  # indexed, then deleted: its thumbnail cannot be made
    server = Server(
        [str(bundle), "--index", f"photos={index_dir}", "--api-key", KEY, "--max-wait-ms", "2"], root / "home-server"
    )
    with server:
        yield {"bundle": bundle, "photos": photos, "index": index_dir, "server": server, "root": root}


def search(env: dict[str, Any], query: Any, top_k: int = 20) -> dict[str, Any]:
    status, _, out = call(env["server"], "POST", "/search", {"query": query, "top_k": top_k}, headers=AUTH)
    assert status == 200, out
    return out  # type: ignore[no-any-return]


def row_of(env: dict[str, Any], name: str) -> int:
    from clip_rt.outputs.search_index import SearchIndex

    index = SearchIndex.load(str(env["index"]))
    return [e.path for e in index.entries].index(name)


# -- over HTTP ---------------------------------------------------------------------------------------
def test_page_needs_no_key_and_holds_no_secret(env: dict[str, Any]) -> None:
    status, headers, body = call(env["server"], "GET", "/")
    assert status == 200 and headers["content-type"].startswith("text/html")
    csp = headers["content-security-policy"]
    assert "default-src 'none'" in csp and "frame-ancestors 'none'" in csp and "connect-src 'self'" in csp
    assert "unsafe" not in csp and headers["x-content-type-options"] == "nosniff"
    assert KEY not in body
    data = json.loads(re.search(r'<script type="application/json" id="page-data">(.*?)</script>', body, re.S).group(1))
    assert data["models"] == ["fake-clip"] and data["indexes"] == [{"name": "photos", "model": "fake-clip"}]
    assert data["auth"] is True
    # everything else still needs the key
    assert call(env["server"], "POST", "/search", {"query": "a cat"})[0] == 401
    assert call(env["server"], "GET", "/thumbnails/photos/0")[0] == 401


def test_search_names_rows_and_their_thumbnails(env: dict[str, Any]) -> None:
    from clip_rt.outputs.search_index import SearchIndex

    index = SearchIndex.load(str(env["index"]))
    out = search(env, "a red car")
    assert out["generation"] == index.generation and len(out["results"]) == 7
    for hit in out["results"]:
        assert hit["path"] == index.abs_path(index.entries[hit["row"]])
    row = row_of(env, "p0.png")
    for headers in (AUTH, {"X-API-Key": KEY}):
        status, got, _ = call(
            env["server"], "GET", f"/thumbnails/photos/{row}?generation={index.generation}", headers=headers
        )
        assert status == 200 and got["content-type"] == "image/jpeg" and got["x-content-type-options"] == "nosniff"
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", env["server"].port, timeout=30)
    conn.request("GET", f"/thumbnails/photos/{row}", headers=AUTH)
    data = conn.getresponse().read()
    conn.close()
    with Image.open(io.BytesIO(data)) as im:
        assert im.format == "JPEG" and im.size == (64, 48)
        r, g, b = im.convert("RGB").getpixel((32, 24))
    assert r > 200 and g < 60 and b < 60  # p0 is red


@pytest.mark.parametrize(
    "path,status,message",
    [
        ("/thumbnails/photos/99", 404, "index 'photos' has rows 0 to 6; there is no row 99"),
        ("/thumbnails/nope/0", 404, "unknown index 'nope'"),
        ("/thumbnails/photos/0?generation=x1", 400, "generation must be a whole number"),
        ("/thumbnails/photos/0?generation=999", 409, "was updated since that search"),
        ("/thumbnails/photos/-1", 404, "no endpoint"),
        ("/thumbnails/photos/..%2F..%2Fetc%2Fpasswd", 404, "no endpoint"),
        ("/thumbnails/photos/0/../../../etc/passwd", 404, "no endpoint"),
    ],
)
def test_thumbnails_only_for_rows_of_a_served_index(env: dict[str, Any], path: str, status: int, message: str) -> None:
    got, _, out = call(env["server"], "GET", path, headers=AUTH)
    assert got == status and message in out["error"]["message"], out


def test_a_missing_file_has_no_thumbnail(env: dict[str, Any]) -> None:
    got, _, out = call(env["server"], "GET", f"/thumbnails/photos/{row_of(env, 'gone.png')}", headers=AUTH)
    assert got == 404 and "no thumbnail" in out["error"]["message"] and "no such file" in out["error"]["message"]


def test_index_paths_outside_the_root_are_not_served(tmp_path: Path) -> None:
    from clip_rt.serve.errors import ApiError
    from clip_rt.serve.registry import ServedIndex

    entries = [
        SimpleNamespace(path="a.png"),
        SimpleNamespace(path="../secret.png"),
        SimpleNamespace(path="/etc/passwd"),
        SimpleNamespace(path="sub/../../x.png"),
    ]
    index = SimpleNamespace(root=str(tmp_path / "root"), entries=entries)
    served = ServedIndex.__new__(ServedIndex)
    served.name = "t"
    assert served.image_path(index, 0) == str(tmp_path / "root" / "a.png")
    for row in (1, 2, 3):
        with pytest.raises(ApiError, match="not inside the index's root folder"):
            served.image_path(index, row)


def test_thumbnail_cache_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    from clip_rt.serve import registry

    monkeypatch.setattr(registry, "THUMBNAIL_BYTES_KEPT", 1000)
    served = registry.ServedIndex.__new__(registry.ServedIndex)
    served.__init__("t", "/nonexistent", SimpleNamespace(), "m")  # type: ignore[misc]
    for row in range(10):
        served.keep_thumbnail(1, row, bytes(300))
    assert served.cached_thumbnail(1, 9) == bytes(300) and served.cached_thumbnail(1, 0) is None
    assert served._thumbnail_bytes <= 1000
    assert served.cached_thumbnail(2, 9) is None  # another generation: another image, perhaps


# -- in the browser ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    yield from launch()


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return artifacts_dir(tmp_path_factory, "search-page-screenshots")


def open_page(browser: Any, env: dict[str, Any], key: str = KEY) -> Any:
    w = watch(browser)
    w.page.goto(env["server"].url + "/")
    assert w.page.locator("#key-form").is_visible()  # the page asks for the key first
    w.page.fill("#key", key)
    w.page.click("#key-form button")
    w.until("document.body.dataset.ready", what="the page to see the service ready")
    return w


def shown(w: Any) -> list[str]:
    return w.page.locator("#results figure .file").all_text_contents()  # type: ignore[no-any-return]


def test_search_page_in_the_browser(browser: Any, shots: Path, env: dict[str, Any]) -> None:
    w = open_page(browser, env)
    page = w.page
    service = page.text_content("#service")
    assert "fake-clip" in service and "photos (7 images" in service
    want = search(env, "a red car", top_k=12)
    page.fill("#query", "a red car")
    page.select_option("#top-k", "12")
    page.click("#search-button")
    w.until("document.querySelectorAll('#results figure').length === 7", what="the results")
    assert shown(w) == [h["path"].rsplit("/", 1)[-1] for h in want["results"]]
    assert page.locator("#results .score").all_text_contents() == [f"{h['score']:.3f}" for h in want["results"]]
    assert w.until(images_loaded("#results img", 6), what="the thumbnails") == 6  # all but the deleted file
    assert page.evaluate("Array.from(document.querySelectorAll('#results img')).every(i => i.src.startsWith('blob:'))")
    gone = page.locator("#results figure", has=page.get_by_text("gone.png", exact=True))
    assert gone.locator(".placeholder").text_content() == "no preview"
    assert "no such file" in gone.locator(".placeholder").get_attribute("title")
    assert HOSTILE_NAME in shown(w)
    assert page.text_content("#status") == "7 results for “a red car” in index photos (model fake-clip)"
    w.shot(shots, "search-text.png")
    # an example image: the indexed file itself comes first, at cosine 1
    page.set_input_files("#example", str(env["photos"] / "p2.png"))
    w.until(
        "document.getElementById('status').textContent.startsWith('7 results for the image p2.png')",
        what="the image search",
    )
    assert shown(w)[0] == "p2.png" and page.locator("#results .score").first.text_content() == "1.000"
    assert page.locator("#example-preview").is_visible()
    w.until(images_loaded("#results img", 6), what="the thumbnails of the image search")
    w.shot(shots, "search-image.png")
    assert w.dialogs == [] and page.evaluate("document.querySelectorAll('img[src=\"x\"]').length") == 0
    origin = env["server"].url
    assert [u for u in w.requests if not u.startswith((origin + "/", "blob:", "data:"))] == []
    thumbs = [u for u in w.requests if "/thumbnails/" in u]
    assert thumbs and all("?generation=" in u and KEY not in u for u in thumbs)  # the key travels in a header
    row = row_of(env, "gone.png")
    unexpected = [(t, u) for t, _, u in w.console if t == "error" and f"/thumbnails/photos/{row}?" not in u]
    assert unexpected == [] and w.errors == []  # the one 404 is the deleted file's thumbnail


def test_wrong_key_asks_again(browser: Any, env: dict[str, Any]) -> None:
    w = open_page(browser, env, key="wrong")
    page = w.page
    page.fill("#query", "a cat")
    page.click("#search-button")
    w.until("!document.getElementById('key-form').hidden", what="the key form again")
    assert "missing or wrong API key" in page.text_content("#error")
    assert page.locator("#results figure").count() == 0
    page.fill("#key", KEY)
    page.click("#key-form button")
    page.click("#search-button")
    w.until("document.querySelectorAll('#results figure').length === 7", what="the results with the right key")
    assert page.is_hidden("#error")
