"""Hostile clients against a real `clip-rt serve` (docs/reliability.md): error paths leak no
file descriptor, idle and slow connections cannot starve requests, JSON bodies are checked for
structure before they are parsed, request bodies share a memory budget, failed decodes free
their pixels, and every refusal is JSON (with Retry-After where retrying helps)."""

from __future__ import annotations

import io
import json
import os
import socket
import threading
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pytest

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")

from click.testing import CliRunner  # noqa: E402
from PIL import Image  # noqa: E402

from clip_rt.cli import main  # noqa: E402
from clip_rt_fixtures.fake_bundle import build_fake_bundle  # noqa: E402
from clip_rt_fixtures.server import Server, call, data_url, png_bytes  # noqa: E402


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_fake_bundle(tmp_path_factory.mktemp("serve-hostile") / "fake")


def open_fds(server: Server) -> int:
    assert server.proc is not None
    return len(os.listdir(f"/proc/{server.proc.pid}/fd"))


def peak_rss_mb(server: Server) -> float:
    assert server.proc is not None
    with open(f"/proc/{server.proc.pid}/status") as f:
        line = next(x for x in f if x.startswith("VmHWM:"))
    return int(line.split()[1]) / 1024


def rss_mb(server: Server) -> float:
    assert server.proc is not None
    with open(f"/proc/{server.proc.pid}/status") as f:
        line = next(x for x in f if x.startswith("VmRSS:"))
    return int(line.split()[1]) / 1024


def raw_exchange(server: Server, data: bytes, *, wait: float = 10.0, sock: Optional[socket.socket] = None) -> bytes:
    """Send *data* on a new connection (or *sock*) and read until the server closes it."""
    s = sock or socket.create_connection(("127.0.0.1", server.port), timeout=wait)
    s.settimeout(wait)
    try:
        if data:
            s.sendall(data)
        chunks = []
        while True:
            try:
                block = s.recv(65536)
            except (ConnectionResetError, socket.timeout):
                break
            if not block:
                break
            chunks.append(block)
        return b"".join(chunks)
    finally:
        s.close()


def json_answer(raw: bytes) -> tuple[int, dict[str, str], Any]:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    assert headers["content-type"].startswith("application/json"), raw[:300]
    return status, headers, json.loads(body)


PROC = Path("/proc/self/fd").exists()


