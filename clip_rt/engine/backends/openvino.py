"""The OpenVINO backend (optional extra ``[openvino]``): the CPU plugin reads the bundle's ONNX
graphs directly, no IR files.

Two settings matter (bench/results/backends-*.json):
- the inference precision hint: ``f32`` runs the graph as written (an int8 QDQ graph runs its
  matrix multiplies in int8 either way); ``bf16`` runs the float parts in bf16, which is fast
  only where the CPU has bf16 arithmetic (AMX-BF16, AVX512-BF16) and collapses (0.04x) where it
  is emulated, so it is refused there;
- the performance mode: single calls use a model compiled for LATENCY (one stream, all threads);
  folders go through a model compiled for THROUGHPUT (N streams sharing the threads), fed by
  several infer requests in flight. Only the mode a job needs is compiled (*first*), at
  creation (a bad graph fails there); the other on its first use.

Each mode is one model with the graph's dynamic batch axis, compiled from the file itself, so
that OpenVINO's model cache (``cache_dir``) is looked up without parsing the ONNX graph:
measured on a 2-core AVX-512 VNNI host (ViT-B/32 NNCF int8, warm cache), one image in a fresh
process took 1.3-1.9 s and peaked at 290 MB this way, against 2.0-2.4 s and 395 MB for a model
read, reshaped to batch 1 and compiled (the earlier per-batch-size models; a server compiled
16 of them and held 3.8-4.2 GB). The dynamic model gives an item the same embedding at every
batch size (bit-identical at 1-8 on that host), which the per-size models were for. A new batch
size costs one planning pass on its first call (0.3-1 s on 2 cores), so a folder's last, short
batch is padded to the stream's size (``submit(batch=N)``) instead; a server warms its sizes
up before it reports ready.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np

from ...errors import BundleError, InputError, ProviderError
from .base import Backend, Pending

COMPUTE_HINTS = {"f32": "f32", "bf16": "bf16"}


def import_openvino() -> Any:
    """The ``openvino`` module, or a ProviderError saying how to install it."""
    try:
        import openvino
    except ImportError as exc:
        raise ProviderError(
            f"backend 'openvino' is not installed: pip install 'clip-rt[openvino]' (the openvino package; {exc})"
        ) from None
    return openvino


_shared_core: Any = None
_shared_core_lock = threading.Lock()


def shared_core(ov: Any) -> Any:
    """The process's one ``openvino.Core``, never destroyed.

    Creating a Core loads the CPU plugin, which installs an alternate signal stack on the calling
    thread and frees it when that Core goes away; the thread keeps pointing at the freed stack,
    and the next SIGINT (Python's handlers run on the alternate stack) crashes the process with
    SIGSEGV instead of raising KeyboardInterrupt (seen with openvino 2026.4: Ctrl-C after a model
    was released). One Core for the whole process keeps that stack valid; it also shares the
    plugin's thread pool between models."""
    global _shared_core
    with _shared_core_lock:
        if _shared_core is None:
            _shared_core = ov.Core()
        return _shared_core


class OpenVinoBackend(Backend):
    name = "openvino"
    plans_per_shape = True

    def __init__(
        self,
        path: Union[str, os.PathLike[str]],
        *,
        compute: str = "f32",
        threads: Optional[int] = None,
        streams: Optional[int] = None,
        native_bf16: bool = True,
        cache_dir: Optional[Path] = None,
        first: str = "latency",
        core: Any = None,
    ) -> None:
        """*compute*: ``f32`` or ``bf16`` (the inference precision hint). *threads*: inference
        threads (default: OpenVINO's, all cores). *streams*: throughput streams (default:
        OpenVINO's choice for THROUGHPUT). *native_bf16*: whether this CPU does bf16 in hardware;
        a bf16 hint without it raises, since it runs emulated (measured 0.04x). *cache_dir*:
        where OpenVINO keeps compiled models (a compile from the cache took 0.5 s instead of
        2.2-3.2 s for the ViT-B/32 int8 image graph; the blob is about the graph's size).
        *first*: the mode compiled at creation (``latency`` for single calls, ``throughput``
        for a folder)."""
        if compute not in COMPUTE_HINTS:
            raise InputError(f"openvino compute precision must be one of {', '.join(COMPUTE_HINTS)}, got {compute!r}")
        if compute == "bf16" and not native_bf16:
            raise ProviderError(
                "the bf16 inference precision needs a CPU with bf16 arithmetic (AMX-BF16 or "
                "AVX512-BF16; ARM64 BF16); this one emulates it, measured 25x slower than f32"
            )
        if streams is not None and (isinstance(streams, bool) or not isinstance(streams, int) or streams < 1):
            raise InputError(f"streams must be a positive integer, got {streams!r}")
        if first not in MODES:
            raise InputError(f"first must be one of {', '.join(MODES)}, got {first!r}")
        ov = import_openvino()
        self._ov = ov
        self.path = Path(path)
        self.compute = compute
        self.threads = threads
        self.streams = streams
        self._core = core if core is not None else shared_core(ov)
        self._cache_dir = cache_dir
        self._lock = threading.Lock()
        self._compiled: dict[str, Any] = {}  # by mode: "latency", "throughput"
        self._idle: dict[str, list[Any]] = {}
        compiled = self._compile(first)  # fails at creation on a bad graph, as onnxruntime does
        self.input_names = [p.get_any_name() for p in compiled.inputs]
        self.output_names = [p.get_any_name() for p in compiled.outputs]

    # -- compilation ----------------------------------------------------------------
    def _config(self, mode: str) -> dict[str, Any]:
        config: dict[str, Any] = {
            "INFERENCE_PRECISION_HINT": COMPUTE_HINTS[self.compute],
            "PERFORMANCE_HINT": "LATENCY" if mode == "latency" else "THROUGHPUT",
        }
        if self.threads:
            config["INFERENCE_NUM_THREADS"] = self.threads
        if self._cache_dir is not None:  # per compile: the Core is shared by every model
            config["CACHE_DIR"] = str(self._cache_dir)
        if mode == "throughput" and self.streams:
            config["NUM_STREAMS"] = self.streams
        return config

    def _graph_error(self, exc: BaseException) -> BundleError:
        if not self.path.is_file():
            return BundleError(f"{self.path}: no such graph file")
        return BundleError(
            f"{self.path}: OpenVINO cannot compile this graph ({_first_line(exc)}); "
            "re-export the bundle or use backend='onnxruntime'"
        )

    def _compile(self, mode: str) -> Any:
        with self._lock:
            if mode not in self._compiled:
                try:  # from the file: a cached blob is found without reading the graph
                    self._compiled[mode] = self._core.compile_model(str(self.path), "CPU", self._config(mode))
                except RuntimeError as exc:  # openvino reports unreadable/invalid graphs this way
                    raise self._graph_error(exc) from exc
            return self._compiled[mode]

    def _request(self, mode: str) -> Any:
        compiled = self._compile(mode)
        with self._lock:
            idle = self._idle.setdefault(mode, [])
            return idle.pop() if idle else compiled.create_infer_request()

    def _give_back(self, mode: str, request: Any) -> None:
        with self._lock:
            self._idle.setdefault(mode, []).append(request)

    def _inputs(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        unknown = [name for name in feeds if name not in self.input_names]
        if unknown:
            raise InputError(f"{self.path.name}: no input named {unknown[0]!r}; inputs: {self.input_names}")
        return {name: np.ascontiguousarray(value) for name, value in feeds.items()}

    def _outputs(self, request: Any, rows: int) -> list[np.ndarray]:
        return [np.array(request.get_tensor(name).data[:rows], copy=True) for name in self.output_names]

    # -- the contract -------------------------------------------------------------------
    def run(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        inputs = self._inputs(feeds)
        rows = _rows(inputs)
        request = self._request("latency")
        try:
            request.infer(inputs)
            return self._outputs(request, rows)
        finally:
            self._give_back("latency", request)

    def probe(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        with self._lock:
            ready = list(self._compiled)
        if "latency" in ready or not ready:
            return self.run(feeds)
        return self.submit(feeds).result()  # a folder run: only its throughput model exists

    @property
    def queue_depth(self) -> int:
        compiled = self._compile("throughput")
        return max(1, int(compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")))

    def stream_depth(self, batch: int) -> int:
        return self.queue_depth

    def submit(self, feeds: Mapping[str, np.ndarray], batch: Optional[int] = None) -> Pending:
        inputs = self._inputs(feeds)
        rows = _rows(inputs)
        if batch and rows < batch and _batch_only_varies(inputs):
            # A stream's short last batch: padded (zeros change no other row of a batch-independent
            # graph) instead of paying a new shape's planning pass for one call.
            inputs = {name: _padded(value, batch) for name, value in inputs.items()}
        request = self._request("throughput")
        request.start_async(inputs)  # copies the inputs (share_inputs is off)

        def wait() -> list[np.ndarray]:
            try:
                request.wait()
                return self._outputs(request, rows)
            finally:
                self._give_back("throughput", request)

        return Pending(wait=wait)

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "backend": self.name,
            "version": self._ov.__version__,
            "graph": self.path.name,
            "compute": self.compute,
            "calls": "latency",
            "shapes": "dynamic batch",
        }
        with self._lock:
            compiled = dict(self._compiled)
        for mode, model in compiled.items():
            out[mode] = {
                "streams": int(model.get_property("NUM_STREAMS")),
                "threads": int(model.get_property("INFERENCE_NUM_THREADS")),
                "inference_precision": _type_name(str(model.get_property("INFERENCE_PRECISION_HINT"))),
            }
        out["folders"] = (
            f"throughput, {out['throughput']['streams']} streams"
            if "throughput" in out
            else "throughput (compiled on first folder)"
        )
        return out

    def close(self) -> None:
        with self._lock:
            self._compiled.clear()
            self._idle = {}


MODES = ("latency", "throughput")


def _rows(inputs: Mapping[str, np.ndarray]) -> int:
    return int(next(iter(inputs.values())).shape[0])


def _batch_only_varies(inputs: Mapping[str, np.ndarray]) -> bool:
    """An image batch (one input of rank 4): padding it is safe and its other axes are fixed."""
    return len(inputs) == 1 and next(iter(inputs.values())).ndim == 4


def _padded(value: np.ndarray, rows: int) -> np.ndarray:
    out = np.zeros((rows, *value.shape[1:]), dtype=value.dtype)
    out[: len(value)] = value
    return out


def _type_name(hint: str) -> str:
    # "<Type: 'bfloat16'>" -> "bf16"
    for full, short in (("bfloat16", "bf16"), ("float32", "f32"), ("float16", "f16")):
        if full in hint:
            return short
    return hint


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
