"""Which tokenizer a model needs, where it comes from offline, and what the bundle records of it.

open_clip models tokenise with its CLIP BPE (``SimpleTokenizer``) or, when the model config
names ``text_cfg.hf_tokenizer_name`` (SigLIP, SigLIP2, XLM-R, NLLB, RoBERTa ... towers), a
Hugging Face tokenizer wrapped in ``HFTokenizer`` (cleaning, context length, padding). Tokenizer
files cannot be downloaded here, so the export takes them from ``--tokenizer PATH`` (a
``tokenizer.json`` or a tokenizer folder) or from the Hugging Face cache, builds open_clip's
own tokenizer object from them (``open_clip.get_tokenizer('local-dir:...')``, so every setting is
open_clip's), and writes the bundle's ``tokenizer.json`` from the tokenizer transformers
actually built (transformers 5 rebuilds some pipelines from its own class definitions, so the
file passed in is not necessarily what runs).
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any, Optional

from clip_rt.errors import ExportError, InputError

# Files of a Hugging Face tokenizer folder that AutoTokenizer may read.
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "sentencepiece.bpe.model",
    "spiece.model",
    "tokenizer.model",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
)


@lru_cache(maxsize=1)
def hf_text_data() -> dict[str, Any]:
    text = resources.files("clip_rt_export").joinpath("hf_text.json").read_text(encoding="utf-8")
    return dict(json.loads(text))


@dataclass(frozen=True)
class TokenizerNeed:
    """What open_clip's model config says about the text tokenizer."""

    hf_name: str  # text_cfg.hf_tokenizer_name ("" for CLIP BPE)
    kwargs: dict[str, Any] = field(default_factory=dict)  # text_cfg.tokenizer_kwargs
    mode: Optional[str] = None  # text_cfg.tokenizer_mode
    context_length: Optional[int] = None

    @property
    def is_hf(self) -> bool:
        return bool(self.hf_name)

    @property
    def kind(self) -> str:
        """A short description for messages: the tokenizer family."""
        if "SigLIP2" in self.hf_name:
            return "Gemma SentencePiece (SigLIP2)"
        if "SigLIP" in self.hf_name:
            return "T5 SentencePiece (SigLIP)"
        return f"Hugging Face {self.hf_name}"


def tokenizer_need(model_cfg: dict[str, Any], arch: str) -> TokenizerNeed:
    text_cfg = dict((model_cfg or {}).get("text_cfg", {}))
    name = str(text_cfg.get("hf_tokenizer_name") or "")
    if not name and "siglip" in arch.lower():
        # open_clip would fetch a SentencePiece model from the network (SigLipTokenizer).
        raise ExportError(
            f"{arch}: its config names no hf_tokenizer_name, so open_clip would download a SigLIP "
            "SentencePiece vocabulary; add text_cfg.hf_tokenizer_name to the config and pass the "
            "tokenizer with --tokenizer PATH"
        )
    mode = text_cfg.get("tokenizer_mode")
    if mode:
        raise ExportError(f"{arch}: open_clip's tokenizer_mode {mode!r} is not supported by clip-rt yet")
    ctx = text_cfg.get("context_length")
    return TokenizerNeed(
        name, dict(text_cfg.get("tokenizer_kwargs", {}) or {}), mode, None if ctx is None else int(ctx)
    )


def _default_tokenizer_config(hf_name: str) -> Optional[dict[str, Any]]:
    configs = hf_text_data()["tokenizer_configs"]
    if hf_name in configs:
        return dict(configs[hf_name])
    if "SigLIP2" in hf_name:
        return dict(configs["SigLIP2"])
    return None


def missing_tokenizer_message(arch: str, need: TokenizerNeed, why: str) -> str:
    return (
        f"{arch} needs the {need.kind} tokenizer {need.hf_name!r}, and {why}. Download it on a connected "
        f"machine (e.g. `huggingface-cli download {need.hf_name} tokenizer.json tokenizer_config.json "
        f"special_tokens_map.json --local-dir DIR`) and pass it with --tokenizer DIR (a tokenizer folder) or "
        f"--tokenizer DIR/tokenizer.json"
    )


def stage_tokenizer(
    arch: str, need: TokenizerNeed, tokenizer: Optional[Path], workdir: Path, model_cfg: dict[str, Any]
) -> Path:
    """A folder open_clip can build the model's tokenizer from offline (``local-dir:`` schema):
    the tokenizer files plus an ``open_clip_config.json`` holding *model_cfg*. From *tokenizer*
    (a tokenizer.json or a folder), else the Hugging Face cache; raises ExportError saying what
    to pass when neither has it."""
    folder = workdir / "tokenizer"
    folder.mkdir(parents=True, exist_ok=True)
    if tokenizer is not None:
        src = Path(tokenizer).expanduser()
        if src.is_file():
            if src.suffix != ".json":
                raise InputError(f"--tokenizer {tokenizer}: expected a tokenizer.json file or a tokenizer folder")
            shutil.copyfile(src, folder / "tokenizer.json")
        elif src.is_dir():
            found = [n for n in TOKENIZER_FILES if (src / n).is_file()]
            if not found:
                raise InputError(
                    f"--tokenizer {tokenizer}: the folder has none of the tokenizer files "
                    f"({', '.join(TOKENIZER_FILES[:3])}, ...)"
                )
            for name in found:
                shutil.copyfile(src / name, folder / name)
        else:
            raise InputError(f"--tokenizer {tokenizer}: no such file or folder")
    else:
        cached = _hub_cached_tokenizer(need.hf_name)
        if cached is None:
            raise ExportError(
                missing_tokenizer_message(
                    arch, need, "it is not in the local Hugging Face cache (the export does not download tokenizers)"
                )
            )
        for name in TOKENIZER_FILES:
            if (cached / name).is_file():
                shutil.copyfile(cached / name, folder / name)
    if not (folder / "tokenizer_config.json").is_file():
        default = _default_tokenizer_config(need.hf_name)
        if default is None:
            raise InputError(
                f"--tokenizer {tokenizer}: {need.hf_name!r} needs its tokenizer_config.json (the "
                "special tokens); pass the tokenizer folder instead of the tokenizer.json file"
            )
        (folder / "tokenizer_config.json").write_text(json.dumps(default), encoding="utf-8")
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": model_cfg}), encoding="utf-8")
    return folder


