"""Texts through the prompt cache and the text backend (:func:`encode_texts`); token rows through
a text backend: sorted by length, cut into batches, each trimmed to its
longest row, run as latency calls or, where the plan says so, through the backend's throughput
queue (several batches in flight, each on its own stream).

Why a queue for text at all: 80 prompts of 13 tokens are small matrix multiplies, and one call
on all cores spends part of its time keeping the threads in step; streams of one thread each
avoid that. Whether it pays is measured per CPU class (``python -m bench.text_queue``, A/B with
an A/A control; the decision table's text rows say ``folders: throughput`` only where it did),
because it also costs a second compiled model. The embeddings are the same either way. A call
with few prompts gains nothing from splitting (a stream has one thread): one latency call.
"""

from __future__ import annotations

import warnings
from collections import deque
from typing import TYPE_CHECKING, Optional

import numpy as np

from ..bundle.manifest import TEXT_INPUT
from .backends import Backend, Pending

if TYPE_CHECKING:
    from .runtime import ModelRuntime

# A queued batch holds at least this many prompts; a call that cannot give every stream that
# many runs as latency calls (bench.text_queue measures where the queue starts to pay).
MIN_QUEUED_ROWS = 8


def text_batches(lengths: np.ndarray, batch_size: int, *, dynamic: bool, streams: int = 1) -> list[np.ndarray]:
    """Row indices of each batch. *dynamic*: the graph takes any sequence length, so rows are
    sorted by length (similar sizes together: trimming drops the most padding). *streams* > 1:
    the batches are made small enough to give each stream one (never below MIN_QUEUED_ROWS)."""
    n = len(lengths)
    order = np.argsort(lengths, kind="stable") if dynamic else np.arange(n)
    size = batch_size
    if streams > 1:
        size = min(batch_size, max(MIN_QUEUED_ROWS, -(-n // streams)))
    return [order[start : start + size] for start in range(0, n, size)]


def queue_pays(rows: int, streams: int) -> bool:
    """Whether *rows* prompts fill *streams* streams with at least MIN_QUEUED_ROWS each."""
    return streams > 1 and rows >= streams * MIN_QUEUED_ROWS


def encode_token_rows(
    session: Backend,
    ids: np.ndarray,
    lengths: np.ndarray,
    *,
    batch_size: int,
    dynamic: bool,
    queued: bool,
    out: Optional[np.ndarray] = None,
) -> np.ndarray:
    """The text graph's first output for every row of *ids* (N, context), in row order.
    *queued*: batches go through the backend's throughput queue, up to its depth in flight,
    when :func:`queue_pays`; else each batch is one latency call."""
    # Fewer prompts than two streams could share never go through the queue: asking its depth
    # would compile the throughput model for nothing.
    streams = session.queue_depth if queued and queue_pays(len(ids), 2) else 1
    if not queue_pays(len(ids), streams):
        streams = 1
    batches = text_batches(lengths, batch_size, dynamic=dynamic, streams=streams)
    in_flight: deque[tuple[np.ndarray, Pending]] = deque()
    results: list[tuple[np.ndarray, np.ndarray]] = []
    try:
        for rows in batches:
            chunk = ids[rows]
            if dynamic:
                chunk = np.ascontiguousarray(chunk[:, : int(lengths[rows].max())])
            feeds = {TEXT_INPUT: chunk}
            if streams > 1:
                in_flight.append((rows, session.submit(feeds)))
                if len(in_flight) >= streams:
                    done_rows, job = in_flight.popleft()
                    results.append((done_rows, job.result()[0]))
            else:
                results.append((rows, session.run(feeds)[0]))
        while in_flight:
            done_rows, job = in_flight.popleft()
            results.append((done_rows, job.result()[0]))
    finally:
        for _, job in in_flight:  # an error is propagating: hand the backend's requests back
            try:
                job.result()
            except Exception:  # noqa: BLE001 - already leaving with the first error
                pass
    if out is None:
        width = results[0][1].shape[1] if results else 0
        out = np.empty((len(ids), width), dtype=np.float32)
    for rows, emb in results:
        out[rows] = emb
    return out


def encode_texts(runtime: ModelRuntime, texts: list[str], batch_size: int) -> np.ndarray:
    """(N, D) embeddings of *texts* (already checked): each distinct text once, those the prompt
    cache holds from it, the others through the text backend (then stored). A text longer than
    the context warns once per call, at the caller of ``ClipModel.encode_text``."""
    unique = list(dict.fromkeys(texts))
    cache = runtime.prompt_cache()
    found = cache.get_many(unique) if cache is not None else {}
    missing = [t for t in unique if t not in found]
    if missing:
        tokens = runtime.tokenizer().encode_batch(missing)
        message = tokens.truncation_message(missing)
        if message:
            warnings.warn(message, UserWarning, stacklevel=3)
        out = np.empty((len(missing), runtime.manifest.embed_dim), dtype=np.float32)
        encode_token_rows(
            runtime.session("text"),
            tokens.ids,
            tokens.lengths,
            batch_size=batch_size,
            dynamic=runtime.manifest.text.dynamic_sequence,
            queued=runtime.plan.text.folders == "throughput",
            out=out,
        )
        new = {t: out[i] for i, t in enumerate(missing)}
        if cache is not None:
            cache.put_many(new)
        found.update(new)
    return np.stack([found[t] for t in texts]).astype(np.float32, copy=False)
