"""clip_rt.engine.text_batches: which calls reach the text backend. Prompts are sorted by length
and trimmed per batch; where the plan queues text and the call fills every stream with at least
MIN_QUEUED_ROWS prompts, the batches go through the throughput queue, otherwise each is one
latency call; either way every row gets its own embedding, in input order."""

from __future__ import annotations

from typing import Any, Optional

import numpy as np
import pytest

from clip_rt.bundle.manifest import TEXT_INPUT
from clip_rt.engine.backends.base import Backend, Pending
from clip_rt.engine.text_batches import MIN_QUEUED_ROWS, encode_token_rows, queue_pays, text_batches


class RecordingText(Backend):
    """Embeds a row as (its first token, its non-pad length, the batch's width)."""

    name = "recording"

    def __init__(self, depth: int = 2, fail_on: Optional[int] = None) -> None:
        self.depth = depth
        self.calls: list[tuple[str, int, int]] = []
        self.outstanding = 0
        self.fail_on = fail_on

    @property
    def queue_depth(self) -> int:
        return self.depth

    def _embed(self, feeds: Any) -> list[np.ndarray]:
        x = feeds[TEXT_INPUT]
        if self.fail_on is not None and len(self.calls) == self.fail_on:
            raise RuntimeError("backend failed")
        return [np.stack([x[:, 0], (x != 0).sum(1), np.full(len(x), x.shape[1])], 1).astype(np.float32)]

    def run(self, feeds: Any) -> list[np.ndarray]:  # type: ignore[override]
        self.calls.append(("run", *feeds[TEXT_INPUT].shape))
        return self._embed(feeds)

    def submit(self, feeds: Any, batch: Optional[int] = None) -> Pending:  # type: ignore[override]
        self.calls.append(("submit", *feeds[TEXT_INPUT].shape))
        out = self._embed(feeds)
        self.outstanding += 1

        def wait() -> list[np.ndarray]:
            self.outstanding -= 1
            return out

        return Pending(wait=wait)


def _tokens(lengths: list[int], context: int = 10) -> tuple[np.ndarray, np.ndarray]:
    ids = np.zeros((len(lengths), context), np.int64)
    for i, n in enumerate(lengths):
        ids[i, :n] = 1000 + i  # the first token names the row
    return ids, np.array(lengths, np.int64)


def _check_rows(out: np.ndarray, lengths: list[int]) -> None:
    assert out[:, 0].tolist() == [1000 + i for i in range(len(lengths))]  # input order kept
    assert out[:, 1].tolist() == lengths  # no row cut short by trimming


def test_batches_sort_by_length_and_split_for_the_streams() -> None:
    lengths = np.array([5, 2, 9, 2, 7] * 8)  # 40 rows
    batches = text_batches(lengths, 64, dynamic=True)
    assert len(batches) == 1 and lengths[batches[0]].tolist() == sorted(lengths.tolist())
    split = text_batches(lengths, 64, dynamic=True, streams=2)
    assert [len(b) for b in split] == [20, 20]
    assert lengths[np.concatenate(split)].tolist() == sorted(lengths.tolist())
    assert [len(b) for b in text_batches(lengths, 16, dynamic=True, streams=2)] == [16, 16, 8]  # batch_size caps
    assert [len(b) for b in text_batches(lengths[:18], 64, dynamic=True, streams=4)] == [MIN_QUEUED_ROWS] * 2 + [2]
    fixed = text_batches(lengths, 64, dynamic=False, streams=2)  # a fixed-length graph: input order
    assert np.concatenate(fixed).tolist() == list(range(40))


def test_queue_pays_only_when_every_stream_gets_enough_rows() -> None:
    assert not queue_pays(100, 1)
    assert not queue_pays(2 * MIN_QUEUED_ROWS - 1, 2)
    assert queue_pays(2 * MIN_QUEUED_ROWS, 2)


@pytest.mark.parametrize("queued", [False, True])
def test_a_few_prompts_are_one_latency_call_trimmed_to_the_longest(queued: bool) -> None:
    lengths = [3, 5, 2]
    ids, lens = _tokens(lengths)
    backend = RecordingText()
    out = encode_token_rows(backend, ids, lens, batch_size=64, dynamic=True, queued=queued)
    assert backend.calls == [("run", 3, 5)]
    _check_rows(out, lengths)


def test_queued_prompts_are_split_across_the_streams_in_order() -> None:
    lengths = [(i * 7) % 9 + 2 for i in range(80)]
    ids, lens = _tokens(lengths)
    backend = RecordingText()
    out = encode_token_rows(backend, ids, lens, batch_size=64, dynamic=True, queued=True)
    assert [c[:2] for c in backend.calls] == [("submit", 40), ("submit", 40)]
    assert backend.calls[0][2] <= backend.calls[1][2] == max(lengths)  # short prompts first, each batch trimmed
    assert backend.outstanding == 0
    _check_rows(out, lengths)
    latency = RecordingText()
    same = encode_token_rows(latency, ids, lens, batch_size=64, dynamic=True, queued=False)
    assert [c[:2] for c in latency.calls] == [("run", 64), ("run", 16)]
    assert np.array_equal(out[:, :2], same[:, :2])


def test_many_prompts_keep_at_most_the_queue_depth_in_flight() -> None:
    lengths = [4] * 300
    ids, lens = _tokens(lengths)
    backend = RecordingText(depth=2)
    seen: list[int] = []
    submit = backend.submit

    def watching(feeds: Any, batch: Optional[int] = None) -> Pending:
        seen.append(backend.outstanding)
        return submit(feeds, batch)

    backend.submit = watching  # type: ignore[method-assign]
    out = encode_token_rows(backend, ids, lens, batch_size=64, dynamic=True, queued=True)
    assert [c[1] for c in backend.calls] == [64, 64, 64, 64, 44]
    assert max(seen) <= 1 and backend.outstanding == 0  # one waiting while the next is queued
    _check_rows(out, lengths)


def test_a_failing_batch_raises_and_hands_the_queue_back() -> None:
    ids, lens = _tokens([4] * 200)
    backend = RecordingText(depth=2, fail_on=2)
    with pytest.raises(RuntimeError, match="backend failed"):
        encode_token_rows(backend, ids, lens, batch_size=64, dynamic=True, queued=True)
    assert backend.outstanding == 0


def test_without_a_queue_queued_means_latency_calls() -> None:
    ids, lens = _tokens([4] * 100)
    backend = RecordingText(depth=1)
    encode_token_rows(backend, ids, lens, batch_size=64, dynamic=True, queued=True)
    assert [c[:2] for c in backend.calls] == [("run", 64), ("run", 36)]
