"""Which open_clip architectures clip-rt can export: one rule, from the architecture's open_clip
config alone, used by the export (before any work) and by ``catalogue_build``, which writes the
verdicts into ``models/catalogue.json`` for ``clip-rt models --available`` (a torch-free runtime
cannot ask open_clip)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Optional


def unsupported_reason(arch: str, model_cfg: Optional[Mapping[str, Any]]) -> Optional[str]:
    """None when clip-rt can export *arch*, whose open_clip model config is *model_cfg*; else
    why not, as a short phrase. Mirrors open_clip.get_tokenizer's choice of tokenizer: open_clip's
    CLIP BPE tokenizer (SimpleTokenizer, lower-casing) and Hugging Face tokenizers named by
    ``text_cfg.hf_tokenizer_name`` (run as open_clip's HFTokenizer; the export needs their files
    passed with --tokenizer or in the Hugging Face cache)."""
    if model_cfg is None:
        return "open_clip has no model config for it"
    text_cfg = model_cfg.get("text_cfg") or {}
    mode = text_cfg.get("tokenizer_mode")
    if mode:
        return f"open_clip tokenizer_mode {mode!r}"
    if text_cfg.get("hf_tokenizer_name"):
        return None
    if "siglip" in arch.lower():
        return "SigLIP config without hf_tokenizer_name (open_clip would download a SentencePiece vocabulary)"
    kwargs = text_cfg.get("tokenizer_kwargs") or {}
    if kwargs.get("reduction_mask"):
        return f"CLIP tokenizer with a {kwargs['reduction_mask']!r} text reduction mask"
    clean = kwargs.get("clean", "lower")
    if clean != "lower":
        return f"CLIP tokenizer with {clean!r} text cleaning instead of lower-casing"
    return None
