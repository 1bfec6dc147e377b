"""The OpenVINO backend (optional extra ``[openvino]``): the CPU plugin reads the bundle's ONNX
graphs directly, no IR files.

Two settings matter (bench/results/backends.json):
- the inference precision hint: ``f32`` runs the graph as written (an int8 QDQ graph runs its
  matrix multiplies in int8 either way); ``bf16`` runs the float parts in bf16, which is fast
  only where the CPU has bf16 arithmetic (AMX-BF16, AVX512-BF16) and collapses (0.04x) where it
  is emulated, so it is refused there;
- the performance mode: single calls use a model compiled for LATENCY (one stream, all threads);
  folders go through a model compiled for THROUGHPUT (N streams sharing the threads), fed by
  several infer requests in flight. A latency model is compiled at creation (a bad graph fails
  there), the throughput one on the first folder.

Shapes: an image graph (the batch its only dynamic axis) whose embeddings agree at every batch
size (:func:`fixed_shapes_agree`) runs on models compiled for fixed batch sizes: a folder's
batches on a model of its batch size (the last batch padded with zeros), other batches up to 8
on a model of their own size, larger ones at the next power of two, padded. Models of
different fixed sizes give those graphs bit-identical embeddings, so an image alone equals
itself in a batch; the dynamic-batch model differs from them by up to 3.5e-3 (another int8
kernel path, same accuracy: min cosine 0.99974 either way), so it is never mixed in. Measured
(ViT-B/32 NNCF int8, AMX, 4 batches of 8 through the queue): 180 vs 150 and 159 vs 153
images/s best against the dynamic model (bench/results/backends-x86-amx.json, focused/), 5-8%
in an A/B run of both twice; one image: no measurable difference. Text keeps its dynamic
batch and sequence axes: the CPU plugin re-plans a new shape on its first call instead of
recompiling (cheaper than reshaping per length, measured in bench/backends.py).
"""
from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any, Mapping, Optional, Union

import numpy as np

from ...errors import BundleError, InputError, ProviderError
from .base import Backend, Pending

COMPUTE_HINTS = {"f32": "f32", "bf16": "bf16"}
EXACT_UP_TO = 8  # fixed shapes: batches up to this size compile a model of their own size


