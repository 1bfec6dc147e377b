"""Prometheus metrics, written by hand in the text exposition format (version 0.0.4).

Four counters, two gauges and three histograms do not justify a dependency; the format is
small and stable. Every update takes one lock: they are a few per request or batch, and some
happen on worker threads.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterable, Sequence
from typing import Optional

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)

Labels = tuple[tuple[str, str], ...]


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(labels: Labels, extra: Optional[tuple[str, str]] = None) -> str:
    items = list(labels) + ([extra] if extra else [])
    if not items:
        return ""
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in items) + "}"


def _number(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if float(value).is_integer():
        return str(int(value))
    return repr(float(value))


class _Metric:
    kind = ""

    def __init__(self, name: str, help_text: str, label_names: Sequence[str], lock: threading.Lock) -> None:
        self.name, self.help, self.label_names, self._lock = name, help_text, tuple(label_names), lock

    def _key(self, labels: dict[str, str]) -> Labels:
        if set(labels) != set(self.label_names):
            raise ValueError(f"{self.name}: labels {sorted(labels)} != {sorted(self.label_names)}")
        return tuple((k, str(labels[k])) for k in self.label_names)

    def header(self) -> list[str]:
        return [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} {self.kind}"]


class Counter(_Metric):
    kind = "counter"

    def __init__(self, *args: object) -> None:
        super().__init__(*args)  # type: ignore[arg-type]
        self._values: dict[Labels, float] = {}

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        key = self._key(labels)
        with self._lock:
            self._values[key] = self._values.get(key, 0.0) + amount

    def value(self, **labels: str) -> float:
        with self._lock:
            return self._values.get(self._key(labels), 0.0)

    def render(self) -> list[str]:
        with self._lock:
            items = sorted(self._values.items())
        return self.header() + [f"{self.name}{_labels(k)} {_number(v)}" for k, v in items]


class Gauge(Counter):
    kind = "gauge"

    def set(self, value: float, **labels: str) -> None:
        key = self._key(labels)
        with self._lock:
            self._values[key] = float(value)


class Histogram(_Metric):
    kind = "histogram"

    def __init__(
        self, name: str, help_text: str, label_names: Sequence[str], lock: threading.Lock, buckets: Iterable[float]
    ) -> None:
        super().__init__(name, help_text, label_names, lock)
        self.buckets = tuple(sorted(buckets))
        self._data: dict[Labels, tuple[list[int], list[float]]] = {}  # counts per bucket (+Inf last), [sum]

    def observe(self, value: float, **labels: str) -> None:
        key = self._key(labels)
        with self._lock:
            counts, total = self._data.setdefault(key, ([0] * (len(self.buckets) + 1), [0.0]))
            for i, bound in enumerate(self.buckets):
                if value <= bound:
                    counts[i] += 1
                    break
            else:
                counts[-1] += 1
            total[0] += value

    def snapshot(self, **labels: str) -> tuple[dict[float, int], float, int]:
        """(cumulative count per upper bound, sum, count)."""
        with self._lock:
            counts, total = self._data.get(self._key(labels), ([0] * (len(self.buckets) + 1), [0.0]))
            counts = list(counts)
            s = total[0]
        cumulative, running = {}, 0
        for bound, c in zip(list(self.buckets) + [math.inf], counts):
            running += c
            cumulative[bound] = running
        return cumulative, s, running

    def render(self) -> list[str]:
        lines = self.header()
        with self._lock:
            keys = sorted(self._data)
        for key in keys:
            cumulative, total, count = self.snapshot(**dict(key))
            for bound, c in cumulative.items():
                lines.append(f"{self.name}_bucket{_labels(key, ('le', _number(bound)))} {c}")
            lines.append(f"{self.name}_sum{_labels(key)} {_number(total)}")
            lines.append(f"{self.name}_count{_labels(key)} {count}")
        return lines


class Metrics:
    """The service's metrics (names prefixed ``clip_rt_``)."""

    def __init__(self) -> None:
        lock = threading.Lock()
        self._lock = lock
        self.requests = Counter(
            "clip_rt_requests_total", "HTTP requests answered, by endpoint and status code.", ("endpoint", "code"), lock
        )
        self.errors = Counter(
            "clip_rt_errors_total", "Error responses by kind (the error.type field).", ("kind",), lock
        )
        self.items = Counter("clip_rt_items_total", "Inputs encoded, by model and encoder.", ("model", "encoder"), lock)
        self.queue_depth = Gauge(
            "clip_rt_queue_depth",
            "Inputs admitted and not yet in a batch (decoding or waiting), by model and encoder.",
            ("model", "encoder"),
            lock,
        )
        self.in_flight = Gauge("clip_rt_requests_in_flight", "Requests being handled.", (), lock)
        self.batch_size = Histogram(
            "clip_rt_batch_size", "Inputs per inference batch.", ("model", "encoder"), lock, BATCH_BUCKETS
        )
        self.batch_seconds = Histogram(
            "clip_rt_batch_duration_seconds", "Inference time per batch.", ("model", "encoder"), lock, LATENCY_BUCKETS
        )
        self.latency = Histogram(
            "clip_rt_request_duration_seconds",
            "Time from request to response, by endpoint.",
            ("endpoint",),
            lock,
            LATENCY_BUCKETS,
        )
        self.in_flight.set(0)

    def render(self) -> str:
        out: list[str] = []
        for metric in (
            self.requests,
            self.errors,
            self.items,
            self.queue_depth,
            self.in_flight,
            self.batch_size,
            self.batch_seconds,
            self.latency,
        ):
            out.extend(metric.render())
        return "\n".join(out) + "\n"
