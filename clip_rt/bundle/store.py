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


def _manifest_problem(path: Path) -> str:
    """Why *path* has no usable manifest: there is none, or it is something else than a file."""
    try:
        st = os.stat(path / MANIFEST_NAME)
    except OSError:
        return f"expected {MANIFEST_NAME} inside it"
    from ..inputs.bounded import file_kind

    return f"its {MANIFEST_NAME} is a {file_kind(st.st_mode)}; expected a regular file (a JSON file)"


def list_bundles() -> list[Path]:
    """Bundles in the store, sorted by name (temporary export folders are skipped)."""
    root = models_dir()
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if not p.name.startswith(".") and is_bundle(p))


def resolve_bundle(name_or_path: str | os.PathLike[str]) -> Path:
    """A bundle directory from a path, a store name, or a catalogue alias (``ViT-B/32``).

    Store names and aliases also match case-insensitively (``vit-b-32-random``) when exactly one
    bundle does; otherwise the error suggests the closest names (store and catalogue)."""
    from .catalogue import canonical_name, store_name_for_alias

    raw = os.fspath(name_or_path)
    path = Path(raw).expanduser()
    if path.is_dir():
        if not is_bundle(path):
            raise ModelNotFoundError(f"{raw!r} is a directory but not a clip-rt bundle: {_manifest_problem(path)}")
        return path
    alias = store_name_for_alias(raw) or store_name_for_alias(canonical_name(raw) or "")
    for name in (raw, alias):
        if name and "/" not in name and "\\" not in name and is_bundle(models_dir() / name):
            return models_dir() / name
    folded = {n.casefold() for n in (raw, alias) if n}
    matches = [b for b in list_bundles() if b.name.casefold() in folded]
    if len(matches) == 1:
        return matches[0]
    raise ModelNotFoundError(_not_found(raw, alias))


def _not_found(raw: str, alias: str | None) -> str:
    """What to do about a name that is no bundle: export it, a closer name, or where to look."""
    from .catalogue import catalogue_store_names, close_matches, load_catalogue, split_store_name, unsupported

    bundles = [b.name for b in list_bundles()]
    where = f"no bundle named {raw!r} in {models_dir()} (bundles there: {', '.join(bundles) or 'none'})"
    if ("/" in raw or "\\" in raw or raw.startswith(("~", "."))) and alias is None:
        return f"{where}, and no directory {raw!r}: expected a bundle directory, a store name or an alias"
    where += " and no such directory"
    arch = raw if raw in unsupported() else split_store_name(raw)[0]
    if arch in unsupported():
        return f"{where}. {arch} cannot be exported yet: {unsupported()[arch]}."
    command = export_command(alias or raw)
    if command:
        return (
            f"{where}. Export it first, e.g. `clip-rt export {command}` "
            f"(needs `pip install 'clip-rt[export]'`), or pass a bundle directory."
        )
    in_store = close_matches(raw, bundles)
    known = [
        n
        for n in close_matches(raw, bundles + list(load_catalogue()["aliases"]) + catalogue_store_names())
        if n not in in_store
    ]
    if in_store or known:
        hints = [f"{n} (in the store)" for n in in_store] + [
            f"{n} (not exported yet: `clip-rt export {export_command(n) or n}`)" for n in known
        ]
        return f"{where}. Did you mean: {'; '.join(hints[:3])}?"
    return (
        f"{where}. `clip-rt models` lists the bundles in the store, `clip-rt models --available` the models "
        f"`clip-rt export` can make; or pass a bundle directory."
    )


def export_command(name: str) -> str | None:
    """The `clip-rt export` arguments that make the bundle *name* (a store name such as
    ``ViT-B-32-openai`` or ``ViT-B-32-random``, an exportable architecture, an alias), or None
    when *name* is none of those: a typo must not become an export command."""
    from .catalogue import exportable_architectures, resolve_alias, split_store_name

    ref = resolve_alias(name)
    if ref is not None:
        return name
    exportable = exportable_architectures()
    if name in exportable:
        return name
    arch, tag = split_store_name(name)
    if arch is None or arch not in exportable:
        return None
    if tag is None:  # <arch>-random
        return f"{arch} --pretrained none"
    return f"{arch} --pretrained {tag}" if tag in exportable[arch] else None
