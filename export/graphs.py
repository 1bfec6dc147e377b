"""Torch wrappers that fix the graph contract, and their ONNX export (torch.onnx dynamo exporter)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from clip_rt.bundle.manifest import IMAGE_INPUT, IMAGE_OUTPUT, TEXT_INPUT, TEXT_OUTPUT

OPSET = 18
# Protobuf caps a single file at 2 GB; above this many parameter bytes the weights go to a
# companion file.
EXTERNAL_DATA_THRESHOLD = 1_800_000_000


def supports_dynamic_sequence(model: Any) -> bool:
    """True for open_clip CLIP text towers whose output is unchanged by trailing padding:
    a causal mask (no token sees later ones) and pooling at the EOT token."""
    import open_clip

    return (
        isinstance(model, open_clip.CLIP)
        and getattr(model, "attn_mask", None) is not None
        and getattr(model, "text_pool_type", None) in ("argmax", "eos")
        and getattr(model, "positional_embedding", None) is not None
    )


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

    return (DynamicTextEncoder() if dynamic_sequence else FullContextTextEncoder()).eval()


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


def export_text_graph(model: Any, context_length: int, dynamic_sequence: bool, path: Path) -> list[str]:
    import torch

    wrapper = text_wrapper(model, dynamic_sequence)
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


def _export(wrapper: Any, example: Any, input_name: str, output_name: str, dynamic_shapes: dict, path: Path) -> list[str]:
    import torch

    external = parameter_bytes(wrapper) > EXTERNAL_DATA_THRESHOLD
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
    if not external:
        return []
    return sorted(p.name for p in path.parent.iterdir() if p.name.startswith(path.name) and p != path)
