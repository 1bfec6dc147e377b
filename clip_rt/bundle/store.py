"""Where bundles and caches live on disk: ``$CLIP_RT_HOME`` (default ``~/.cache/clip-rt``)."""
from __future__ import annotations

import os
from pathlib import Path

from ..errors import ModelNotFoundError

MANIFEST_NAME = "manifest.json"


def home() -> Path:
    """The clip-rt home: ``$CLIP_RT_HOME``, else ``$XDG_CACHE_HOME/clip-rt``, else ``~/.cache/clip-rt``."""
    env = os.environ.get("CLIP_RT_HOME")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "clip-rt"


def models_dir() -> Path:
    return home() / "models"


def cache_dir() -> Path:
    return home() / "cache"


def is_bundle(path: Path) -> bool:
    return (path / MANIFEST_NAME).is_file()


def list_bundles() -> list[Path]:
    """Bundles in the store, sorted by name (temporary export folders are skipped)."""
    root = models_dir()
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if not p.name.startswith(".") and is_bundle(p))


def resolve_bundle(name_or_path: str | os.PathLike[str]) -> Path:
    """A bundle directory from a path, a store name, or a catalogue alias (``ViT-B/32``)."""
    from .catalogue import store_name_for_alias

    raw = os.fspath(name_or_path)
    path = Path(raw).expanduser()
    if path.is_dir():
        if not is_bundle(path):
            raise ModelNotFoundError(
                f"{raw!r} is a directory but not a clip-rt bundle: expected {MANIFEST_NAME} inside it"
            )
        return path
    candidates = [raw]
    alias = store_name_for_alias(raw)
    if alias and alias != raw:
        candidates.append(alias)
    for name in candidates:
        if "/" in name or "\\" in name:
            continue
        p = models_dir() / name
        if is_bundle(p):
            return p
    known = ", ".join(b.name for b in list_bundles()) or "none"
    hint_name = alias or raw
    raise ModelNotFoundError(
        f"no bundle named {raw!r} in {models_dir()} (bundles there: {known}) and no such directory. "
        f"Export it first, e.g. `clip-rt export {hint_name_arch(hint_name)}` "
        f"(needs `pip install 'clip-rt[export]'`), or pass a bundle directory."
    )


def hint_name_arch(store_name: str) -> str:
    """Best-effort export command argument for a store name like ``ViT-B-32-openai``."""
    from .catalogue import split_store_name

    arch, tag = split_store_name(store_name)
    if arch is None:
        return store_name
    if arch == store_name:
        return arch
    return f"{arch} --pretrained {tag or 'none'}"
