"""The image stream behind ``ClipModel.iter_images``: decode ahead on threads, batch, run
(latency calls or the backend's throughput queue), and hand results back in input order, one
item per source, a bad source being that item's error only."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Optional

import numpy as np

from ..bundle.manifest import IMAGE_INPUT
from ..errors import ClipRtError, InputError
from ..inputs.discover import UnlistedFolder
from ..results import ImageEmbedding
from .backends import Backend, Pending

if TYPE_CHECKING:
    from ..inputs.preprocess import Preprocessor


@dataclass
class Decoded:
    """One source after decoding: its pixels, or the error that is this item's alone."""

    index: int
    source: Any
    pixels: Optional[np.ndarray]  # (3, H, W)
    width: Optional[int]
    height: Optional[int]
    error: Optional[BaseException]
    notes: list[str]


def decode(preprocessor: Preprocessor, index: int, source: Any) -> Decoded:
    """Decode and preprocess one source with *preprocessor* (the model's EXIF, draft and memory
    budget settings); any failure is this item's error, never the stream's."""
    if isinstance(source, UnlistedFolder):  # from expand_folders: the folder is this item's error
        return Decoded(index, source.path, None, None, None, InputError(f"{source.path}: {source.reason}"), [])
    from ..inputs.images import unexpected_load_error, without_frames

    try:
        # The decoded image is dropped as soon as it is preprocessed.
        done = preprocessor.convert(source)
    except ClipRtError as exc:  # unreadable image, bad array, out of memory: this item only
        # A small error record: no traceback, whose frames could hold a partly decoded image
        # while this item waits in the look-ahead.
        return Decoded(index, source, None, None, None, without_frames(exc), [])
    except Exception as exc:  # noqa: BLE001 - a decoder quirk no one listed: this item's error, not the stream's
        return Decoded(index, source, None, None, None, without_frames(unexpected_load_error(source, exc)), [])
    return Decoded(index, source, done.pixels, done.width, done.height, None, done.notes)


def image_stream(
    sources: Iterator[Any],
    session: Backend,
    decode_one: Callable[[int, Any], Decoded],
    batch_size: int,
    *,
    raise_errors: bool,
    workers: int,
    queued: bool,
) -> Iterator[ImageEmbedding]:
    """Embeddings in input order: sources decoded ahead (``2 * batch_size``) on *workers*
    threads while earlier batches run; with *queued*, batches go through the backend's
    throughput queue, up to its queue_depth in flight, collected in order (same embeddings as
    run()). A stream that is one batch in all (``encode_image`` of a few images, a small
    folder) is one latency call at its own size instead: nothing runs beside it, and the queue
    would give it one stream's threads (one photo took 5-6x as long that way on OpenVINO)."""
    depth = 1  # batches in flight; the queue's depth once a batch goes through it (compiled then)
    ahead = 2 * batch_size
    pending: deque[Future[Decoded]] = deque()
    in_flight: deque[tuple[list[Decoded], Optional[Pending]]] = deque()
    batch: list[Decoded] = []
    next_index = 0
    exhausted = submitted = False
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="clip-rt-decode") as pool:
        try:
            while True:
                while not exhausted and len(pending) < ahead:
                    try:
                        source = next(sources)
                    except StopIteration:
                        exhausted = True
                        break
                    pending.append(pool.submit(decode_one, next_index, source))
                    next_index += 1
                if not pending:
                    break
                item = pending.popleft().result()
                if item.error is not None and raise_errors:
                    raise item.error
                batch.append(item)
                if len(batch) >= batch_size:
                    only = not submitted and exhausted and not pending  # the whole stream
                    if queued and not only and not submitted:
                        depth = session.stream_depth(batch_size)
                    in_flight.append(_submit(session, batch, queued and not only, batch_size))
                    submitted, batch = True, []
                    while len(in_flight) >= depth:
                        yield from _collect(*in_flight.popleft())
            if batch:
                in_flight.append(_submit(session, batch, queued and submitted, batch_size))
            while in_flight:
                yield from _collect(*in_flight.popleft())
        finally:
            for fut in pending:  # the consumer stopped early, or an error is propagating
                fut.cancel()
            for _, job in in_flight:  # hand the backend's requests back before leaving
                if job is not None:
                    try:
                        job.result()
                    except Exception:  # noqa: BLE001 - already leaving with the first error
                        pass


def _submit(
    session: Backend, batch: list[Decoded], queued: bool, batch_size: int
) -> tuple[list[Decoded], Optional[Pending]]:
    """One batch into the backend: its throughput queue (*queued*) or a single latency call."""
    pixels = [d.pixels for d in batch if d.pixels is not None]
    if not pixels:
        return batch, None
    feeds = {IMAGE_INPUT: np.stack(pixels)}
    return batch, session.submit(feeds, batch=batch_size) if queued else Pending(value=session.run(feeds))


def _collect(batch: list[Decoded], job: Optional[Pending]) -> Iterator[ImageEmbedding]:
    embs = job.result()[0] if job is not None else None
    row = 0
    for d in batch:
        emb = None
        if d.pixels is not None:
            emb, row = embs[row], row + 1  # type: ignore[index]
        yield ImageEmbedding(
            index=d.index,
            source=d.source,
            embedding=emb,
            width=d.width,
            height=d.height,
            error=None if d.error is None else str(d.error),
            notes=d.notes,
        )


def check_pixels(pixel_values: Any, output: str) -> None:
    """InputError unless *output* is a known kind and a numpy *pixel_values* is (N, 3, H, W) float32."""
    if output not in ("numpy", "ortvalue"):
        raise InputError(f"output must be 'numpy' or 'ortvalue', got {output!r}")
    if isinstance(pixel_values, np.ndarray) and (pixel_values.ndim != 4 or pixel_values.dtype != np.float32):
        raise InputError(f"pixel_values must be float32 (N, 3, H, W), got {pixel_values.dtype} {pixel_values.shape}")


def run_pixels(session: Backend, pixel_values: Any, output: str, *, queued: bool) -> Any:
    """What ``ClipModel.encode_pixels`` returns for one checked batch (:func:`check_pixels`):
    numpy in and out through the session (or its throughput queue); an OrtValue on either side
    through onnxruntime's IO binding."""
    if output == "numpy" and isinstance(pixel_values, np.ndarray):
        if queued:
            return session.submit({IMAGE_INPUT: pixel_values}).result()[0]
        return session.run({IMAGE_INPUT: pixel_values})[0]
    run_binding = getattr(session, "run_binding", None)
    if run_binding is None:
        raise InputError(
            f"OrtValue input or output needs the onnxruntime backend; the image encoder runs on "
            f"{session.name} (load with backend='onnxruntime')"
        )
    if output == "numpy":
        return run_binding({IMAGE_INPUT: pixel_values}, "cpu")[0].numpy()
    return run_binding({IMAGE_INPUT: pixel_values})[0]