def _hub_cached_tokenizer(repo: str) -> Optional[Path]:
    """The cached snapshot folder that holds *repo*'s tokenizer files, or None."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    for name in ("tokenizer.json", "tokenizer_config.json", "sentencepiece.bpe.model", "spiece.model"):
        try:
            hit = try_to_load_from_cache(repo, name)
        except (ValueError, OSError):  # not a valid repo id
            return None
        if isinstance(hit, str) and Path(hit).is_file():
            return Path(hit).parent
    return None


def build_open_clip_tokenizer(arch: str, need: TokenizerNeed, folder: Path) -> Any:
    """open_clip's own tokenizer object for the model, from the staged *folder*."""
    import open_clip

    try:
        return open_clip.get_tokenizer(f"local-dir:{folder}")
    except ImportError as exc:
        raise ExportError(
            f"{arch}: its Hugging Face tokenizer needs transformers ({exc}); pip install 'clip-rt[export]'"
        ) from exc
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ExportError(
            f"{arch}: transformers could not build the {need.kind} tokenizer from "
            f"{folder} ({type(exc).__name__}: {exc})"
        ) from exc


def write_hf_tokenizer(tokenizer: Any, path: Path) -> None:
    """The tokenizer transformers built for open_clip (what really runs), without the
    truncation/padding state its calls leave behind (the runtime does both itself)."""
    from tokenizers import Tokenizer

    backend = Tokenizer.from_str(tokenizer.tokenizer.backend_tokenizer.to_str())
    backend.no_truncation()
    backend.no_padding()
    backend.save(str(path))


def hf_text_fields(tokenizer: Any, vocab_rows: int) -> dict[str, Any]:
    """The manifest's text fields for an open_clip HFTokenizer (see TextConfig)."""
    hf = tokenizer.tokenizer
    top = max(hf.backend_tokenizer.get_vocab(with_added_tokens=True).values())
    if top >= vocab_rows:
        raise ExportError(
            f"the tokenizer has ids up to {top} but the model's text tower embeds only {vocab_rows} "
            "tokens: is it the tokenizer this model was trained with?"
        )
    if hf.pad_token_id is None:
        raise ExportError(
            "the tokenizer has no padding token, so open_clip cannot pad its ids; pass a tokenizer "
            "folder whose tokenizer_config.json names pad_token"
        )
    from open_clip.tokenizer import get_clean_fn

    from clip_rt.bundle.manifest import CLEAN_FUNCTIONS

    clean = next((name for name in CLEAN_FUNCTIONS if tokenizer.clean_fn is get_clean_fn(name)), None)
    if clean is None:
        raise ExportError(f"the tokenizer cleans text with {tokenizer.clean_fn!r}, which clip-rt does not reproduce")
    return {
        "tokenizer_kind": "hf",
        "clean": clean,
        "sot_token_id": _first(hf.bos_token_id, hf.cls_token_id),
        "eot_token_id": _first(hf.eos_token_id, hf.sep_token_id),
        "pad_token_id": int(hf.pad_token_id),
        "padding_side": str(hf.padding_side),
        "truncation_side": str(hf.truncation_side),
        "strip_sep_token": bool(tokenizer.strip_sep_token),
        "sep_token_id": None if hf.sep_token_id is None else int(hf.sep_token_id),
        "vocab_size": int(vocab_rows),
    }


def _first(*values: Optional[int]) -> Optional[int]:
    return next((int(v) for v in values if v is not None), None)


def hf_model_config(hf_model_name: str, workdir: Path) -> Path:
    """A folder with the ``config.json`` HFTextEncoder builds the tower from, offline: the folder
    *hf_model_name* itself when it is a local one, the Hugging Face cache's copy when it has
    one, else ``hf_text.json``'s values through transformers' config classes."""
    try:
        from transformers import AutoConfig
    except ImportError as exc:
        raise ExportError(f"Hugging Face text towers need transformers ({exc}); pip install 'clip-rt[export]'") from exc
    local = Path(hf_model_name).expanduser()
    if (local / "config.json").is_file():  # a local model folder (e.g. a small test tower)
        return local
    folder = workdir / "hf-config"
    folder.mkdir(parents=True, exist_ok=True)
    try:
        from huggingface_hub import try_to_load_from_cache

        hit = try_to_load_from_cache(hf_model_name, "config.json")
    except (ImportError, ValueError, OSError):
        hit = None
    if isinstance(hit, str) and Path(hit).is_file():
        shutil.copyfile(hit, folder / "config.json")
        return folder
    values = hf_text_data()["model_configs"].get(hf_model_name)
    if values is None:
        raise ExportError(
            f"the text tower {hf_model_name!r} needs its transformers config.json, which is not in the local "
            f"Hugging Face cache and not among the configs clip-rt knows ({', '.join(hf_text_data()['model_configs'])})"
        )
    values = dict(values)
    config = AutoConfig.for_model(values.pop("model_type"), **values)
    config.save_pretrained(str(folder))
    return folder


def temp_workdir() -> tempfile.TemporaryDirectory:  # type: ignore[type-arg]
    return tempfile.TemporaryDirectory(prefix="clip-rt-text-")