def import_openvino() -> Any:
    """The ``openvino`` module, or a ProviderError saying how to install it."""
    try:
        import openvino
    except ImportError as exc:
        raise ProviderError("backend 'openvino' is not installed: pip install 'clip-rt[openvino]' "
                            f"(the openvino package; {exc})") from None
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

    def __init__(self, path: Union[str, "os.PathLike[str]"], *, compute: str = "f32", threads: Optional[int] = None,
                 streams: Optional[int] = None, native_bf16: bool = True, cache_dir: Optional[Path] = None,
                 fixed_shapes: bool = False, core: Any = None) -> None:
        """*compute*: ``f32`` or ``bf16`` (the inference precision hint). *threads*: inference
        threads (default: OpenVINO's, all cores). *streams*: throughput streams (default:
        OpenVINO's choice for THROUGHPUT). *native_bf16*: whether this CPU does bf16 in hardware;
        a bf16 hint without it raises, since it runs emulated (measured 0.04x). *cache_dir*:
        where OpenVINO keeps compiled models (a repeat compile of the static int8 ViT-B/32 image
        graph took 0.8 s instead of 6.3 s on a busy 2-core host; the blob is about the graph's
        size). *fixed_shapes*: run an image graph on models compiled per batch size, a batch
        padded with zeros up to its model's size; only for graphs whose embeddings are the same
        at every size (:func:`fixed_shapes_agree`)."""
        if compute not in COMPUTE_HINTS:
            raise InputError(f"openvino compute precision must be one of {', '.join(COMPUTE_HINTS)}, got {compute!r}")
        if compute == "bf16" and not native_bf16:
            raise ProviderError("the bf16 inference precision needs a CPU with bf16 arithmetic (AMX-BF16 or "
                                "AVX512-BF16; ARM64 BF16); this one emulates it, measured 25x slower than f32")
        if streams is not None and (isinstance(streams, bool) or not isinstance(streams, int) or streams < 1):
            raise InputError(f"streams must be a positive integer, got {streams!r}")
        ov = import_openvino()
        self._ov = ov
        self.path = Path(path)
        self.compute = compute
        self.threads = threads
        self.streams = streams
        self._core = core if core is not None else shared_core(ov)
        self._cache_dir = cache_dir
        self._lock = threading.Lock()
        self._compiled: dict[str, Any] = {}  # by mode: "latency", "throughput", or "<mode>@<fixed batch>"
        self._idle: dict[str, list[Any]] = {}
        self._model = self._read()  # fails at creation on a bad graph, as onnxruntime does
        self.fixed_shapes = fixed_shapes and _batch_is_the_only_dynamic_axis(self._model)
        first = self._compile("latency@1" if self.fixed_shapes else "latency")
        self.input_names = [p.get_any_name() for p in first.inputs]
        self.output_names = [p.get_any_name() for p in first.outputs]

    # -- compilation ----------------------------------------------------------------
    def _config(self, mode: str) -> dict[str, Any]:
        config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": COMPUTE_HINTS[self.compute],
                                  "PERFORMANCE_HINT": "LATENCY" if mode == "latency" else "THROUGHPUT"}
        if self.threads:
            config["INFERENCE_NUM_THREADS"] = self.threads
        if self._cache_dir is not None:  # per compile: the Core is shared by every model
            config["CACHE_DIR"] = str(self._cache_dir)
        if mode == "throughput" and self.streams:
            config["NUM_STREAMS"] = self.streams
        return config

    def _read(self) -> Any:
        try:
            return self._core.read_model(str(self.path))
        except RuntimeError as exc:  # openvino reports unreadable/invalid graphs this way
            raise self._graph_error(exc) from exc

    def _graph_error(self, exc: BaseException) -> BundleError:
        if not self.path.is_file():
            return BundleError(f"{self.path}: no such graph file")
        return BundleError(f"{self.path}: OpenVINO cannot compile this graph ({_first_line(exc)}); "
                           "re-export the bundle or use backend='onnxruntime'")

    def _compile(self, mode: str) -> Any:
        with self._lock:
            if mode not in self._compiled:
                kind, _, fixed = mode.partition("@")
                model = _with_batch(self._model, int(fixed)) if fixed else self._model
                config = self._config(kind)
                try:
                    self._compiled[mode] = self._core.compile_model(model, "CPU", config)
                except RuntimeError as exc:
                    raise self._graph_error(exc) from exc
            return self._compiled[mode]

    def _mode(self, kind: str, rows: int, batch: Optional[int] = None) -> tuple[str, int]:
        """Which model runs *rows* items (*kind*: latency or throughput) and at what size: with
        fixed shapes, the stream's *batch* when it holds them; else a batch of up to EXACT_UP_TO
        at its own size (a server's batches: padding them to powers of two measured 0.87x
        one-at-a-time at 8 clients, bench.serve); a larger one at the next power of two, so
        odd sizes do not each compile a model. Without fixed shapes, the dynamic model."""
        if not self.fixed_shapes:
            return kind, rows
        if batch and rows <= batch:
            size = batch
        elif rows <= EXACT_UP_TO:
            size = rows
        else:
            size = 1 << (rows - 1).bit_length()
        return f"{kind}@{size}", size

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

    def _outputs(self, request: Any) -> list[np.ndarray]:
        return [np.array(request.get_tensor(name).data, copy=True) for name in self.output_names]

    # -- the contract -------------------------------------------------------------------
    def _prepared(self, feeds: Mapping[str, np.ndarray], kind: str,
                  batch: Optional[int] = None) -> tuple[str, dict[str, np.ndarray], int]:
        inputs = self._inputs(feeds)
        rows = next(iter(inputs.values())).shape[0]
        mode, size = self._mode(kind, rows, batch)
        if size > rows:  # zeros: the graph is batch-independent, so they change nothing
            inputs = {name: _padded(value, size) for name, value in inputs.items()}
        return mode, inputs, rows

    def run(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        mode, inputs, rows = self._prepared(feeds, "latency")
        request = self._request(mode)
        try:
            request.infer(inputs)
            return [out[:rows] for out in self._outputs(request)]
        finally:
            self._give_back(mode, request)

    @property
    def queue_depth(self) -> int:
        return self.stream_depth(1)

    def stream_depth(self, batch: int) -> int:
        compiled = self._compile(self._mode("throughput", batch, batch)[0])
        return max(1, int(compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")))

    def submit(self, feeds: Mapping[str, np.ndarray], batch: Optional[int] = None) -> Pending:
        mode, inputs, rows = self._prepared(feeds, "throughput", batch)
        request = self._request(mode)
        request.start_async(inputs)  # copies the inputs (share_inputs is off)

        def wait() -> list[np.ndarray]:
            try:
                request.wait()
                return [out[:rows] for out in self._outputs(request)]
            finally:
                self._give_back(mode, request)

        return Pending(wait=wait)

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {"backend": self.name, "version": self._ov.__version__, "graph": self.path.name,
                               "compute": self.compute, "calls": "latency"}
        with self._lock:
            compiled = dict(self._compiled)
        for mode, model in compiled.items():
            streams = int(model.get_property("NUM_STREAMS"))
            threads = int(model.get_property("INFERENCE_NUM_THREADS"))
            hint = str(model.get_property("INFERENCE_PRECISION_HINT"))
            kind, _, fixed = mode.partition("@")
            entry = out.setdefault(kind, {"streams": streams, "threads": threads,
                                          "inference_precision": _type_name(hint)})
            if fixed:
                entry.setdefault("batch_sizes_compiled", []).append(int(fixed))
        if self.fixed_shapes:
            out["shapes"] = (f"fixed: a model per batch size (a folder's batch size; other batches up to "
                             f"{EXACT_UP_TO} their own size, larger ones the next power of two), padded with zeros")
        out["folders"] = (f"throughput, {out['throughput']['streams']} streams" if "throughput" in out
                          else "throughput (compiled on first folder)")
        return out

    def close(self) -> None:
        with self._lock:
            self._compiled.clear()
            self._idle = {}


def fixed_shapes_agree(quantization: Any) -> bool:
    """Whether OpenVINO gives an item the same embedding at every fixed batch size for a graph
    quantised as *quantization* (the manifest's record; None for float graphs), measured by
    ``python -m bench.backends`` (``fixed_shapes`` in bench/results/backends-x86-amx.json):
    float graphs and NNCF's int8-activation graph agree exactly at batch 1, 2, 4, 8; the graph
    of onnxruntime.quantization (uint8 activations) differs between batch 1 and 2 by 3.7e-3, so
    it keeps the one dynamic-batch model, whose batches agree; dynamic int8 couples a batch."""
    if quantization is None:
        return True
    return bool(quantization.batch_independent) and quantization.activations == "int8"


def _batch_is_the_only_dynamic_axis(model: Any) -> bool:
    """One input whose first axis is dynamic and every other one fixed (an image tower)."""
    if len(model.inputs) != 1:
        return False
    shape = model.inputs[0].get_partial_shape()
    return (shape.rank.is_static and len(shape) >= 2 and shape[0].is_dynamic
            and all(dim.is_static for dim in list(shape)[1:]))


def _with_batch(model: Any, batch: int) -> Any:
    """A copy of *model* with its batch axis fixed (the dynamic model stays as read)."""
    fixed = model.clone()
    rest = [dim.get_length() for dim in list(fixed.inputs[0].get_partial_shape())[1:]]
    fixed.reshape({fixed.inputs[0]: [batch, *rest]})
    return fixed


def _padded(value: np.ndarray, rows: int) -> np.ndarray:
    out = np.zeros((rows, *value.shape[1:]), dtype=value.dtype)
    out[:len(value)] = value
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
