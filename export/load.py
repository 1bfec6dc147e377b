"""Resolve MODEL / --pretrained to an open_clip model with its weights, failing fast offline."""

from __future__ import annotations

import json
import os
import socket
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional
from urllib.parse import urlparse

from clip_rt.bundle.catalogue import RANDOM_TAG, canonical_name, close_matches, load_catalogue, resolve_alias, sanitize
from clip_rt.bundle.manifest import sha256_file
from clip_rt.errors import ExportError, InputError

NONE_TAG = "none"
# How long the reachability probe may take before a tag download is declared impossible.
PROBE_TIMEOUT_S = 3.0
# The keys of open_clip's PreprocessCfg a pretrained tag may set.
_PREPROCESS_KEYS = ("mean", "std", "interpolation", "resize_mode", "fill_color")


@dataclass
class WeightsSource:
    """Where the weights come from, as the user asked for them."""

    kind: str  # "tag" | "checkpoint" | "random"
    value: Optional[str]  # the tag, or the checkpoint path; None for random

    @property
    def store_tag(self) -> str:
        """The suffix of the store folder name (``openai``, ``my_finetune``, ``random``)."""
        if self.kind == "tag":
            return str(self.value)
        if self.kind == "checkpoint":
            return sanitize(Path(str(self.value)).stem)
        return RANDOM_TAG


@dataclass
class LoadedModel:
    model: Any  # open_clip CLIP / CustomTextCLIP, eval mode, fp32, cpu
    tokenizer: Any  # open_clip tokenizer (SimpleTokenizer)
    architecture: str
    source: WeightsSource
    checkpoint_sha256: Optional[str]
    notes: list[str]


def resolve_model_name(model: str, pretrained: Optional[str]) -> tuple[str, str]:
    """``(architecture, pretrained)`` from MODEL and --pretrained (None: the default tag).

    Raises InputError when no tag is given and ``openai`` is not one of the architecture's tags.
    """
    import open_clip

    alias = resolve_alias(model)
    arch = alias.architecture if alias else model
    if arch not in open_clip.list_models():
        canonical = canonical_name(model)  # vit-b-32 -> ViT-B-32, vit-b/32 -> ViT-B/32
        if canonical is not None and canonical != model:
            return resolve_model_name(canonical, pretrained)
        close = close_matches(model, [*load_catalogue()["aliases"], *open_clip.list_models()])
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise InputError(
            f"unknown model {model!r}: expected an open_clip architecture (e.g. ViT-B-32, RN50, "
            f"convnext_base_w; `clip-rt models --available` lists them), an OpenAI alias such as "
            f"ViT-B/32, or a name plus --model-config FILE.json.{hint}"
        )
    if pretrained is not None:
        return arch, pretrained
    if alias is not None and alias.pretrained:
        return arch, alias.pretrained
    tags = open_clip.list_pretrained_tags_by_model(arch)
    if "openai" in tags:
        return arch, "openai"
    known = ", ".join(tags) if tags else "none (pass a checkpoint file or `none`)"
    raise InputError(
        f"{model!r} has no default weights: pass --pretrained TAG, a checkpoint file, or `none` "
        f"for random weights. Tags open_clip knows for {arch}: {known}"
    )


def classify_source(arch: str, pretrained: str) -> WeightsSource:
    import open_clip

    if pretrained.lower() == NONE_TAG:
        return WeightsSource("random", None)
    if open_clip.get_pretrained_cfg(arch, pretrained):
        return WeightsSource("tag", pretrained)
    path = Path(pretrained).expanduser()
    if path.is_file():
        return WeightsSource("checkpoint", str(path))
    if path.exists():
        raise InputError(f"--pretrained {pretrained!r}: expected a checkpoint file, got a directory")
    tags = open_clip.list_pretrained_tags_by_model(arch)
    raise InputError(
        f"--pretrained {pretrained!r} is neither a tag open_clip knows for {arch} "
        f"({', '.join(tags) or 'it has none'}), nor an existing checkpoint file, nor `none`"
    )


def register_model_config(model: str, config_file: Path, workdir: Path) -> None:
    """Make *config_file* (an open_clip model config JSON) known to open_clip as *model*."""
    import open_clip

    try:
        cfg = json.loads(Path(config_file).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"--model-config {config_file}: no such file") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"--model-config {config_file}: not valid JSON ({exc})") from exc
    cfg = cfg.get("model_cfg", cfg) if isinstance(cfg, dict) else cfg
    missing = [k for k in ("embed_dim", "vision_cfg", "text_cfg") if not isinstance(cfg, dict) or k not in cfg]
    if missing:
        raise InputError(
            f"--model-config {config_file}: expected an open_clip model config with "
            f"embed_dim, vision_cfg and text_cfg; missing {', '.join(missing)}"
        )
    if "/" in model or "\\" in model:
        raise InputError(f"with --model-config, MODEL names the architecture and may not contain '/': got {model!r}")
    # open_clip names a config by its file stem, so register a copy named after MODEL.
    target = workdir / f"{model}.json"
    target.write_text(json.dumps(cfg), encoding="utf-8")
    open_clip.add_model_config(target)


