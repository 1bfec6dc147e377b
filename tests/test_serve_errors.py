"""Every bad request gets a 4xx JSON error that says what was expected and what was given, and
the service keeps answering."""

from __future__ import annotations

import http.client
import json
import socket
import struct
import zlib
from collections.abc import Iterator
from typing import Any, Optional

import pytest

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")

from clip_rt_fixtures.fake_bundle import build_fake_bundle  # noqa: E402
from clip_rt_fixtures.server import Server, b64, call, data_url, metric, png_bytes  # noqa: E402

BODY_LIMIT = 64 * 1024


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("serve-errors")
    bundle = build_fake_bundle(root / "fake")
    with Server(
        [
            str(bundle),
            "--max-body-bytes",
            str(BODY_LIMIT),
            "--max-image-pixels",
            "250000",
            "--max-items",
            "4",
            "--max-text-chars",
            "200",
            "--max-labels",
            "5",
            "--max-prompts",
            "12",
            "--max-label-chars",
            "50",
        ],
        root / "home",
    ) as s:
        yield s


def bomb_png(width: int, height: int) -> bytes:
    """A valid PNG header claiming width x height (an image bomb: tiny file, huge canvas)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


IMG = data_url(png_bytes())
CASES: list[tuple[str, str, Any, int, str, Optional[str]]] = [
    # (id, path, body, status, text in the message, param)
    ("missing input", "/v1/embeddings", {"model": "fake-clip"}, 400, "missing field 'input'", "input"),
    ("empty input", "/v1/embeddings", {"input": []}, 400, "input is empty", "input"),
    ("empty text", "/v1/embeddings", {"input": ["a cat", "  "]}, 400, "input[1] is empty", "input[1]"),
    ("number input", "/v1/embeddings", {"input": 42}, 400, "got a number (42)", "input"),
    ("token ids", "/v1/embeddings", {"input": [1, 2, 3]}, 400, "token ids", "input"),
    ("nested ids", "/v1/embeddings", {"input": [[1, 2]]}, 400, "token ids", "input[0]"),
    ("null item", "/v1/embeddings", {"input": ["a", None]}, 400, "got null", "input[1]"),
    ("too many", "/v1/embeddings", {"input": ["a"] * 5}, 400, "5 items; the limit is 4", "input"),
    ("unknown model", "/v1/embeddings", {"input": "a", "model": "ViT-H-14"}, 404, "unknown model 'ViT-H-14'", "model"),
    ("model type", "/v1/embeddings", {"input": "a", "model": 3}, 400, "model must be a string", "model"),
    ("unknown field", "/v1/embeddings", {"input": "a", "imput": 1}, 400, "unknown field(s) 'imput'", "imput"),
    (
        "encoding",
        "/v1/embeddings",
        {"input": "a", "encoding_format": "int8"},
        400,
        "'float' or 'base64'",
        "encoding_format",
    ),
    ("dimensions", "/v1/embeddings", {"input": "a", "dimensions": 4}, 400, "8-dimensional", "dimensions"),
    (
        "encoding type",
        "/v1/embeddings",
        {"input": "a", "encoding_format": 5},
        400,
        "encoding_format must be 'float' or 'base64', got a number (5)",
        "encoding_format",
    ),
    (
        "encoding false",
        "/v1/embeddings",
        {"input": "a", "encoding_format": False},
        400,
        "got a boolean (False)",
        "encoding_format",
    ),
    (
        "dimensions string",
        "/v1/embeddings",
        {"input": "a", "dimensions": "8"},
        400,
        "dimensions must be an integer (the model's 8), got a string ('8')",
        "dimensions",
    ),
    (
        "dimensions bool",
        "/v1/embeddings",
        {"input": "a", "dimensions": True},
        400,
        "dimensions must be an integer",
        "dimensions",
    ),
    ("long text", "/v1/embeddings", {"input": "x" * 201}, 400, "201 characters; the limit is 200", "input"),
    (
        "bad base64",
        "/v1/embeddings",
        {"input": [{"image": "%%%not base64%%%"}]},
        400,
        "not valid base64",
        "input[0].image",
    ),
    (
        "not an image",
        "/v1/embeddings",
        {"input": [data_url(b"<html>hello</html>")]},
        400,
        "not an image: looks like text/HTML",
        "input[0]",
    ),
    ("truncated", "/v1/embeddings", {"input": [data_url(png_bytes(seed=1)[:200])]}, 400, "truncated", "input[0]"),
    ("bomb", "/v1/embeddings", {"input": [data_url(bomb_png(30000, 30000))]}, 400, "image too large", "input[0]"),
    (
        "over pixel limit",
        "/v1/embeddings",
        {"input": [data_url(png_bytes((600, 600)))]},
        400,
        "image too large",
        "input[0]",
    ),
    (
        "url image",
        "/v1/embeddings",
        {"input": [{"image": "https://example.com/cat.jpg"}]},
        400,
        "never fetches URLs",
        "input[0].image",
    ),
    (
        "text data url",
        "/v1/embeddings",
        {"input": [{"image": "data:text/plain,hello"}]},
        400,
        "base64 data URL",
        "input[0].image",
    ),
    ("bad object", "/v1/embeddings", {"input": [{"img": "x"}]}, 400, "keys ['img']", "input[0]"),
    ("no allow-dir", "/v1/embeddings", {"input": [{"path": "/etc/passwd"}]}, 403, "reads no files", "input[0]"),
    ("classify no labels", "/classify", {"images": [IMG], "labels": []}, 400, "labels is empty", "labels"),
    (
        "classify label type",
        "/classify",
        {"images": [IMG], "labels": ["cat", 5]},
        400,
        "labels[1] must be a string",
        "labels[1]",
    ),
    (
        "classify dup labels",
        "/classify",
        {"images": [IMG], "labels": ["cat", "cat"]},
        400,
        "duplicate labels",
        "labels",
    ),
    (
        "classify too many labels",
        "/classify",
        {"images": [IMG], "labels": list("abcdef")},
        400,
        "the limit is 5",
        "labels",
    ),
    (
        "classify prompts",
        "/classify",
        {"images": [IMG], "labels": ["a", "b", "c", "d", "e"], "templates": "imagenet"},
        400,
        "400 prompts; the limit is 12",
        "labels",
    ),
    (
        "classify label length",
        "/classify",
        {"images": [IMG], "labels": ["cat", "x" * 51]},
        400,
        "labels[1] has 51 characters; a class label may have at most 50 (--max-label-chars",
        "labels[1]",
    ),
    (
        "classify label key length",
        "/classify",
        {"images": [IMG], "labels": {"y" * 60: None}},
        400,
        "has 60 characters; a class label may have at most 50",
        "labels['" + "y" * 40 + "']",
    ),
    (
        "classify templates count",
        "/classify",
        {"images": [IMG], "labels": ["cat"], "templates": ["a {}"] * 13},
        400,
        "templates has 13 templates; the limit is 12 prompts per request",
        "templates",
    ),
    (
        "classify prompt length",
        "/classify",
        {"images": [IMG], "labels": {"cat": ["p" * 201]}},
        400,
        "has a text of 201 characters; the limit is 200",
        "labels",
    ),
    (
        "classify template",
        "/classify",
        {"images": [IMG], "labels": ["cat"], "templates": ["a photo"]},
        400,
        "no {} placeholder",
        "labels",
    ),
    (
        "classify top_k",
        "/classify",
        {"images": [IMG], "labels": ["cat"], "top_k": 0},
        400,
        "top_k must be a positive integer",
        "top_k",
    ),
    ("classify no images", "/classify", {"labels": ["cat"]}, 400, "missing field 'images'", "images"),
    ("classify images type", "/classify", {"images": IMG, "labels": ["cat"]}, 400, "images must be an array", "images"),
    ("similarity texts", "/similarity", {"image": IMG, "texts": "a cat"}, 400, "texts must be an array", "texts"),
    (
        "similarity surrogate",
        "/similarity",
        {"image": IMG, "texts": ["a \ud800 cat"]},
        400,
        "unpaired surrogate",
        "texts[0]",
    ),
    ("search no index", "/search", {"query": "a cat"}, 404, "no search index", "index"),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_request(server: Server, case: tuple[str, str, Any, int, str, Optional[str]]) -> None:
    _, path, body, status, text, param = case
    raw = json.dumps(body).encode("utf-8")  # lone surrogates survive as \\ud800 escapes
    got, headers, out = call(server, "POST", path, raw=raw, headers={"Content-Type": "application/json"})
    assert got == status, out
    assert headers["content-type"] == "application/json"
    err = out["error"]
    assert text in err["message"], err
    assert err["param"] == param and err["code"] == status
    assert call(server, "GET", "/healthz")[0] == 200


def test_several_bad_images_are_all_reported(server: Server) -> None:
    body = {"input": [IMG, data_url(b"<html>"), "a cat", {"image": "@@@@"}]}
    status, _, out = call(server, "POST", "/v1/embeddings", body)
    assert status == 400
    assert "and 1 more image(s)" in out["error"]["message"]
    assert [d["param"] for d in out["error"]["details"]] == ["input[1]", "input[3].image"]


@pytest.mark.parametrize(
    "raw, text",
    [
        (b"{not json", "not valid JSON"),
        (b"", "empty request body"),
        (b'["a", "b"]', "expected a JSON object, got an array"),
        (b'{"input": "caf\xe9"}', "not valid UTF-8: byte 0xe9 at position 14"),
        (b'{"input": NaN}', "NaN is not valid JSON"),
        (b'{"input": ' + b"[" * 9 + b"]" * 9 + b"}", "nests arrays and objects 10 deep; the limit is 8"),
    ],
    ids=["syntax", "empty", "array", "latin-1", "nan", "deep"],
)
def test_bad_json(server: Server, raw: bytes, text: str) -> None:
    status, _, out = call(server, "POST", "/v1/embeddings", raw=raw, headers={"Content-Type": "application/json"})
    assert status == 400 and out["error"]["type"] == "invalid_json" and text in out["error"]["message"], out


def test_wrong_content_type_and_method(server: Server) -> None:
    status, _, out = call(
        server, "POST", "/v1/embeddings", raw=b"input=a", headers={"Content-Type": "application/x-www-form-urlencoded"}
    )
    assert status == 415 and "application/json" in out["error"]["message"] and "curl" in out["error"]["message"]
    status, _, out = call(server, "GET", "/v1/embeddings")
    assert status == 405 and out["error"]["type"] == "method_not_allowed"
    status, _, out = call(server, "GET", "/v2/whatever")
    assert status == 404 and "no endpoint GET /v2/whatever" in out["error"]["message"]


def test_body_over_the_limit_by_content_length(server: Server) -> None:
    body = json.dumps({"input": [{"image": "A" * (BODY_LIMIT + 10)}]}).encode()
    status, _, out = call(server, "POST", "/v1/embeddings", raw=body, headers={"Content-Type": "application/json"})
    assert status == 413, out
    assert (
        f"the limit is {BODY_LIMIT} bytes" in out["error"]["message"]
        and f"got {len(body)} bytes" in out["error"]["message"]
    )


def test_body_over_the_limit_while_streaming(server: Server) -> None:
    """A chunked body (no Content-Length) is refused once it passes the limit, long before the
    client has sent it all; the client still reads the 413."""
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=30)
    try:
        sock.sendall(
            b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
        )
        chunk = b"A" * 16384
        sent = 0
        while sent < 4 * BODY_LIMIT:  # 4x the limit; the server answers after about 1x
            sock.sendall(b"%x\r\n" % len(chunk) + chunk + b"\r\n")
            sent += len(chunk)
        sock.sendall(b"0\r\n\r\n")
        resp = http.client.HTTPResponse(sock)
        resp.begin()
        out = json.loads(resp.read())
    finally:
        sock.close()
    assert resp.status == 413
    assert "stopped reading at" in out["error"]["message"]


def test_errors_are_counted(server: Server) -> None:
    call(server, "POST", "/v1/embeddings", {"input": []})
    text = call(server, "GET", "/metrics")[2]
    assert metric(text, "clip_rt_errors_total", kind="invalid_request") >= 1
    assert metric(text, "clip_rt_requests_total", endpoint="/v1/embeddings", code="400") >= 1


def test_service_survives_garbage(server: Server) -> None:
    """Raw bytes that are not HTTP, a half request, then a good request: still answered."""
    for junk in (b"\x00\xff garbage\r\n\r\n", b"POST /v1/embeddings HTTP/1.1\r\nContent-Length: 100\r\n\r\n{"):
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
            s.sendall(junk)
            s.shutdown(socket.SHUT_WR)
            s.recv(1024)
    status, _, out = call(server, "POST", "/v1/embeddings", {"input": ["a cat", {"image": b64(png_bytes())}]})
    assert status == 200 and len(out["data"]) == 2