# -- error paths close what they opened --------------------------------------------------------------
@pytest.mark.skipif(not PROC, reason="open descriptors are counted in /proc")
def test_bad_requests_leak_no_file_descriptor(bundle: Path, tmp_path: Path) -> None:
    allowed = tmp_path / "allowed"
    (allowed / "a folder.png").mkdir(parents=True)
    os.mkfifo(allowed / "fifo.png")
    good = png_bytes(seed=1)
    (allowed / "truncated.png").write_bytes(good[: len(good) // 2])
    (allowed / "empty.png").write_bytes(b"")
    (allowed / "text.png").write_text("<html>")
    requests: list[tuple[str, Any]] = [
        ("/v1/embeddings", {"input": [{"path": "a folder.png"}]}),
        ("/v1/embeddings", {"input": [{"path": "fifo.png"}]}),
        ("/v1/embeddings", {"input": [{"path": "truncated.png"}, {"path": "empty.png"}, {"path": "text.png"}]}),
        ("/v1/embeddings", {"input": [{"path": "missing.png"}]}),
        ("/v1/embeddings", {"input": [{"path": "../outside.png"}]}),
        ("/classify", {"images": [{"path": "a folder.png"}], "labels": ["cat", "dog"]}),
        ("/v1/embeddings", b"{not json"),
        ("/v1/embeddings", b"x" * 70_000),
    ]
    with Server([str(bundle), "--allow-dir", str(allowed), "--max-body-bytes", "64KiB"], tmp_path / "home") as server:

        def round_of_requests() -> None:
            for path, body in requests:
                raw = body if isinstance(body, bytes) else json.dumps(body).encode()
                status, _, out = call(server, "POST", path, raw=raw, headers={"Content-Type": "application/json"})
                assert 400 <= status < 500 and "error" in out, (path, status, out)

        status, _, out = call(server, "POST", "/v1/embeddings", {"input": [{"path": "a folder.png"}]})
        assert status == 400 and out["error"]["type"] == "invalid_image", out  # was a 500, leaking the descriptor
        assert "'a folder.png' is a folder, not an image file" in out["error"]["message"], out
        status, _, out = call(server, "POST", "/v1/embeddings", {"input": [{"path": "fifo.png"}]})
        assert status == 400 and "is a FIFO (pipe), not an image file" in out["error"]["message"], out
        round_of_requests()  # lazily opened things (log files, caches) are open now
        time.sleep(0.5)
        before = open_fds(server)
        for _ in range(25):  # 200 bad requests
            round_of_requests()
        time.sleep(0.5)  # closed client connections are gone from the server's table
        assert open_fds(server) <= before + 2, (before, open_fds(server))
        assert call(server, "POST", "/v1/embeddings", {"input": "a cat"})[0] == 200


# -- connections -------------------------------------------------------------------------------------
@pytest.mark.slow
def test_idle_connections_do_not_starve_requests(bundle: Path, tmp_path: Path) -> None:
    """150 idle TCP connections (no API key needed to open them) made every request a plain-text
    503 while they stayed open; now requests go on, idle connections are closed to make room
    (past --max-connections) or after --header-timeout."""
    with Server([str(bundle), "--max-connections", "64", "--header-timeout", "3"], tmp_path / "home") as server:
        idle = [socket.create_connection(("127.0.0.1", server.port), timeout=10) for _ in range(150)]
        try:
            for i in range(10):
                status, _, out = call(server, "POST", "/v1/embeddings", {"input": f"a cat {i}"})
                assert status == 200, out
            # The oldest idle ones were closed to make room; the rest go after the head timeout.
            time.sleep(4)
            closed = 0
            for s in idle:
                s.settimeout(5)
                try:
                    closed += s.recv(1) == b""
                except (ConnectionResetError, socket.timeout):
                    closed += 1
            assert closed == len(idle)
            assert call(server, "GET", "/healthz")[0] == 200
        finally:
            for s in idle:
                s.close()


def test_default_limits_serve_beside_150_idle_connections(bundle: Path, tmp_path: Path) -> None:
    with Server([str(bundle)], tmp_path / "home") as server:
        idle = [socket.create_connection(("127.0.0.1", server.port), timeout=10) for _ in range(150)]
        try:
            results = []
            for i in range(20):
                results.append(
                    call(server, "POST", "/v1/embeddings", {"input": [f"a dog {i}", data_url(png_bytes(seed=i))]})[0]
                )
            assert results == [200] * 20
        finally:
            for s in idle:
                s.close()


@pytest.mark.slow
def test_slow_heads_and_bodies_time_out_with_json(bundle: Path, tmp_path: Path) -> None:
    with Server([str(bundle), "--header-timeout", "1", "--body-timeout", "1.5"], tmp_path / "home") as server:
        start = time.monotonic()
        raw = raw_exchange(server, b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nContent-Ty")  # a head, cut
        status, _, out = json_answer(raw)
        assert (
            status == 408
            and out["error"]["type"] == "request_timeout"
            and "--header-timeout" in out["error"]["message"]
        )
        assert 0.9 < time.monotonic() - start < 5
        assert raw_exchange(server, b"") == b""  # silent: closed without an answer
        body = b'{"input": "a cat"}'
        raw = raw_exchange(
            server,
            b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 1000\r\n\r\n" + body,
        )  # 18 of 1000 bytes, then nothing
        status, _, out = json_answer(raw)
        assert (
            status == 408 and "--body-timeout" in out["error"]["message"] and "18 bytes came" in out["error"]["message"]
        ), out
        # A kept-alive connection gets the same deadline for its next request's head.
        s = socket.create_connection(("127.0.0.1", server.port), timeout=10)
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert b"200 OK" in s.recv(65536)
        raw = raw_exchange(server, b"GET /heal", sock=s)
        assert json_answer(raw)[0] == 408
        assert call(server, "POST", "/v1/embeddings", {"input": "a cat"})[0] == 200


@pytest.mark.slow
def test_refusals_uvicorn_would_give_in_plain_text_are_json(bundle: Path, tmp_path: Path) -> None:
    with Server([str(bundle), "--max-connections", "2", "--body-timeout", "4"], tmp_path / "home") as server:
        raw = raw_exchange(server, b"GARBAGE\r\n\r\n")
        status, _, out = json_answer(raw)
        assert status == 400 and "malformed or oversized HTTP request head" in out["error"]["message"]
        # A head that keeps coming past h11's 16 KiB limit for an incomplete one.
        raw = raw_exchange(server, b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 70_000)
        assert json_answer(raw)[0] == 400
        # Both connections inside requests (bodies still coming): a third is refused, in JSON.
        slow = []
        for _ in range(2):
            s = socket.create_connection(("127.0.0.1", server.port), timeout=10)
            s.sendall(
                b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b"Content-Length: 100\r\n\r\n{"
            )
            slow.append(s)
        time.sleep(0.3)
        status, headers, out = json_answer(raw_exchange(server, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"))
        assert status == 503 and headers["retry-after"] == "1" and "--max-connections" in out["error"]["message"]
        for s in slow:  # each slow body ends in its own 408
            assert json_answer(raw_exchange(server, b"", sock=s))[0] == 408
        assert call(server, "GET", "/healthz")[0] == 200


# -- bodies ------------------------------------------------------------------------------------------
@pytest.mark.skipif(not PROC, reason="peak RSS is read from /proc")
def test_json_structure_is_checked_before_parsing(bundle: Path, tmp_path: Path) -> None:
    """A 8 MiB body of small objects cost ~25 times its size once parsed (6 concurrent 32 MiB
    bodies: 4.4 GB); now it is refused on its raw bytes, and memory stays near the bodies."""
    many = b'{"input": [' + b",".join([b"{}"] * ((8 << 20) // 3)) + b"]}"
    deep = b'{"input": ' + b"[" * 9 + b"]" * 9 + b"}"
    with Server([str(bundle)], tmp_path / "home") as server:
        call(server, "POST", "/v1/embeddings", {"input": "warm up"})
        base = peak_rss_mb(server)
        results: list[Any] = [None] * 4

        def send(i: int) -> None:
            results[i] = call(server, "POST", "/v1/embeddings", raw=many, headers={"Content-Type": "application/json"})

        threads = [threading.Thread(target=send, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        for status, _, out in results:
            assert status == 413 and "refused before parsing" in out["error"]["message"], out
        growth = peak_rss_mb(server) - base
        assert growth < 4 * len(many) / (1 << 20) * 3, growth  # parsed, it was over 25x
        status, _, out = call(server, "POST", "/v1/embeddings", raw=deep, headers={"Content-Type": "application/json"})
        assert status == 400 and "nests arrays and objects 10 deep; the limit is 8" in out["error"]["message"]
        big_text = {"input": [f"{i} " + "a cat " * 1500 for i in range(64)]}  # a valid body of long strings
        assert call(server, "POST", "/v1/embeddings", big_text)[0] == 200


@pytest.mark.slow
def test_request_bodies_share_a_memory_budget(bundle: Path, tmp_path: Path) -> None:
    with Server(
        [str(bundle), "--max-body-bytes", "1MiB", "--max-body-memory", "1MiB", "--body-timeout", "5"], tmp_path / "home"
    ) as server:
        s = socket.create_connection(("127.0.0.1", server.port), timeout=10)
        s.sendall(
            b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 1000000\r\n\r\n" + b" " * 900_000
        )
        time.sleep(0.5)
        body = json.dumps({"input": "a cat" + " " * 200_000}).encode()
        status, headers, out = call(
            server, "POST", "/v1/embeddings", raw=body, headers={"Content-Type": "application/json"}
        )
        assert (
            status == 503
            and out["error"]["type"] == "overloaded"
            and "--max-body-memory" in out["error"]["message"]
            and headers["retry-after"] == "1"
        ), out
        assert json_answer(raw_exchange(server, b"", sock=s))[0] == 408  # the slow one ends, its bytes return
        assert (
            call(server, "POST", "/v1/embeddings", raw=body, headers={"Content-Type": "application/json"})[0] == 400
        )  # admitted now (and refused for its text's length)


# -- decoding -----------------------------------------------------------------------------------------
@pytest.mark.skipif(not PROC, reason="peak RSS is read from /proc")
@pytest.mark.slow
def test_truncated_images_in_a_request_free_their_pixels(bundle: Path, tmp_path: Path) -> None:
    """8 truncated 4000x4000 PNGs in one request kept every half-decoded frame until the
    request ended (8 x 64 MB); now each is freed before its decode budget is given back."""
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    arr = np.zeros((4000, 4000, 3), np.uint8)
    arr[:, :, 1] = (np.arange(4000) % 256)[:, None]
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG", compress_level=1)
    data = buf.getvalue()
    for i in range(8):
        (allowed / f"ok{i}.png").write_bytes(data)
        (allowed / f"cut{i}.png").write_bytes(data[: int(len(data) * 0.6)])
    with Server(
        [str(bundle), "--allow-dir", str(allowed)], tmp_path / "home", env={"CLIP_RT_DECODE_MEMORY_MB": "200"}
    ) as server:
        status, _, out = call(server, "POST", "/v1/embeddings", {"input": [{"path": f"ok{i}.png"} for i in range(8)]})
        assert status == 200, out
        valid_peak = peak_rss_mb(server)
        status, _, out = call(server, "POST", "/v1/embeddings", {"input": [{"path": f"cut{i}.png"} for i in range(8)]})
        assert status == 400 and len(out["error"]["details"]) == 8 and "truncated" in out["error"]["message"]
        assert peak_rss_mb(server) <= valid_peak + 16, (valid_peak, peak_rss_mb(server))


# -- minor items --------------------------------------------------------------------------------------
def test_readyz_shows_index_paths_only_with_the_key(bundle: Path, tmp_path: Path) -> None:
    pics = tmp_path / "pics"
    pics.mkdir()
    Image.new("RGB", (20, 20), (1, 2, 3)).save(pics / "a.png")
    idx = tmp_path / "idx"
    assert CliRunner().invoke(main, ["index", str(pics), "-o", str(idx), "-m", str(bundle)]).exit_code == 0
    with Server(
        [str(bundle), "--index", f"photos={idx}"], tmp_path / "home", env={"CLIP_RT_API_KEY": "sesame"}
    ) as server:
        status, _, out = call(server, "GET", "/readyz")
        assert status == 200 and out["indexes"] == [{"name": "photos", "model": "fake-clip", "images": 1}], out
        assert str(tmp_path) not in json.dumps(out)
        out = call(server, "GET", "/readyz", headers={"Authorization": "Bearer sesame"})[2]
        assert out["indexes"][0]["root"] == str(pics)


@pytest.mark.parametrize("value", ["", "   "])
def test_blank_api_key_from_the_environment_is_refused(bundle: Path, value: str) -> None:
    r = CliRunner().invoke(main, ["serve", str(bundle)], env={"CLIP_RT_API_KEY": value})
    assert r.exit_code == 1 and "the API key is empty" in r.output and "$CLIP_RT_API_KEY" in r.output, r.output
    r = CliRunner().invoke(main, ["serve", str(bundle), "--api-key", value])
    assert r.exit_code == 1 and "the API key is empty" in r.output, r.output


def test_classifier_cache_is_bounded_in_bytes() -> None:
    from clip_rt.serve import registry

    served = registry.ServedModel.__new__(registry.ServedModel)
    served.classifiers, served._classifier_bytes = registry.OrderedDict(), 0
    for i in range(10):
        served._keep_classifier(f"labels {i}", object(), size=registry.CLASSIFIERS_BYTES // 4)
    assert list(served.classifiers) == [f"labels {i}" for i in range(6, 10)]
    assert served._classifier_bytes <= registry.CLASSIFIERS_BYTES
    served._keep_classifier("huge", object(), size=registry.CLASSIFIERS_BYTES + 1)  # never kept
    assert "huge" not in served.classifiers


def test_connection_table_closes_idle_connections_first() -> None:
    from clip_rt.serve.connections import ConnectionTable

    class Conn:
        def __init__(self, busy: bool) -> None:
            self.busy, self.closed = busy, False

        def in_request(self) -> bool:
            return self.busy

        def close_quietly(self) -> None:
            self.closed = True

    table = ConnectionTable(3)
    busy, idle_old, idle_new = Conn(True), Conn(False), Conn(False)
    for c in (busy, idle_old, idle_new):
        assert table.admit(c)
    assert table.admit(Conn(True)) and idle_old.closed and not idle_new.closed and not busy.closed
    assert table.admit(Conn(True)) and idle_new.closed
    assert not table.admit(Conn(False)) and table.refused == 1 and table.evicted == 2  # all three in requests
