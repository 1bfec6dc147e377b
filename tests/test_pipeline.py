"""clip_rt.engine.pipeline.image_stream: which calls reach the backend. A stream of several
batches goes through the throughput queue at the stream's batch size; a stream that is one
batch in all is one latency call at its own size."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Optional

import numpy as np
import pytest

from clip_rt.bundle.manifest import IMAGE_INPUT
from clip_rt.engine.backends.base import Backend, Pending
from clip_rt.engine.pipeline import Decoded, image_stream


class RecordingBackend(Backend):
    name = "recording"
    queue_depth = 2

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    def _embed(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        x = feeds[IMAGE_INPUT]
        return [x.reshape(len(x), -1)[:, :2].copy()]

    def run(self, feeds: Any) -> list[np.ndarray]:  # type: ignore[override]
        self.calls.append(("run", len(feeds[IMAGE_INPUT])))
        return self._embed(feeds)

    def submit(self, feeds: Any, batch: Optional[int] = None) -> Pending:  # type: ignore[override]
        self.calls.append(("submit", len(feeds[IMAGE_INPUT]), batch))
        return Pending(value=self._embed(feeds))

    def stream_depth(self, batch: int) -> int:
        return 2


def _decode(index: int, source: int) -> Decoded:
    if source < 0:
        return Decoded(index, source, None, None, None, ValueError("broken"), [])
    return Decoded(index, source, np.full((3, 2, 2), float(source), np.float32), 2, 2, None, [])


def _run(sources: Any, batch_size: int = 8, queued: bool = True) -> tuple[list[Any], list[tuple[Any, ...]]]:
    backend = RecordingBackend()
    items = list(
        image_stream(iter(sources), backend, _decode, batch_size, raise_errors=False, workers=2, queued=queued)
    )
    return items, backend.calls


def _gen(n: int) -> Iterator[int]:
    yield from range(n)


@pytest.mark.parametrize("n", [1, 3, 8])
def test_one_batch_in_all_is_one_latency_call_at_its_own_size(n: int) -> None:
    for sources in (list(range(n)), _gen(n)):  # a list or a generator of unknown length alike
        items, calls = _run(sources)
        assert calls == [("run", n)]
        assert [it.index for it in items] == list(range(n))
        assert [float(it.embedding[0]) for it in items] == [float(i) for i in range(n)]


@pytest.mark.parametrize(
    "n, want", [(9, [("submit", 8, 8), ("submit", 1, 8)]), (20, [("submit", 8, 8), ("submit", 8, 8), ("submit", 4, 8)])]
)
def test_several_batches_stream_through_the_queue(n: int, want: list[tuple[Any, ...]]) -> None:
    items, calls = _run(range(n))
    assert calls == want
    assert [float(it.embedding[0]) for it in items] == [float(i) for i in range(n)]


def test_without_a_queue_every_batch_is_a_latency_call() -> None:
    _, calls = _run(range(20), queued=False)
    assert calls == [("run", 8), ("run", 8), ("run", 4)]


def test_a_broken_source_is_its_item_only() -> None:
    items, calls = _run([0, -1, 2])
    assert calls == [("run", 2)]
    assert items[1].error == "broken" and items[1].embedding is None
    assert float(items[2].embedding[0]) == 2.0
