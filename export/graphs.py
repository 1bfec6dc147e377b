"""Torch wrappers that fix the graph contract, and their ONNX export (torch.onnx dynamo exporter)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from clip_rt.bundle.manifest import IMAGE_INPUT, IMAGE_OUTPUT, TEXT_INPUT, TEXT_OUTPUT

OPSET = 18
# Protobuf caps a single file at 2 GB; above this many parameter bytes the weights go to a
# companion file.
EXTERNAL_DATA_THRESHOLD = 1_800_000_000


def supports_dynamic_sequence(model: Any, pad_token_id: int = 0, padding_side: str = "right") -> bool:
    """True for text towers whose output is unchanged by trailing padding: open_clip CLIP towers
    with a causal mask (no token sees later ones) pooled at the EOT token, and Hugging Face
    towers (HFTextEncoder) that mask the tokenizer's padding out of attention and pooling
    (the mask is ``input_ids != config.pad_token_id``, computed inside the graph)."""
    import open_clip
    from open_clip.hf_model import HFTextEncoder

    text = getattr(model, "text", None)
    if isinstance(text, HFTextEncoder):
        return padding_side == "right" and getattr(text.config, "pad_token_id", None) == pad_token_id
    return (
        isinstance(model, open_clip.CLIP)
        and getattr(model, "attn_mask", None) is not None
        and getattr(model, "text_pool_type", None) in ("argmax", "eos")
        and getattr(model, "positional_embedding", None) is not None
    )


def text_pooling(model: Any) -> Optional[str]:
    """How the text tower pools its tokens, for the manifest (informational)."""
    from open_clip.hf_model import HFTextEncoder

    text = getattr(model, "text", None)
    if isinstance(text, HFTextEncoder):
        return {"MeanPooler": "mean", "MaxPooler": "max"}.get(type(text.pooler).__name__, "cls")
    pool = getattr(model, "text_pool_type", None) or getattr(text, "pool_type", None)
    return None if pool is None else str(pool)


def image_wrapper(model: Any) -> Any:
    import torch
    import torch.nn.functional as F

    class ImageEncoder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
            return F.normalize(self.model.encode_image(pixel_values), dim=-1)

    return ImageEncoder().eval()


def text_wrapper(model: Any, dynamic_sequence: bool) -> Any:
    """encode_text, normalised; with *dynamic_sequence*, positions and mask cut to the input length."""
    import torch
    import torch.nn.functional as F
    from open_clip.transformer import text_global_pool

    class FullContextTextEncoder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
            return F.normalize(self.model.encode_text(input_ids), dim=-1)

    class DynamicTextEncoder(torch.nn.Module):
        # Mirrors open_clip CLIP.encode_text, slicing what is sized by the context length.
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
            m = self.model
            length = input_ids.shape[1]
            x = m.token_embedding(input_ids)
            x = x + m.positional_embedding[:length]
            x = m.transformer(x, attn_mask=m.attn_mask[:length, :length])
            x = m.ln_final(x)
            x = text_global_pool(x, input_ids, m.text_pool_type, eos_token_id=getattr(m, "text_eos_id", None))
            if m.text_projection is not None:
                x = m.text_projection(x) if isinstance(m.text_projection, torch.nn.Linear) else x @ m.text_projection
            return F.normalize(x, dim=-1)

    import open_clip

    # open_clip CLIP towers are sized by the context length (positions, mask): sliced here. HF
    # towers take any length already (their mask and positions come from the ids).
    sliced = dynamic_sequence and isinstance(model, open_clip.CLIP)
    return (DynamicTextEncoder() if sliced else FullContextTextEncoder()).eval()


def parameter_bytes(module: Any) -> int:
    return sum(p.numel() * p.element_size() for p in module.parameters()) + sum(
        b.numel() * b.element_size() for b in module.buffers()
    )


def export_image_graph(model: Any, image_size: tuple[int, int], path: Path) -> list[str]:
    """Write the image graph to *path*; returns its external data files (names relative to the bundle)."""
    import torch

    wrapper = image_wrapper(model)
    example = torch.randn(2, 3, image_size[0], image_size[1])
    batch = torch.export.Dim("batch", min=1, max=4096)
    return _export(wrapper, example, IMAGE_INPUT, IMAGE_OUTPUT, {IMAGE_INPUT: {0: batch}}, path)


def export_text_graph(
    model: Any, context_length: int, dynamic_sequence: bool, path: Path, example_ids: Optional[Any] = None
) -> list[str]:
    """*example_ids*: (2+, context_length) real token ids to trace with (default: CLIP BPE's
    SOT, a few tokens, EOT, padding)."""
    import torch

    wrapper = text_wrapper(model, dynamic_sequence)
    if example_ids is not None:
        example = torch.as_tensor(example_ids[:2], dtype=torch.long).clone()
    else:
        # A plausible example: SOT, a few tokens, EOT (the highest id), then padding.
        example = torch.zeros(2, context_length, dtype=torch.long)
        example[:, 0] = 49406
        example[:, 1:4] = 320
        example[:, 4] = 49407
    shapes: dict[int, Any] = {0: torch.export.Dim("batch", min=1, max=4096)}
    if dynamic_sequence:
        # A length-1 sequence would let the exporter specialise; 2 is SOT + EOT, the shortest prompt.
        shapes[1] = torch.export.Dim("sequence", min=2, max=context_length)
    return _export(wrapper, example, TEXT_INPUT, TEXT_OUTPUT, {TEXT_INPUT: shapes}, path)


def _export(
    wrapper: Any, example: Any, input_name: str, output_name: str, dynamic_shapes: dict[str, Any], path: Path
) -> list[str]:
    import torch

    external = parameter_bytes(wrapper) > EXTERNAL_DATA_THRESHOLD
    try:
        with torch.no_grad():
            torch.onnx.export(
                wrapper,
                (example,),
                str(path),
                input_names=[input_name],
                output_names=[output_name],
                dynamic_shapes=dynamic_shapes,
                opset_version=OPSET,
                dynamo=True,
                external_data=external,
                verbose=False,
            )
    finally:
        forget_exported_graph()
    if not external:
        return []
    return sorted(p.name for p in path.parent.iterdir() if p.name.startswith(path.name) and p != path)


def forget_exported_graph() -> None:
    """Drop what onnxscript keeps of the last graph it optimised. Its rewrite rules are module-
    level objects shared by every export, and each rule's pattern matcher keeps the graph and
    node it last looked at (``_graph``, ``_current_node``, ...); that graph still lists every
    parameter of the exported module as an input, so the whole torch model (ViT-B-32: 577 MiB)
    stayed alive after the export, whatever the caller freed. A matcher sets these afresh on its
    next match, so clearing them changes nothing else; the attributes are private, so they are
    only cleared where they exist."""
    import gc

    try:
        from onnxscript.rewriter._matcher import PatternMatcher
    except ImportError:  # another onnxscript layout: nothing known to clear
        return
    for obj in gc.get_objects():
        # type(), not isinstance(): that would ask every object for __class__, and some answer
        # with a deprecation warning (torch.distributed.reduce_op).
        if issubclass(type(obj), PatternMatcher):
            for name in ("_graph", "_current_node", "_match", "_tracer"):
                if hasattr(obj, name):
                    setattr(obj, name, None)
