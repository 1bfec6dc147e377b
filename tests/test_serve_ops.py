"""`clip-rt serve` operations: batching under concurrency, overload (503 + Retry-After), the API
key, SIGTERM with requests in flight, a model that fails to load, and the command line."""

from __future__ import annotations

import base64
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import types
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
from click.testing import CliRunner

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")

import clip_rt  # noqa: E402
from clip_rt.cli import main  # noqa: E402
from clip_rt_fixtures.fake_bundle import build_fake_bundle  # noqa: E402
from clip_rt_fixtures.server import Server, call, data_url, metric, png_bytes  # noqa: E402


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_fake_bundle(tmp_path_factory.mktemp("serve-ops") / "fake")


def in_threads(fns: list[Callable[[], Any]]) -> list[Any]:
    """Run each function in its own thread, all released at once; their results in order."""
    results: list[Any] = [None] * len(fns)
    barrier = threading.Barrier(len(fns))

    def run(i: int) -> None:
        barrier.wait()
        try:
            results[i] = fns[i]()
        except Exception as exc:  # noqa: BLE001  the test looks at it
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(fns))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    return results


def wait_for_metric(server: Server, name: str, value: float, timeout: float = 30.0, **labels: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if metric(call(server, "GET", "/metrics")[2], name, **labels) >= value:
            return
        time.sleep(0.02)
    raise AssertionError(f"{name}{labels} never reached {value}")


def vec(item: dict[str, Any]) -> np.ndarray:
    emb = item["embedding"]
    return np.frombuffer(base64.b64decode(emb), "<f4") if isinstance(emb, str) else np.asarray(emb, np.float32)


# -- batching ------------------------------------------------------------------------------------
def test_concurrent_requests_are_batched(bundle: Path, tmp_path: Path) -> None:
    images = [png_bytes(seed=i, size=(30 + i, 20 + i)) for i in range(16)]
    model = clip_rt.load(bundle, cache=False)
    with Server([str(bundle), "--max-batch-size", "8", "--max-wait-ms", "200"], tmp_path / "home") as server:
        results = in_threads(
            [lambda b=b: call(server, "POST", "/v1/embeddings", {"input": [data_url(b)]}) for b in images]
        )
        text = call(server, "GET", "/metrics")[2]
        assert server.stop() == 0
    for (status, _, out), img in zip(results, images):
        assert status == 200, out
        # Batched with others, each embedding is the in-process one for that image, up to the
        # last bit ONNX Runtime's kernels may round differently for another batch size.
        np.testing.assert_allclose(vec(out["data"][0]), model.encode_image([img])[0], rtol=0, atol=1e-6)
    labels = {"model": "fake-clip", "encoder": "image"}
    batches = metric(text, "clip_rt_batch_size_count", **labels)
    assert metric(text, "clip_rt_batch_size_sum", **labels) == 16
    assert batches < 16, text  # some batch held more than one request's image
    assert metric(text, "clip_rt_batch_size_bucket", le="1", **labels) < batches or batches <= 8
    assert metric(text, "clip_rt_batch_size_bucket", le="8", **labels) == batches  # never over --max-batch-size


def test_batch_size_one_disables_batching(bundle: Path, tmp_path: Path) -> None:
    with Server([str(bundle), "--max-batch-size", "1", "--max-wait-ms", "50"], tmp_path / "home") as server:
        in_threads(
            [
                lambda i=i: call(server, "POST", "/v1/embeddings", {"input": [data_url(png_bytes(seed=i))]})
                for i in range(6)
            ]
        )
        text = call(server, "GET", "/metrics")[2]
    assert metric(text, "clip_rt_batch_size_count", model="fake-clip", encoder="image") == 6


# -- overload ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tight(bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A small queue, two requests at a time, and batches that wait 4 s to fill."""
    args = [
        str(bundle),
        "--max-queue",
        "4",
        "--max-items",
        "4",
        "--max-concurrency",
        "2",
        "--max-batch-size",
        "64",
        "--max-wait-ms",
        "4000",
        "--wait-when-idle",
    ]
    with Server(args, tmp_path_factory.mktemp("home")) as server:
        yield server


@pytest.mark.slow
def test_full_queue_gives_503_with_retry_after(tight: Server) -> None:
    body = {"input": [data_url(png_bytes(seed=i)) for i in range(4)]}
    holder: list[Any] = []
    t = threading.Thread(target=lambda: holder.append(call(tight, "POST", "/v1/embeddings", body)))
    t.start()
    wait_for_metric(tight, "clip_rt_queue_depth", 4, model="fake-clip", encoder="image")
    status, headers, out = call(tight, "POST", "/v1/embeddings", {"input": [data_url(png_bytes())]})
    assert status == 503, out
    assert out["error"]["type"] == "overloaded" and "queue is full" in out["error"]["message"]
    assert int(headers["retry-after"]) >= 1
    assert call(tight, "GET", "/healthz")[0] == 200  # health answers while saturated
    t.join(60)
    assert holder[0][0] == 200 and len(holder[0][2]["data"]) == 4  # the admitted request is served
    assert metric(call(tight, "GET", "/metrics")[2], "clip_rt_errors_total", kind="overloaded") >= 1


@pytest.mark.slow
def test_too_many_concurrent_requests_give_503(tight: Server) -> None:
    held = [
        threading.Thread(target=call, args=(tight, "POST", "/v1/embeddings", {"input": [data_url(png_bytes())]}))
        for _ in range(2)
    ]
    for t in held:
        t.start()
    wait_for_metric(tight, "clip_rt_requests_in_flight", 2)
    status, headers, out = call(tight, "POST", "/v1/embeddings", {"input": "a cat"})
    assert status == 503 and "--max-concurrency" in out["error"]["message"] and headers["retry-after"] == "1"
    assert call(tight, "GET", "/metrics")[0] == 200
    for t in held:
        t.join(60)
    assert call(tight, "POST", "/v1/embeddings", {"input": "a cat"})[0] == 200


# -- API key ---------------------------------------------------------------------------------------
def test_api_key(bundle: Path, tmp_path: Path) -> None:
    with Server([str(bundle)], tmp_path / "home", env={"CLIP_RT_API_KEY": "s3cret"}) as server:
        assert call(server, "GET", "/healthz")[0] == 200
        assert call(server, "GET", "/readyz")[0] == 200
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"X-API-Key": "s3cre"}, {"Authorization": "s3cret"}):
            status, h, out = call(server, "GET", "/v1/models", headers=headers)
            assert status == 401 and out["error"]["type"] == "unauthorized" and h["www-authenticate"] == "Bearer"
        assert call(server, "GET", "/metrics")[0] == 401
        status, _, out = call(server, "POST", "/v1/embeddings", {"input": "a"})
        assert status == 401 and "Authorization: Bearer KEY" in out["error"]["message"]
        assert call(server, "GET", "/v1/models", headers={"Authorization": "Bearer s3cret"})[0] == 200
        assert call(server, "GET", "/metrics", headers={"X-API-Key": "s3cret"})[0] == 200
        lower = {"authorization": "bearer s3cret"}  # header names and the scheme are case-insensitive
        assert call(server, "POST", "/v1/embeddings", {"input": "a"}, headers=lower)[0] == 200
        openai = pytest.importorskip("openai")
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="s3cret", max_retries=0)
        assert len(client.embeddings.create(model="fake-clip", input="a cat").data[0].embedding) == 8
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=server.url + "/v1", api_key="nope", max_retries=0).models.list()


