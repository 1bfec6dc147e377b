"""The serve package's parts without a server: the batcher, the metrics text, the settings,
request parsing. (They need neither starlette nor uvicorn.)"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

from clip_rt.errors import InputError
from clip_rt.serve.batcher import DynamicBatcher
from clip_rt.serve.config import ModelSpec, ServeConfig, is_loopback, parse_index, parse_size
from clip_rt.serve.errors import ApiError
from clip_rt.serve.inputs import ImageRef, decode_base64, image_ref, is_image_data_url, parse_json, read_body
from clip_rt.serve.metrics import Metrics


def run(coro: Any) -> Any:
    return asyncio.run(coro)


# -- batcher ---------------------------------------------------------------------------------------
def test_batcher_groups_concurrent_inputs() -> None:
    sizes: list[int] = []
    threads: set[str] = set()

    def work(items: list[int]) -> list[int]:
        sizes.append(len(items))
        threads.add(threading.current_thread().name)
        return [x * 10 for x in items]

    async def main() -> list[list[int]]:
        b: DynamicBatcher[int, int] = DynamicBatcher("t", work, max_batch_size=4, max_wait_s=0.2, max_queue=100)
        b.start()
        out = await asyncio.gather(*(b.submit([i], b.reserve(1)) for i in range(10)))
        await b.close()
        return out

    out = run(main())
    assert out == [[i * 10] for i in range(10)]
    assert sizes == [4, 4, 2] and sum(sizes) == 10
    assert all(name.startswith("clip-rt-t") for name in threads)  # never on the event loop's thread


def test_batcher_does_not_wait_longer_than_max_wait() -> None:
    async def main() -> float:
        b: DynamicBatcher[int, int] = DynamicBatcher(
            "t", lambda xs: xs, max_batch_size=64, max_wait_s=0.05, max_queue=10
        )
        b.start()
        loop = asyncio.get_running_loop()
        decoding = b.reserve(1)  # another request's input, admitted and still being decoded
        start = loop.time()
        await b.submit([1], b.reserve(1))
        took = loop.time() - start
        decoding.release()
        await b.close()
        return took

    assert 0.04 <= run(main()) < 2.0


def test_batcher_runs_a_lone_request_at_once() -> None:
    """Nothing running and no other input on its way: no batching window to wait out."""

    async def main() -> tuple[float, list[int]]:
        sizes: list[int] = []
        b: DynamicBatcher[int, int] = DynamicBatcher(
            "t", lambda xs: sizes.append(len(xs)) or xs, max_batch_size=64, max_wait_s=30.0, max_queue=10
        )
        b.start()
        loop = asyncio.get_running_loop()
        start = loop.time()
        assert await b.submit([1, 2], b.reserve(2)) == [1, 2]
        took = loop.time() - start
        await b.close()
        return took, sizes

    took, sizes = run(main())
    assert took < 5.0 and sizes == [2]  # not the 30 s window


def test_batcher_wait_when_idle_waits_out_the_window() -> None:
    async def main() -> float:
        b: DynamicBatcher[int, int] = DynamicBatcher(
            "t", lambda xs: xs, max_batch_size=64, max_wait_s=0.3, max_queue=10, wait_when_idle=True
        )
        b.start()
        loop = asyncio.get_running_loop()
        start = loop.time()
        await b.submit([1], b.reserve(1))
        took = loop.time() - start
        await b.close()
        return took

    assert 0.25 <= run(main()) < 5.0


def test_batcher_waits_for_more_while_a_batch_runs() -> None:
    """Under load (a batch running), the next batch fills up to max_batch_size instead of
    running each input as it comes."""
    release = threading.Event()
    sizes: list[int] = []

    def work(items: list[int]) -> list[int]:
        sizes.append(len(items))
        if len(sizes) == 1:
            release.wait(10)  # the first batch keeps running while others arrive
        return items

    async def main() -> list[list[int]]:
        b: DynamicBatcher[int, int] = DynamicBatcher(
            "t", work, max_batch_size=3, max_wait_s=30.0, max_queue=10, concurrency=2
        )  # a free slot: only the rule makes it wait
        b.start()
        first = asyncio.ensure_future(b.submit([0], b.reserve(1)))
        while not sizes:  # the lone first input ran at once
            await asyncio.sleep(0.01)
        rest = []
        for i in (1, 2, 3):  # one at a time: each, when it comes, is the only input on its way
            rest.append(asyncio.ensure_future(b.submit([i], b.reserve(1))))
            await asyncio.sleep(0.05)
        release.set()
        out = [await first] + [await r for r in rest]
        await b.close()
        return out

    assert run(main()) == [[0], [1], [2], [3]]
    assert sizes == [1, 3]  # the three that came while batch one ran went together, without the 30 s wait


def test_batcher_refuses_past_max_queue() -> None:
    async def main() -> None:
        b: DynamicBatcher[int, int] = DynamicBatcher(
            "img", lambda xs: xs, max_batch_size=2, max_wait_s=0.01, max_queue=3
        )
        b.start()
        room = b.reserve(3)
        with pytest.raises(ApiError) as err:
            b.reserve(1)
        assert err.value.status == 503 and err.value.kind == "overloaded" and "Retry-After" in err.value.headers
        assert "3 of 3 inputs waiting" in err.value.message
        room.release()  # nothing submitted: the room goes back
        assert b.depth == 0
        with b.reserve(3) as room2:
            await b.submit([1, 2], room2)
        assert b.depth == 0  # the unused third slot was released by the with block
        await b.close()
        with pytest.raises(ApiError) as err:
            b.reserve(1)
        assert err.value.kind == "not_ready"

    run(main())


def test_batcher_error_reaches_every_request_and_the_loop_goes_on() -> None:
    calls = []

    def work(items: list[int]) -> list[int]:
        calls.append(list(items))
        if len(calls) == 1:
            raise RuntimeError("boom")
        return items

    async def main() -> None:
        b: DynamicBatcher[int, int] = DynamicBatcher("t", work, max_batch_size=8, max_wait_s=0.05, max_queue=10)
        b.start()
        results = await asyncio.gather(b.submit([1], b.reserve(1)), b.submit([2], b.reserve(1)), return_exceptions=True)
        assert all(isinstance(r, ApiError) and r.status == 500 and "boom" in r.message for r in results)
        assert await b.submit([3], b.reserve(1)) == [3]
        await b.close()

    run(main())


def test_batcher_close_finishes_what_is_queued() -> None:
    async def main() -> list[Any]:
        b: DynamicBatcher[int, int] = DynamicBatcher(
            "t", lambda xs: [x + 1 for x in xs], max_batch_size=2, max_wait_s=10.0, max_queue=10
        )
        b.start()
        pending = [asyncio.ensure_future(b.submit([i], b.reserve(1))) for i in range(5)]
        await asyncio.sleep(0.01)
        await b.close()  # does not wait the 10 s: a closing batcher runs what it has
        return await asyncio.gather(*pending)

    assert run(main()) == [[1], [2], [3], [4], [5]]


def test_batcher_runs_up_to_concurrency_batches_at_once_each_answer_its_own() -> None:
    """Streams: two batches in flight, never three; every input gets its own result."""
    lock = threading.Lock()
    active, peak = [0], [0]
    both_running = threading.Barrier(2, timeout=5)

    def work(items: list[int]) -> list[int]:
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        try:
            if items[0] < 4:  # the first two batches only return once both run at the same time
                both_running.wait()
            return [x * 10 for x in items]
        finally:
            with lock:
                active[0] -= 1

    async def main() -> list[list[int]]:
        b: DynamicBatcher[int, int] = DynamicBatcher(
            "t", work, max_batch_size=2, max_wait_s=0.05, max_queue=100, concurrency=2
        )
        b.start()
        out = await asyncio.gather(*(b.submit([i], b.reserve(1)) for i in range(9)))
        await b.close()
        return out

    assert run(main()) == [[i * 10] for i in range(9)]
    assert peak[0] == 2


def test_batcher_close_waits_for_batches_still_running() -> None:
    release = threading.Event()

    def work(items: list[int]) -> list[int]:
        release.wait(5)
        return items

    async def main() -> list[Any]:
        b: DynamicBatcher[int, int] = DynamicBatcher(
            "t", work, max_batch_size=1, max_wait_s=0.0, max_queue=10, concurrency=3
        )
        b.start()
        pending = [asyncio.ensure_future(b.submit([i], b.reserve(1))) for i in range(3)]
        await asyncio.sleep(0.05)
        closing = asyncio.ensure_future(b.close())
        await asyncio.sleep(0.05)
        assert not closing.done()  # three batches are still running
        release.set()
        await closing
        return await asyncio.gather(*pending)

    assert run(main()) == [[0], [1], [2]]
    with pytest.raises(ValueError, match="concurrency must be a positive integer"):
        DynamicBatcher("t", lambda xs: xs, max_batch_size=1, max_wait_s=0.0, max_queue=1, concurrency=0)


def test_served_model_runs_the_backends_streams_through_its_queue() -> None:
    import numpy as np

    from clip_rt.serve.registry import ServedModel

    class FakeModel:
        image_streams = 2  # as ClipModel reports for OpenVINO in throughput mode

        def __init__(self) -> None:
            self.calls: list[tuple[int, bool]] = []

        def encode_pixels(self, px: Any, output: str = "numpy", *, queued: bool = False) -> Any:
            self.calls.append((len(px), queued))
            return px.reshape(len(px), -1)[:, :4]

    pixels = [np.full((3, 2, 2), i, np.float32) for i in range(3)]
    model = FakeModel()
    served = ServedModel("m", model, ServeConfig(), Metrics())
    assert served.image.concurrency == 2
    assert [r[0] for r in served._encode_pixels(pixels)] == [0, 1, 2] and model.calls == [(3, False)]  # alone
    served.image._running = {object(), object()}  # type: ignore[assignment]  # another batch in flight
    served._encode_pixels(pixels)
    assert model.calls[-1] == (3, True)
    model = FakeModel()
    served = ServedModel("m", model, ServeConfig(image_streams=1), Metrics())  # one request at a time
    served._encode_pixels(pixels)
    assert served.image.concurrency == 1 and model.calls == [(3, False)]
    with pytest.raises(InputError, match="image_streams must be a positive integer"):
        ServeConfig(image_streams=0)


# -- metrics ---------------------------------------------------------------------------------------
def test_metrics_text_format() -> None:
    m = Metrics()
    m.requests.inc(endpoint="/v1/embeddings", code="200")
    m.requests.inc(endpoint="/v1/embeddings", code="200")
    m.errors.inc(kind='we"ird\\kind\n')
    for n in (1, 3, 8, 300):
        m.batch_size.observe(n, model="m", encoder="image")
    text = m.render()
    assert 'clip_rt_requests_total{endpoint="/v1/embeddings",code="200"} 2' in text
    assert 'clip_rt_errors_total{kind="we\\"ird\\\\kind\\n"} 1' in text
    assert 'clip_rt_batch_size_bucket{model="m",encoder="image",le="1"} 1' in text
    assert 'clip_rt_batch_size_bucket{model="m",encoder="image",le="4"} 2' in text
    assert 'clip_rt_batch_size_bucket{model="m",encoder="image",le="8"} 3' in text
    assert 'clip_rt_batch_size_bucket{model="m",encoder="image",le="256"} 3' in text
    assert 'clip_rt_batch_size_bucket{model="m",encoder="image",le="+Inf"} 4' in text
    assert 'clip_rt_batch_size_sum{model="m",encoder="image"} 312' in text
    assert 'clip_rt_batch_size_count{model="m",encoder="image"} 4' in text
    assert "clip_rt_requests_in_flight 0" in text
    assert text.count("# TYPE clip_rt_batch_size histogram") == 1 and text.endswith("\n")


# -- settings --------------------------------------------------------------------------------------
def test_sizes_specs_and_config() -> None:
    assert parse_size("32MiB") == 32 * 1024**2 and parse_size("1.5MB") == 1_500_000 and parse_size("512") == 512
    assert parse_size("64k") == 64_000 and parse_size("2 GiB") == 2 * 1024**3
    for bad in ("lots", "-1", "0", "1TB"):
        with pytest.raises(InputError):
            parse_size(bad)
    assert ModelSpec.parse("ViT-B-32@INT8") == ModelSpec("ViT-B-32", "int8")
    assert ModelSpec.parse("ViT-B-32") == ModelSpec("ViT-B-32", None)
    with pytest.raises(InputError, match="NAME@PRECISION"):
        ModelSpec.parse("x@int4")
    assert parse_index("photos=/data/idx") == ("photos", "/data/idx")
    assert parse_index("/data/photos.idx/") == ("photos.idx", "/data/photos.idx/")
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("example.org")
    with pytest.raises(InputError, match="max_items"):
        ServeConfig(max_items=10, max_queue=5)
    with pytest.raises(InputError, match="max_batch_size"):
        ServeConfig(max_batch_size=0)
    with pytest.raises(InputError, match="share the name"):
        ServeConfig(indexes=(("a", "/x"), ("a", "/y")))
    assert ServeConfig(max_queue=10, max_items=10, max_prompts=500).text_queue == 500


# -- request parsing -------------------------------------------------------------------------------
def test_body_limit_is_enforced_while_reading() -> None:
    read: list[int] = []

    async def chunks() -> Any:
        for i in range(1000):  # 1000 x 1 KiB offered; the reader must stop after about 4
            read.append(i)
            yield b"x" * 1024

    with pytest.raises(ApiError) as err:
        run(read_body({}, chunks(), 4096))
    assert err.value.status == 413 and len(read) == 5
    with pytest.raises(ApiError) as err:
        run(read_body({"content-length": "999999"}, chunks(), 4096))
    assert err.value.status == 413 and "got 999999 bytes" in err.value.message


def test_image_references() -> None:
    assert is_image_data_url("data:image/png;base64,iVBOR") and is_image_data_url("data:;base64,AAAA")
    assert not is_image_data_url("data: the new oil") and not is_image_data_url("data:text/plain;base64,aGk=")
    assert image_ref("data:image/jpeg;name=a.jpg;base64,QUJD", "x") == ImageRef("x", data="QUJD")
    assert image_ref({"image": "QUJD"}, "x") == ImageRef("x.image", data="QUJD")
    assert image_ref({"path": "a.png"}, "x") == ImageRef("x", path="a.png")
    assert decode_base64(ImageRef("x", data="QUJD\nREVG")) == b"ABCDEF"  # wrapped lines
    assert decode_base64(ImageRef("x", data="_-8")) == b"\xff\xef"  # URL-safe alphabet, no padding
    with pytest.raises(ApiError, match="not valid base64"):
        decode_base64(ImageRef("x", data="!!!!"))
    with pytest.raises(ApiError, match="never fetches URLs"):
        image_ref("https://example.com/a.png", "x")


def test_json_bodies() -> None:
    assert parse_json(b'\xef\xbb\xbf{"a": 1}') == {"a": 1}  # a BOM is tolerated
    with pytest.raises(ApiError, match="Infinity is not valid JSON"):
        parse_json(b'{"a": Infinity}')
    with pytest.raises(ApiError, match="expected a JSON object, got a string"):
        parse_json(b'"text"')


def test_bind_makes_a_tcp_socket_and_reports_a_busy_port() -> None:
    """Protocol IPPROTO_TCP, so that asyncio sets TCP_NODELAY on accepted connections (with
    protocol 0 every kept-alive request waited 40 ms for a delayed ACK)."""
    import socket

    from clip_rt.errors import ClipRtError
    from clip_rt.serve.server import bind

    sock = bind("127.0.0.1", 0)
    try:
        assert sock.proto == socket.IPPROTO_TCP and sock.type == socket.SOCK_STREAM
        sock.listen()
        with pytest.raises(ClipRtError, match="cannot listen on 127.0.0.1"):
            bind("127.0.0.1", sock.getsockname()[1])
    finally:
        sock.close()
