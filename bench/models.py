"""The models under test: the seeded open_clip model (torch baselines) and ONNX Runtime sessions.

Real weights are not downloadable here, so every benchmark uses ``pretrained=None`` weights
drawn from a fixed seed: the same model on both sides, so parity figures stay meaningful.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional


@dataclass
class TorchModel:
    arch: str
    seed: int
    model: Any  # open_clip CLIP, eval mode, fp32
    preprocess: Callable[[Any], Any]  # PIL image -> (3, H, W) tensor
    tokenizer: Callable[[list[str]], Any]

    @property
    def image_size(self) -> tuple[int, int]:
        size = self.model.visual.image_size
        return (size, size) if isinstance(size, int) else tuple(size)  # type: ignore[return-value]

    @property
    def vision_heads_width(self) -> tuple[int, int]:
        block = self.model.visual.transformer.resblocks[0].attn
        return int(block.num_heads), int(block.embed_dim)


def load_torch(arch: str = "ViT-B-32", seed: int = 0, model_cfg: Optional[dict] = None) -> TorchModel:
    """open_clip *arch* with random weights from *seed* (or a custom *model_cfg* for tiny tests)."""
    import open_clip
    import torch

    torch.manual_seed(seed)
    if model_cfg is not None:
        open_clip.factory._MODEL_CONFIGS[arch] = model_cfg  # register a test-only config
    model, _, preprocess = open_clip.create_model_and_transforms(arch, pretrained=None)
    model.eval()
    tokenizer = open_clip.get_tokenizer(arch)
    return TorchModel(arch, seed, model, preprocess, tokenizer)


def ort_session(path: Path, threads: int = 2, spinning: bool = False) -> Any:
    """A plain CPU session on *path* with session_options(), spin-waiting optional."""
    import onnxruntime as ort

    so = session_options(threads, spinning)
    return ort.InferenceSession(str(path), sess_options=so, providers=["CPUExecutionProvider"])


def session_options(threads: int = 2, spinning: bool = False) -> Any:
    """The session settings these benchmarks chose for the runtime (docs/benchmarks/history.md): *threads*
    intra-op threads, no spin-waiting (spinning threads lose badly when the cores are shared),
    sequential execution, all graph optimisations."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    so.log_severity_level = 3
    return so