def fetch_tag_weights(arch: str, tag: str, log: Callable[[str], None]) -> str:
    """Local path of the tag's weights: the hub cache, else a download once the host answers.

    Offline this fails within PROBE_TIMEOUT_S instead of open_clip's retry loop.
    """
    import open_clip

    cfg = open_clip.get_pretrained_cfg(arch, tag)
    hub = cfg.get("hf_hub", "")
    url = cfg.get("url", "")
    if hub:
        cached = _hub_cached_file(hub)
        if cached:
            log(f"weights for {arch}/{tag}: {cached} (cache)")
            return cached
    host = _hub_host() if hub else (urlparse(url).hostname or "")
    why = _unreachable_reason(host)
    if why:
        raise ExportError(
            f"could not fetch the weights for {arch} --pretrained {tag}: {why}. "
            f"Download the checkpoint on a connected machine (or copy open_clip's cache) and pass "
            f"it as --pretrained PATH/TO/CHECKPOINT.pt, or use --pretrained none for random weights."
        )
    log(f"downloading weights for {arch}/{tag} ...")
    try:
        path = open_clip.download_pretrained(cfg)
    except (OSError, RuntimeError, ValueError) as exc:
        raise ExportError(
            f"could not fetch the weights for {arch} --pretrained {tag}: {exc}. "
            f"Pass a local checkpoint as --pretrained PATH instead."
        ) from exc
    if not path or not Path(path).is_file():
        raise ExportError(f"could not fetch the weights for {arch} --pretrained {tag}: no file came back")
    return str(path)


def _hub_cached_file(hub: str) -> Optional[str]:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import LocalEntryNotFoundError
    from open_clip.pretrained import HF_WEIGHTS_NAME, _get_safe_alternatives

    # The same files, in the same order, as open_clip.download_pretrained_from_hf tries.
    repo, filename = os.path.split(hub)
    filename = filename or HF_WEIGHTS_NAME
    for name in [*_get_safe_alternatives(filename), filename]:
        try:
            return str(hf_hub_download(repo_id=repo, filename=name, local_files_only=True))
        except LocalEntryNotFoundError:
            continue
    return None


def _hub_host() -> str:
    from huggingface_hub import constants

    return urlparse(constants.ENDPOINT).hostname or "huggingface.co"


def _unreachable_reason(host: str) -> Optional[str]:
    """None when *host* accepts a TCP connection on 443 within PROBE_TIMEOUT_S, else why not."""
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        return "HF_HUB_OFFLINE is set and the weights are not in the local cache"
    if not host:
        return "the tag names no download location"
    try:
        with socket.create_connection((host, 443), timeout=PROBE_TIMEOUT_S):
            return None
    except OSError as exc:
        return f"{host} is unreachable ({exc.__class__.__name__}: {exc})"


def resolve(model: str, pretrained: Optional[str], model_config: Optional[Path] = None) -> tuple[str, WeightsSource]:
    """The open_clip architecture and weights source for MODEL / --pretrained / --model-config.

    Cheap (no weights are read), so the export can check its target before any real work.
    """
    if model_config is not None:
        with tempfile.TemporaryDirectory(prefix="clip-rt-config-") as workdir:
            register_model_config(model, Path(model_config), Path(workdir))
        arch = model
        pretrained = NONE_TAG if pretrained is None else pretrained
    else:
        arch, pretrained = resolve_model_name(model, pretrained)
    check_tokenizer_supported(arch)
    return arch, classify_source(arch, pretrained)


def check_tokenizer_supported(arch: str) -> None:
    """Fail before any work for architectures clip-rt cannot export: the one rule is
    :func:`clip_rt_export.support.unsupported_reason` (which `clip-rt models --available` shows
    too); then what the tokenizer needs (:func:`text_tokenizer.tokenizer_need`)."""
    import open_clip

    from .support import unsupported_reason
    from .text_tokenizer import tokenizer_need

    model_cfg = open_clip.get_model_config(arch)
    reason = unsupported_reason(arch, model_cfg)
    if reason:
        raise ExportError(
            f"{arch} is not supported yet: {reason} (`clip-rt models --available` lists what clip-rt exports)"
        )
    tokenizer_need(model_cfg or {}, arch)


