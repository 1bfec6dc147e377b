"""Known model names and OpenAI aliases, read from the packaged ``models/catalogue.json``."""

from __future__ import annotations

import difflib
import json
import re
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import Any, Optional

RANDOM_TAG = "random"  # store-name suffix for ``--pretrained none``


@dataclass(frozen=True)
class ModelRef:
    """An open_clip architecture plus where its weights come from."""

    architecture: str
    pretrained: Optional[str]  # open_clip tag, checkpoint path, or None for random weights


@lru_cache(maxsize=1)
def load_catalogue() -> dict[str, Any]:
    text = resources.files("clip_rt_models").joinpath("catalogue.json").read_text(encoding="utf-8")
    data: dict[str, Any] = json.loads(text)
    return data


def architectures() -> dict[str, list[str]]:
    """Every open_clip architecture of the snapshot with its pretrained tags (exportable or not)."""
    return dict(load_catalogue()["architectures"])


def unsupported() -> dict[str, str]:
    """Architectures the export refuses, with the reason (``clip_rt_export.support``'s rule,
    recorded in the catalogue by ``python -m clip_rt_export.catalogue_build``)."""
    return dict(load_catalogue().get("unsupported", {}))


def exportable_architectures() -> dict[str, list[str]]:
    """The architectures `clip-rt export` accepts, with their pretrained tags."""
    refused = unsupported()
    return {arch: tags for arch, tags in architectures().items() if arch not in refused}


def canonical_name(name: str) -> Optional[str]:
    """An alias or architecture spelt as the catalogue spells it, matched case-insensitively
    (``vit-b/32`` -> ``ViT-B/32``, ``vit-b-32`` -> ``ViT-B-32``); None when there is none."""
    wanted = name.casefold()
    for known in (*load_catalogue()["aliases"], *architectures()):
        if known.casefold() == wanted:
            return str(known)
    return None


def catalogue_store_names() -> list[str]:
    """The store names exports of exportable architectures get: ``<arch>-<tag>`` for each tag
    open_clip lists, and ``<arch>-random`` (``--pretrained none``)."""
    names: list[str] = []
    for arch, tags in exportable_architectures().items():
        names.extend(store_name(arch, tag) for tag in [*tags, None])
    return names


def close_matches(name: str, candidates: list[str], n: int = 3) -> list[str]:
    """The up to *n* names in *candidates* closest to *name* (difflib, case-insensitive), best first."""
    by_fold: dict[str, list[str]] = {}
    for c in dict.fromkeys(candidates):
        by_fold.setdefault(c.casefold(), []).append(c)
    found = difflib.get_close_matches(name.casefold(), list(by_fold), n=n, cutoff=0.6)
    return [c for f in found for c in by_fold[f]][:n]


@lru_cache(maxsize=1)
def load_families() -> dict[str, Any]:
    """``models/families.json``: the families clip-rt exports, with the parity and int8 speed-up
    measured on this project's CPU (written by ``python -m bench.models_table``)."""
    try:
        text = resources.files("clip_rt_models").joinpath("families.json").read_text(encoding="utf-8")
    except FileNotFoundError:
        return {"families": {}, "patterns": []}
    data: dict[str, Any] = json.loads(text)
    return data


def family_of(architecture: str) -> Optional[str]:
    """The family an open_clip architecture belongs to (``SigLIP2``, ``ViT (CLIP)``, ...), by
    the name patterns of families.json; None when no pattern matches."""
    for entry in load_families().get("patterns", []):
        if re.search(entry["pattern"], architecture):
            return str(entry["family"])
    return None


def resolve_alias(name: str) -> Optional[ModelRef]:
    """``ViT-B/32`` -> ``ModelRef('ViT-B-32', 'openai')``; None when *name* is no alias."""
    entry = load_catalogue()["aliases"].get(name)
    if entry is None:
        return None
    return ModelRef(entry["architecture"], entry["pretrained"])


def store_name(architecture: str, tag: Optional[str]) -> str:
    """The store folder name for an export: ``ViT-B-32-openai``, ``ViT-B-32-random``."""
    suffix = tag if tag else RANDOM_TAG
    return f"{architecture}-{sanitize(suffix)}"


def sanitize(text: str) -> str:
    """A file-name-safe form of *text* (checkpoint stems, tags)."""
    cleaned = re.sub(r"[^A-Za-z0-9._+-]+", "_", text).strip("._")
    return cleaned or "model"


def store_name_for_alias(name: str) -> Optional[str]:
    """``ViT-B/32`` -> ``ViT-B-32-openai``; a bare architecture -> its OpenAI/first-tag name."""
    ref = resolve_alias(name)
    if ref is not None:
        return store_name(ref.architecture, ref.pretrained)
    return None


def split_store_name(name: str) -> tuple[Optional[str], Optional[str]]:
    """``ViT-B-32-openai`` -> (``ViT-B-32``, ``openai``): the longest known architecture prefix."""
    best = None
    for arch in architectures():
        if name == arch:
            return arch, None
        if name.startswith(arch + "-") and (best is None or len(arch) > len(best)):
            best = arch
    if best is None:
        return None, None
    tag = name[len(best) + 1 :]
    return best, (None if tag == RANDOM_TAG else tag)