# -- SIGTERM ---------------------------------------------------------------------------------------
def test_sigterm_finishes_requests_in_flight(bundle: Path, tmp_path: Path) -> None:
    """SIGTERM with 8 requests queued and one still sending its body: the listening socket
    closes, the queued batches run at once (not after --max-wait-ms), the half-sent request is
    answered when its body arrives, and the process exits 0."""
    model = clip_rt.load(bundle, cache=False)
    images = [png_bytes(seed=20 + i) for i in range(6)]
    args = [str(bundle), "--max-batch-size", "64", "--max-wait-ms", "30000", "--wait-when-idle"]
    server = Server(args, tmp_path / "home").start()
    try:
        results: list[Any] = [None] * 8

        def send(i: int) -> None:
            body = {"input": [data_url(images[i])]} if i < 6 else {"input": [f"a photo of {i}"]}
            results[i] = call(server, "POST", "/v1/embeddings", body)

        threads = [threading.Thread(target=send, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        wait_for_metric(server, "clip_rt_queue_depth", 6, model="fake-clip", encoder="image")
        wait_for_metric(server, "clip_rt_queue_depth", 2, model="fake-clip", encoder="text")
        slow_body = json.dumps({"input": "a slow cat"}).encode()
        slow = socket.create_connection(("127.0.0.1", server.port), timeout=30)
        slow.sendall(
            b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n" % len(slow_body) + slow_body[:5]
        )
        wait_for_metric(server, "clip_rt_requests_in_flight", 9)
        assert server.proc is not None
        sent = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        for t in threads:
            t.join(60)
        assert time.monotonic() - sent < 20  # drained at once, not after the 30 s wait
        time.sleep(0.3)
        assert server.proc.poll() is None  # still serving the half-sent request
        with pytest.raises(OSError):  # ... but accepting no new connection
            socket.create_connection(("127.0.0.1", server.port), timeout=2).close()
        slow.sendall(slow_body[5:])
        resp = http.client.HTTPResponse(slow)
        resp.begin()
        slow_out = json.loads(resp.read())
        slow.close()
        assert server.proc.wait(60) == 0, server.output()
    finally:
        server.kill()
    assert resp.status == 200
    assert np.array_equal(vec(slow_out["data"][0]), model.encode_text(["a slow cat"])[0])
    for i, (status, _, out) in enumerate(results):
        assert status == 200, out
        want = model.encode_image([images[i]])[0] if i < 6 else model.encode_text([f"a photo of {i}"])[0]
        np.testing.assert_allclose(vec(out["data"][0]), want, rtol=0, atol=1e-6)  # batched: see above


def test_model_that_fails_to_load_exits_1(bundle: Path, tmp_path: Path) -> None:
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(bundle, broken)
    graph = broken / "image_fp32.onnx"
    graph.write_bytes(graph.read_bytes()[:-10] + b"0123456789")
    server = Server([str(broken)], tmp_path / "home").start(wait_ready=False)
    try:
        assert server.proc is not None and server.proc.wait(60) == 1
    finally:
        server.kill()
    assert "sha256" in server.output() and "models failed to load" in server.output()


# -- command line ----------------------------------------------------------------------------------
def test_cli_errors(bundle: Path, tmp_path: Path, hide_module: Any) -> None:
    runner = CliRunner()
    res = runner.invoke(main, ["serve", "no-such-model", "--port", "0"])
    assert res.exit_code == 1 and "no bundle named 'no-such-model'" in res.output
    res = runner.invoke(main, ["serve", str(bundle), "--max-items", "100", "--max-queue", "10"])
    assert res.exit_code == 2 and "--max-items 100 is more than --max-queue 10" in res.output
    res = runner.invoke(main, ["serve", str(bundle), "--max-body-bytes", "lots"])
    assert res.exit_code == 2 and "expected a size such as 32MB" in res.output
    res = runner.invoke(main, ["serve", f"{bundle}@int4"])
    assert res.exit_code == 1 and "NAME@PRECISION" in res.output
    res = runner.invoke(main, ["serve", f"{bundle}@int8"])
    assert res.exit_code == 1 and "has no 'int8' graphs" in res.output
    res = runner.invoke(main, ["serve", str(bundle), str(bundle)])
    assert res.exit_code == 1 and "given twice" in res.output
    other = build_fake_bundle(tmp_path / "other", name="other-clip", seed=5)
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "a.png").write_bytes(png_bytes())
    from clip_rt.outputs.search_index import update_index

    update_index(str(tmp_path / "idx"), str(photos), clip_rt.load(other, cache=False))
    res = runner.invoke(main, ["serve", str(bundle), "--index", str(tmp_path / "idx")])
    assert res.exit_code == 1 and "none of the served models matches" in res.output and "other-clip" in res.output
    hide_module("starlette")
    res = runner.invoke(main, ["serve", str(bundle)])
    assert res.exit_code == 1 and "pip install 'clip-rt[serve]'" in res.output


def test_every_serve_flag_reaches_the_config(bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import clip_rt.serve.server as server_mod
    from clip_rt.serve.config import ServeConfig

    seen: list[ServeConfig] = []

    def build_state(config: ServeConfig, load: Any) -> Any:
        seen.append(config)
        return types.SimpleNamespace(models={})

    monkeypatch.setattr(server_mod, "build_state", build_state)
    monkeypatch.setattr(server_mod, "serve", lambda state, announce=None: 0)
    flags = {
        "--host": "127.0.0.2", "--port": "0", "--provider": "cpu", "--precision": "fp32", "--threads": "3",
        "--max-batch-size": "5", "--max-text-batch-size": "7", "--max-wait-ms": "2.5", "--image-streams": "2",
        "--max-queue": "90", "--max-concurrency": "11", "--max-body-bytes": "1MiB", "--max-items": "9",
        "--max-text-chars": "99", "--max-labels": "12", "--max-label-chars": "13", "--max-prompts": "14",
        "--max-image-pixels": "1000000", "--max-connections": "15", "--header-timeout": "3",
        "--body-timeout": "4", "--max-body-memory": "2MiB", "--allow-dir": str(tmp_path),
        "--head": f"h={tmp_path / 'h.npz'}", "--api-key": "k", "--decode-workers": "2",
        "--graceful-timeout": "6", "--log-level": "debug",
    }  # fmt: skip
    args = [x for pair in flags.items() for x in pair]
    res = CliRunner().invoke(main, ["serve", f"{bundle}@fp32", *args, "--draft", "--wait-when-idle", "--access-log"])
    assert res.exit_code == 0, res.output
    (config,) = seen
    assert (config.host, config.port, config.provider, config.precision, config.threads) == (
        "127.0.0.2",
        0,
        "cpu",
        "fp32",
        3,
    )
    assert config.draft and config.wait_when_idle and config.access_log
    assert (config.max_batch_size, config.max_text_batch_size, config.max_wait_ms, config.image_streams) == (
        5,
        7,
        2.5,
        2,
    )
    assert (config.max_queue, config.max_concurrency, config.max_items) == (90, 11, 9)
    assert (config.max_body_bytes, config.max_body_memory, config.max_image_pixels) == (2**20, 2**21, 10**6)
    assert (config.max_text_chars, config.max_labels, config.max_label_chars, config.max_prompts) == (99, 12, 13, 14)
    assert (config.max_connections, config.header_timeout, config.body_timeout) == (15, 3.0, 4.0)
    assert config.allow_dirs == (str(tmp_path),) and config.heads == (("h", str(tmp_path / "h.npz")),)
    assert (config.api_key, config.decode_workers, config.graceful_timeout, config.log_level) == ("k", 2, 6.0, "debug")
    assert [m.precision for m in config.models] == ["fp32"]


def test_importing_clip_rt_does_not_import_the_server_stack() -> None:
    code = (
        "import sys, clip_rt, clip_rt.cli, clip_rt.serve; "
        "bad = [m for m in ('starlette', 'uvicorn', 'onnxruntime') if m in sys.modules]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ})


def test_non_loopback_host_warns_without_key(bundle: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import clip_rt.serve.server as server_mod

    monkeypatch.setattr(server_mod, "serve", lambda state, announce=None: 0)
    res = CliRunner().invoke(main, ["serve", str(bundle), "--host", "0.0.0.0"])
    assert res.exit_code == 0 and "without an API key" in res.output
    res = CliRunner().invoke(main, ["serve", str(bundle), "--host", "0.0.0.0", "--api-key", "k"])
    assert res.exit_code == 0 and "without an API key" not in res.output