def load_model(
    arch: str,
    source: WeightsSource,
    seed: Optional[int] = None,
    log: Callable[[str], None] = lambda _msg: None,
    tokenizer: Optional[Path] = None,
) -> LoadedModel:
    """The open_clip model (eval, fp32, cpu) and tokenizer; *arch* and *source* come from resolve().
    *tokenizer*: a tokenizer.json or tokenizer folder for models with a Hugging Face tokenizer
    (else the Hugging Face cache is looked in)."""
    import open_clip

    from . import text_tokenizer

    model_cfg = open_clip.get_model_config(arch) or {}
    need = text_tokenizer.tokenizer_need(model_cfg, arch)
    if tokenizer is not None and not need.is_hf:
        raise InputError(f"--tokenizer: {arch} uses open_clip's built-in CLIP BPE tokenizer; pass no --tokenizer")
    with tempfile.TemporaryDirectory(prefix="clip-rt-text-") as workdir:
        hf_tokenizer = None
        if need.is_hf:  # before the model: a missing tokenizer should fail in a second, not after minutes
            folder = text_tokenizer.stage_tokenizer(arch, need, tokenizer, Path(workdir), model_cfg)
            hf_tokenizer = text_tokenizer.build_open_clip_tokenizer(arch, need, folder)
            log(f"tokenizer: {need.kind} from {tokenizer or 'the Hugging Face cache'}")
        overrides: dict[str, Any] = {}
        hf_model = model_cfg.get("text_cfg", {}).get("hf_model_name")
        if hf_model:
            # HFTextEncoder reads its transformers config by name (a hub download): give it a local one.
            hf_config = text_tokenizer.hf_model_config(hf_model, Path(workdir))
            text_cfg = dict(model_cfg["text_cfg"], hf_model_name=str(hf_config), hf_model_pretrained=False)
            overrides["text_cfg"] = text_cfg
        loaded = _load_model(arch, source, seed, log, overrides)
    if hf_tokenizer is not None:
        loaded.tokenizer = hf_tokenizer
        loaded.notes.append(f"tokenizer: {need.hf_name} through open_clip's HFTokenizer ({need.kind})")
    return loaded


def _load_model(
    arch: str, source: WeightsSource, seed: Optional[int], log: Callable[[str], None], overrides: dict[str, Any]
) -> LoadedModel:
    import open_clip
    import torch

    notes: list[str] = []
    # Tower weights from other hubs (timm, HF) would be a download too: the full checkpoint has them.
    kwargs: dict[str, Any] = {"pretrained_text": False, "pretrained_image": False, **overrides}
    checkpoint: Optional[str] = None
    if source.kind == "tag":
        cfg = open_clip.get_pretrained_cfg(arch, str(source.value))
        checkpoint = fetch_tag_weights(arch, str(source.value), log)
        kwargs["force_preprocess_cfg"] = {k: cfg[k] for k in _PREPROCESS_KEYS if k in cfg}
        if cfg.get("quick_gelu"):
            kwargs["force_quick_gelu"] = True
            notes.append(f"QuickGELU enabled: the {source.value} weights were trained with it")
    elif source.kind == "checkpoint":
        checkpoint = str(source.value)
    if seed is not None:
        torch.manual_seed(seed)
    try:
        net = open_clip.create_model(arch, pretrained=checkpoint, **kwargs)
    except ImportError as exc:  # timm / transformers towers
        raise ExportError(f"could not build {arch}: {exc}; pip install 'clip-rt[export]'") from exc
    except (RuntimeError, KeyError, OSError, ValueError) as exc:
        what = f"checkpoint {checkpoint}" if checkpoint else "random weights"
        raise ExportError(f"could not build {arch} with {what}: {exc}") from exc
    if source.kind == "random":
        notes.append("random weights" + (f" (seed {seed})" if seed is not None else " (unseeded)"))
    tokenizer = None  # an HF tokenizer is built by load_model
    if not (open_clip.get_model_config(arch) or {}).get("text_cfg", {}).get("hf_tokenizer_name"):
        tokenizer = open_clip.get_tokenizer(arch)
        _check_tokenizer(arch, tokenizer)
    return LoadedModel(
        model=net.float().eval(),
        tokenizer=tokenizer,
        architecture=arch,
        source=source,
        checkpoint_sha256=sha256_file(Path(checkpoint)) if checkpoint else None,
        notes=notes,
    )


def _check_tokenizer(arch: str, tokenizer: Any) -> None:
    from open_clip.tokenizer import SimpleTokenizer

    if type(tokenizer) is not SimpleTokenizer:
        raise ExportError(
            f"{arch} uses the {type(tokenizer).__name__} tokenizer; clip-rt supports only open_clip's "
            f"CLIP BPE tokenizer (SimpleTokenizer) so far, so this model is not supported yet"
        )
    from open_clip.tokenizer import get_clean_fn

    if tokenizer.reduction_fn is not None:
        raise ExportError(f"{arch}: its tokenizer uses a text reduction mask, which is not supported yet")
    probe = "A  Photo, of the DOG!"
    if tokenizer.clean_fn(probe) != get_clean_fn("lower")(probe):
        raise ExportError(
            f"{arch}: its tokenizer cleans text differently from CLIP's default (lower-casing), "
            f"which is not supported yet"
        )
