"""GPU helpers: CUDA provider options and fixed-shape runs through IO binding.

onnxruntime's CUDA graphs (provider option ``enable_cuda_graph``) capture a whole run once and
replay it, which removes the per-kernel launch cost that dominates small batches. They need
every input and output at the same device address on every run, so the graph is fed through
buffers bound once: :class:`FixedShapeRunner`. The runner works on any session (on the CPU it is
plain IO binding), which is how it is tested on machines without a GPU.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Optional

import numpy as np

from ..errors import InputError
from .session import OrtSession

# cudnn_conv_algo_search: onnxruntime's default (EXHAUSTIVE) benchmarks every conv algorithm
# for each new input shape; HEURISTIC skips that first-run cost at a possible small loss.
CONV_ALGO_SEARCH = ("EXHAUSTIVE", "HEURISTIC", "DEFAULT")
_ORT_TYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
}


def cuda_options(
    *, cuda_graph: bool = False, conv_algo_search: Optional[str] = None, device_id: Optional[int] = None
) -> dict[str, dict[str, str]]:
    """Provider options for ``clip_rt.load(provider_options=...)`` / ``OrtSession(options=...)``.

    *cuda_graph*: capture CUDA graphs; the session must then be run through
    :class:`FixedShapeRunner` (one input shape per session).
    """
    opts: dict[str, str] = {}
    if cuda_graph:
        opts["enable_cuda_graph"] = "1"
    if conv_algo_search is not None:
        if conv_algo_search.upper() not in CONV_ALGO_SEARCH:
            raise InputError(f"conv_algo_search must be one of {', '.join(CONV_ALGO_SEARCH)}, got {conv_algo_search!r}")
        opts["cudnn_conv_algo_search"] = conv_algo_search.upper()
    if device_id is not None:
        if isinstance(device_id, bool) or not isinstance(device_id, int) or device_id < 0:
            raise InputError(f"device_id must be a non-negative integer, got {device_id!r}")
        opts["device_id"] = str(device_id)
    return {"cuda": opts}


class FixedShapeRunner:
    """Runs a one-input session on inputs of one fixed *shape*, through buffers that stay on the
    session's device at fixed addresses (what CUDA graph capture and replay require).

    ``run(batch)`` copies *batch* from the host into the input buffer and returns the output
    OrtValues, which are overwritten by the next run: copy (``.numpy()``) what must be kept.
    """

    def __init__(self, session: OrtSession, shape: Sequence[int]) -> None:
        import onnxruntime

        if len(session.input_names) != 1:
            raise InputError(
                f"{session.path.name}: FixedShapeRunner needs a one-input graph, got inputs {session.input_names}"
            )
        self.shape = tuple(int(d) for d in shape)
        if not self.shape or any(d < 1 for d in self.shape):
            raise InputError(f"shape must be positive dimensions, got {tuple(shape)!r}")
        device_type, device_id = session.device
        ort = session.inference_session
        meta_in = ort.get_inputs()[0]
        self.dtype = _np_type(meta_in.type, meta_in.name)
        self._check_shape(meta_in.shape, self.shape, meta_in.name)
        self.input = onnxruntime.OrtValue.ortvalue_from_shape_and_type(
            list(self.shape), self.dtype, device_type, device_id
        )
        self.outputs = []
        self._binding = ort.io_binding()
        self._binding.bind_ortvalue_input(meta_in.name, self.input)
        for meta in ort.get_outputs():
            out_shape = self._output_shape(meta.shape, meta.name)
            value = onnxruntime.OrtValue.ortvalue_from_shape_and_type(
                out_shape, _np_type(meta.type, meta.name), device_type, device_id
            )
            self._binding.bind_ortvalue_output(meta.name, value)
            self.outputs.append(value)
        self._session = ort

    def _check_shape(self, declared: Sequence[Any], shape: tuple[int, ...], name: str) -> None:
        fixed_ok = len(declared) == len(shape) and all(
            not isinstance(d, int) or d == s for d, s in zip(declared, shape)
        )
        if not fixed_ok:
            raise InputError(f"input {name!r} has shape {list(declared)}; cannot run it at {list(shape)}")

    def _output_shape(self, declared: Sequence[Any], name: str) -> list[int]:
        # The contract's outputs are (N, D): the batch axis follows the input's, the rest is fixed.
        if not declared or any(not isinstance(d, int) for d in declared[1:]):
            raise InputError(
                f"output {name!r} has shape {list(declared)}: only the batch axis may be dynamic for a fixed-shape run"
            )
        return [self.shape[0], *(int(d) for d in declared[1:])]

    def run(self, batch: np.ndarray) -> list[Any]:
        if not isinstance(batch, np.ndarray) or batch.shape != self.shape:
            got = batch.shape if isinstance(batch, np.ndarray) else type(batch).__name__
            raise InputError(f"this runner takes arrays of shape {self.shape}, got {got}")
        self.input.update_inplace(np.ascontiguousarray(batch, dtype=self.dtype))
        self._session.run_with_iobinding(self._binding)
        return self.outputs


def _np_type(ort_type: str, name: str) -> Any:
    if ort_type not in _ORT_TYPES:
        raise InputError(f"{name!r} has element type {ort_type}, which FixedShapeRunner does not handle")
    return _ORT_TYPES[ort_type]
