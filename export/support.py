"""Which open_clip architectures clip-rt can export: one rule, from the architecture's open_clip
config alone, used by the export (before any work) and by ``catalogue_build``, which writes the
verdicts into ``models/catalogue.json`` for ``clip-rt models --available`` (a torch-free runtime
cannot ask open_clip)."""
from __future__ import annotations

from typing import Any, Mapping, Optional

def unsupported_reason(arch: str, model_cfg: Optional[Mapping[str, Any]]) -> Optional[str]:
    """None when clip-rt can export *arch*, whose open_clip model config is *model_cfg*; else
    why not, as a short phrase. Mirrors open_clip.get_tokenizer's choice of tokenizer: clip-rt
    reproduces only open_clip's CLIP BPE tokenizer (SimpleTokenizer, lower-casing) so far."""
    if model_cfg is None:
        return "open_clip has no model config for it"
    text_cfg = model_cfg.get("text_cfg") or {}
    hf_tokenizer = text_cfg.get("hf_tokenizer_name")
    if hf_tokenizer:
        return f"non-CLIP tokenizer ({hf_tokenizer})"
    if "siglip" in arch.lower():
        return "non-CLIP tokenizer (SigLIP's)"
    kwargs = text_cfg.get("tokenizer_kwargs") or {}
    if kwargs.get("reduction_mask"):
        return f"CLIP tokenizer with a {kwargs['reduction_mask']!r} text reduction mask"
    clean = kwargs.get("clean", "lower")
    if clean != "lower":
        return f"CLIP tokenizer with {clean!r} text cleaning instead of lower-casing"
    return None
