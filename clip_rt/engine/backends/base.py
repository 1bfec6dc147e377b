"""The contract every backend keeps: one graph, one batch ``run``, an optional async queue.

A backend runs one encoder's graph (``pixel_values`` -> ``image_embeds`` or ``input_ids`` ->
``text_embeds``). ``run(feeds)`` is a single call in latency mode; ``submit(feeds)`` hands a
batch to the backend's throughput queue and returns a :class:`Pending` whose ``result()`` is
what ``run`` would have returned (a backend without a queue computes it at once).
Callers keep at most ``queue_depth`` submissions outstanding and collect them in order; a
stream of batches of one size (a folder) passes that size as ``submit(feeds, batch=N)`` and
keeps ``stream_depth(N)`` outstanding, so a backend may run the whole stream at that size.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np


class Pending:
    """One submitted batch; ``result()`` waits for it (once) and returns the outputs."""

    def __init__(
        self, wait: Optional[Callable[[], list[np.ndarray]]] = None, value: Optional[list[np.ndarray]] = None
    ) -> None:
        self._wait = wait
        self._value = value

    def result(self) -> list[np.ndarray]:
        if self._wait is not None:
            self._value, self._wait = self._wait(), None
        assert self._value is not None  # set by the constructor or by _wait
        return self._value


class Backend:
    """Base of the backends; subclasses set the attributes and implement ``run``."""

    name = "backend"
    # Whether a batch size's first call pays a planning pass (OpenVINO's dynamic shapes): a
    # server then runs each size once before it reports ready.
    plans_per_shape = False
    path: Path
    input_names: list[str]
    output_names: list[str]

    def run(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        """All outputs of one batch, in ``output_names`` order (latency mode)."""
        raise NotImplementedError

    @property
    def queue_depth(self) -> int:
        """How many ``submit`` calls may usefully be outstanding (1: no async queue)."""
        return 1

    def stream_depth(self, batch: int) -> int:
        """``queue_depth`` for a stream submitted with ``batch=batch``."""
        return self.queue_depth

    def submit(self, feeds: Mapping[str, np.ndarray], batch: Optional[int] = None) -> Pending:
        """Queue one batch (throughput mode where the backend has it). *batch*: the size of the
        stream's full batches, when it has one (this batch may be its smaller last one)."""
        return Pending(value=self.run(feeds))

    def probe(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        """One batch through whatever the backend has ready (the contract check's probe), so
        that checking a graph compiles nothing the job would not use."""
        return self.run(feeds)

    def describe(self) -> dict[str, Any]:
        """What runs: backend, version, graph file, precision settings, modes, threads."""
        return {"backend": self.name, "graph": self.path.name}

    def close(self) -> None:
        """Free what the backend holds (compiled models, requests); it may not be used after."""
