"""Dynamic batching: inputs from concurrent requests are encoded together.

One :class:`DynamicBatcher` per model and encoder. Requests first *reserve* room for their
inputs (so a full queue is refused before any image is decoded: memory stays bounded), then
submit them. A loop task on the event loop collects a batch: it starts with the oldest waiting
input and takes more until the batch is full or the oldest input has waited ``max_wait``, unless
nothing is running and no other input is on its way (then it runs at once: a lone request does
not wait out the window); the batch then runs on the batcher's own inference threads while the
next one gathers. Up to
*concurrency* batches run at once (the backend's throughput streams: OpenVINO's queue depth;
1 for onnxruntime), and a batch is formed only when a slot is free, so batches stay as full as
the traffic allows. The event loop never runs inference or waits on it synchronously.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Generic, Optional, TypeVar

from .errors import ApiError

T = TypeVar("T")
R = TypeVar("R")
log = logging.getLogger("clip_rt.serve")


@dataclass
class _Item(Generic[T]):
    payload: T
    future: asyncio.Future[Any]
    enqueued: float


class Reservation:
    """Room for *n* inputs in a batcher's queue; :meth:`release` returns what was not submitted."""

    def __init__(self, batcher: DynamicBatcher[Any, Any], n: int) -> None:
        self._batcher, self.remaining = batcher, n

    def take(self, n: int) -> None:
        if n > self.remaining:
            raise RuntimeError(f"submitting {n} inputs with room reserved for {self.remaining}")
        self.remaining -= n

    def release(self) -> None:
        if self.remaining:
            self._batcher._unreserve(self.remaining)
            self.remaining = 0

    def __enter__(self) -> Reservation:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class DynamicBatcher(Generic[T, R]):
    """Runs ``run(payloads) -> results`` (one result per payload, in order) on batches of at
    most *max_batch_size* payloads, waiting at most *max_wait_s* for a batch to fill (not at all
    when nothing runs and no other input is on its way, unless *wait_when_idle*)."""

    def __init__(
        self,
        name: str,
        run: Callable[[list[T]], Sequence[R]],
        *,
        max_batch_size: int,
        max_wait_s: float,
        max_queue: int,
        on_batch: Optional[Callable[[int, float], None]] = None,
        on_depth: Optional[Callable[[int], None]] = None,
        concurrency: int = 1,
        wait_when_idle: bool = False,
    ) -> None:
        if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
            raise ValueError(f"concurrency must be a positive integer, got {concurrency!r}")
        self.name = name
        self._run = run
        self.max_batch_size, self.max_wait_s, self.max_queue = max_batch_size, max_wait_s, max_queue
        self.wait_when_idle = wait_when_idle
        self._on_batch, self._on_depth = on_batch, on_depth
        self._pending: deque[_Item[T]] = deque()
        self._admitted = 0  # reserved and not yet taken into a batch (decoding or waiting)
        self._wakeup: Optional[asyncio.Event] = None
        self._task: Optional[asyncio.Task[None]] = None
        self._closing = False
        self._draining = False  # shutting down: run batches at once instead of waiting to fill
        self._batch_seconds = 0.05  # running mean of one batch's inference time, for Retry-After
        self.concurrency = concurrency
        self._slots: Optional[asyncio.Semaphore] = None
        self._running: set[asyncio.Task[None]] = set()
        self._executor = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix=f"clip-rt-{name}")

    # -- lifecycle (event loop) -----------------------------------------------------------------
    def start(self) -> None:
        self._wakeup = asyncio.Event()
        self._slots = asyncio.Semaphore(self.concurrency)
        self._task = asyncio.get_running_loop().create_task(self._loop(), name=f"batcher-{self.name}")

    def drain(self) -> None:
        """Stop waiting for batches to fill (the service is stopping): what is queued runs now.
        Inputs are still admitted: a request accepted before the stop must be answered."""
        self._draining = True
        if self._wakeup is not None:
            self._wakeup.set()

    async def close(self) -> None:
        """Refuse new inputs, finish every one already submitted, stop the inference thread."""
        self._closing = True
        if self._wakeup is not None:
            self._wakeup.set()
        if self._task is not None:
            await self._task
        self._executor.shutdown(wait=True)

    @property
    def depth(self) -> int:
        return self._admitted

    @property
    def running(self) -> int:
        """Batches being encoded now (read from the inference threads: a hint, not a lock)."""
        return len(self._running)

    # -- admission --------------------------------------------------------------------------------
    def reserve(self, n: int) -> Reservation:
        if self._closing:
            raise ApiError(
                "not_ready", "the service is shutting down; retry on another instance", headers={"Retry-After": "1"}
            )
        if self._admitted + n > self.max_queue:
            retry = self.retry_after()
            raise ApiError(
                "overloaded",
                f"the {self.name} queue is full ({self._admitted} of {self.max_queue} "
                f"inputs waiting; this request brings {n}); retry in about {retry} s",
                headers={"Retry-After": str(retry)},
            )
        self._admitted += n
        self._report_depth()
        return Reservation(self, n)

    def retry_after(self) -> int:
        batches = math.ceil(max(self._admitted, 1) / self.max_batch_size)
        return max(1, math.ceil(batches * self._batch_seconds / self.concurrency))

    def _unreserve(self, n: int) -> None:
        self._admitted -= n
        self._report_depth()
        if self._wakeup is not None:  # an input no longer on its way: the loop re-checks its wait
            self._wakeup.set()

    def _report_depth(self) -> None:
        if self._on_depth is not None:
            self._on_depth(self._admitted)

    async def submit(self, payloads: Sequence[T], reservation: Reservation) -> list[R]:
        """Queue *payloads* (room reserved in *reservation*) and wait for their results."""
        if self._wakeup is None:
            raise RuntimeError(f"batcher {self.name} was not started")
        reservation.take(len(payloads))
        loop = asyncio.get_running_loop()
        now = loop.time()
        items = [_Item(p, loop.create_future(), now) for p in payloads]
        self._pending.extend(items)
        self._wakeup.set()
        return list(await asyncio.gather(*(it.future for it in items)))

    # -- the batching loop ------------------------------------------------------------------------
    async def _loop(self) -> None:
        assert self._wakeup is not None and self._slots is not None  # set by start(), which creates this task
        loop = asyncio.get_running_loop()
        try:
            while True:
                await self._slots.acquire()  # a free inference slot first: the batch forms meanwhile
                while not self._pending:
                    if self._closing:
                        self._slots.release()
                        return
                    self._wakeup.clear()
                    await self._wakeup.wait()
                deadline = self._pending[0].enqueued + self.max_wait_s
                # Wait for more only while the batch is not full and more is expected; on
                # shutdown, run what is there.
                while (
                    len(self._pending) < self.max_batch_size
                    and not (self._closing or self._draining)
                    and not self._idle_and_nothing_on_the_way()
                ):
                    remaining = deadline - loop.time()
                    if remaining <= 0:
                        break
                    self._wakeup.clear()
                    try:
                        await asyncio.wait_for(self._wakeup.wait(), remaining)
                    except asyncio.TimeoutError:
                        break
                batch = [self._pending.popleft() for _ in range(min(self.max_batch_size, len(self._pending)))]
                self._unreserve(len(batch))
                task = loop.create_task(self._run_batch(loop, batch), name=f"batch-{self.name}")
                self._running.add(task)
                task.add_done_callback(self._batch_done)
        finally:
            if self._running:  # close(): everything already taken into a batch is answered
                await asyncio.gather(*self._running, return_exceptions=True)

    def _idle_and_nothing_on_the_way(self) -> bool:
        """No batch is running and every admitted input is already queued (none is still being
        decoded): waiting could only add latency, so a lone request runs at once. Under load a
        batch is running, and the next one fills meanwhile, up to max_wait. *wait_when_idle*
        turns this off (every batch waits to fill)."""
        return not self.wait_when_idle and not self._running and self._admitted == len(self._pending)

    def _batch_done(self, task: asyncio.Task[None]) -> None:
        self._running.discard(task)
        assert self._slots is not None and self._wakeup is not None
        self._slots.release()
        self._wakeup.set()  # idle now: a batch waiting to fill may run at once

    async def _run_batch(self, loop: asyncio.AbstractEventLoop, batch: list[_Item[T]]) -> None:
        start = time.perf_counter()
        try:
            results = await loop.run_in_executor(self._executor, self._run, [it.payload for it in batch])
            if len(results) != len(batch):
                raise RuntimeError(f"{self.name}: {len(results)} results for a batch of {len(batch)}")
        except Exception as exc:  # every request of the batch gets the error; the loop goes on
            log.exception("%s: a batch of %d failed", self.name, len(batch))
            error = (
                exc
                if isinstance(exc, ApiError)
                else ApiError("internal", f"inference failed on a batch of {len(batch)}: {type(exc).__name__}: {exc}")
            )
            for it in batch:
                if not it.future.done():
                    it.future.set_exception(error)
            return
        seconds = time.perf_counter() - start
        self._batch_seconds = 0.8 * self._batch_seconds + 0.2 * seconds
        if self._on_batch is not None:
            self._on_batch(len(batch), seconds)
        for it, result in zip(batch, results):
            if not it.future.done():  # a cancelled request (client gone) is simply skipped
                it.future.set_result(result)
