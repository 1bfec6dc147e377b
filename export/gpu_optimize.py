"""The fp16 graph for onnxruntime's CUDA execution provider: transformer fusions, then fp16.

``fuse_for_gpu(fp32_path, out_path, ...)`` runs onnxruntime.transformers' optimizer with
``use_gpu=True`` (fuses attention, LayerNorm/SkipLayerNorm, GELU, bias adds into the kernels
the CUDA provider has) on a clip-rt fp32 graph, then converts it to fp16 with float32 I/O
(``keep_io_types``: the graph contract stays float32 in, float32 out). With ``fp16=False`` the
fused graph stays fp32, which the CPU provider can run: that is how the fusions are checked
against the unfused graph on machines without a GPU (tests/test_gpu_path.py).

Only onnx / onnxruntime are needed (no torch). ``export/optimize.py`` holds the CPU variants.
"""
from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any, Iterator, Sequence, Union

from clip_rt.errors import InputError

PathLike = Union[str, "os.PathLike[str]"]
MODEL_TYPES = ("clip", "vit")


def fuse_for_gpu(
    onnx_path: PathLike,
    out_path: PathLike,
    *,
    num_heads: int = 0,
    hidden_size: int = 0,
    model_type: str = "clip",
    fp16: bool = True,
    keep_fp32_ops: Sequence[str] = (),
) -> dict[str, int]:
    """Write the fused (and, with *fp16*, float16 with float32 I/O) variant of the fp32 graph
    *onnx_path* to *out_path*; return the fused operator counts (``{"Attention": 12, ...}``).

    *num_heads*/*hidden_size*: the tower's attention heads and width (0: read from the graph).
    *keep_fp32_ops*: op types left in float32 behind Casts (on top of onnxruntime's default
    block list).
    """
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST
    from onnxruntime.transformers.optimizer import optimize_model

    src, dst = Path(onnx_path), Path(out_path)
    if model_type not in MODEL_TYPES:
        raise InputError(f"model_type must be one of {', '.join(MODEL_TYPES)}, got {model_type!r}")
    if not src.is_file():
        raise InputError(f"no ONNX graph at {src}")
    for label, value in (("num_heads", num_heads), ("hidden_size", hidden_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise InputError(f"{label} must be a non-negative integer (0 = read from the graph), got {value!r}")
    # opt_level=0: only the transformer-pattern fusions, no onnxruntime session (which with
    # use_gpu would need a GPU here); the CUDA provider applies its own graph rewrites at load.
    with _reduce_l2_shape_inference():
        model = optimize_model(str(src), model_type=model_type, num_heads=num_heads, hidden_size=hidden_size,
                               opt_level=0, use_gpu=True)
        stats = {k: int(v) for k, v in model.get_fused_operator_statistics().items() if v}
        if fp16:
            model.convert_float_to_float16(keep_io_types=True,
                                           op_block_list=list(DEFAULT_OP_BLOCK_LIST) + list(keep_fp32_ops))
    dst.parent.mkdir(parents=True, exist_ok=True)
    model.save_model_to_file(str(dst))
    return stats


@contextlib.contextmanager
def _reduce_l2_shape_inference() -> Iterator[None]:
    """Teach onnxruntime's symbolic shape inference the opset-18 ReduceL2 (axes as an input).

    The graphs end in ``F.normalize``, whose ReduceL2 that inference cannot shape; it then gives
    up on the whole graph, and the fusions that check shapes (SkipLayerNormalization, attention)
    are skipped. ReduceL2's output shape follows exactly ReduceSum's rule, which it handles.
    """
    from onnxruntime.tools import symbolic_shape_infer as tools_copy
    from onnxruntime.transformers import shape_infer_helper

    # onnxruntime.transformers imports the module a second time under the top-level name
    # ``symbolic_shape_infer`` (a sys.path addition): both class objects need the handler.
    classes = {tools_copy.SymbolicShapeInference, shape_infer_helper.SymbolicShapeInference}
    originals = {cls: cls.__dict__["__init__"] for cls in classes}

    def patch(cls: Any) -> None:
        original = originals[cls]

        def init(self: Any, *args: Any, **kwargs: Any) -> None:
            original(self, *args, **kwargs)
            self.dispatcher_.setdefault("ReduceL2", self._infer_ReduceSum)

        cls.__init__ = init

    for cls in classes:
        patch(cls)
    try:
        yield
    finally:
        for cls, original in originals.items():
            cls.__init__ = original
