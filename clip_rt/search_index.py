"""An image-embedding index on disk, for `clip-rt index` and `clip-rt search`.

The index is a folder:

- ``index.json``: format version, the model that made it (name, bundle fingerprint,
  precision, embedding size), the indexed root folder, the embeddings file name, and one
  entry per image (path relative to the root, size, mtime_ns, width, height), in row order;
- ``embeddings-<generation>.npy``: float32 ``(N, D)``, L2-normalised, row i = entry i.

Updates write a new embeddings file, then replace ``index.json`` atomically, then delete the
old embeddings file: a crash at any point leaves a consistent index. A file is re-embedded
when its size or mtime_ns changed (no content hashing: cheap on large folders).
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from .errors import InputError
from .inputs import display_path, walk_images
from .records import dumps_json

INDEX_FORMAT = 1
INDEX_FILE = "index.json"


@dataclass
class Entry:
    path: str  # relative to the index root
    size: int
    mtime_ns: int
    width: Optional[int]
    height: Optional[int]


@dataclass
class UpdateStats:
    added: int = 0
    changed: int = 0
    removed: int = 0
    unchanged: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)


@dataclass
class SearchIndex:
    root: str
    model: str
    fingerprint: str
    precision: str
    embed_dim: int
    entries: list[Entry]
    embeddings: np.ndarray
    generation: int = 0
    bundle_dir: Optional[str] = None  # where the model was loaded from, if known (search's default)

    # -- storage ---------------------------------------------------------------------
    @classmethod
    def load(cls, folder: str) -> "SearchIndex":
        meta_path = os.path.join(folder, INDEX_FILE)
        try:
            with open(meta_path, encoding="utf-8") as f:
                meta = json.load(f)
        except FileNotFoundError:
            raise InputError(f"{display_path(folder)!r} is not a clip-rt index: no {INDEX_FILE} in it "
                             "(make one with `clip-rt index DIR -o INDEX`)") from None
        except json.JSONDecodeError as exc:
            raise InputError(f"{display_path(meta_path)!r} is not valid JSON ({exc})") from exc
        if meta.get("format") != INDEX_FORMAT:
            raise InputError(f"{display_path(meta_path)!r}: index format {meta.get('format')!r}, "
                             f"this clip-rt reads {INDEX_FORMAT}; rebuild it with `clip-rt index --rebuild`")
        emb = np.load(os.path.join(folder, meta["embeddings"]), allow_pickle=False)
        entries = [Entry(**e) for e in meta["entries"]]
        if emb.shape != (len(entries), meta["embed_dim"]):
            raise InputError(f"{display_path(folder)!r}: embeddings {emb.shape} do not match "
                             f"{len(entries)} entries of size {meta['embed_dim']}; rebuild with --rebuild")
        return cls(root=meta["root"], model=meta["model"], fingerprint=meta["fingerprint"],
                   precision=meta["precision"], embed_dim=int(meta["embed_dim"]), entries=entries,
                   embeddings=emb.astype(np.float32, copy=False), generation=int(meta.get("generation", 0)),
                   bundle_dir=meta.get("bundle_dir"))

    def save(self, folder: str) -> None:
        os.makedirs(folder, exist_ok=True)
        old = os.path.join(folder, f"embeddings-{self.generation}.npy")
        self.generation += 1
        emb_name = f"embeddings-{self.generation}.npy"
        np.save(os.path.join(folder, emb_name), self.embeddings.astype(np.float32, copy=False))
        meta = {
            "format": INDEX_FORMAT, "model": self.model, "fingerprint": self.fingerprint,
            "precision": self.precision, "embed_dim": self.embed_dim, "root": self.root,
            "bundle_dir": self.bundle_dir, "generation": self.generation, "embeddings": emb_name,
            "count": len(self.entries),
            "entries": [asdict(e) for e in self.entries],
        }
        tmp = os.path.join(folder, INDEX_FILE + ".tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(dumps_json(meta) + "\n")
        os.replace(tmp, os.path.join(folder, INDEX_FILE))
        if os.path.exists(old):
            os.remove(old)

    def abs_path(self, entry: Entry) -> str:
        return os.path.join(self.root, entry.path)

    # -- queries -----------------------------------------------------------------------
    def search(self, query: np.ndarray, top_k: int) -> list[tuple[float, str]]:
        """``(cosine, absolute path)`` of the *top_k* best rows, best first."""
        if not self.entries:
            return []
        q = np.asarray(query, dtype=np.float32).reshape(-1)
        if q.shape[0] != self.embed_dim:
            raise InputError(f"query embedding has {q.shape[0]} values; the index has {self.embed_dim}")
        q = q / (np.linalg.norm(q) or 1.0)
        scores = self.embeddings @ q
        k = min(top_k, len(scores))
        order = np.argsort(-scores, kind="stable")[:k]
        return [(float(scores[i]), self.abs_path(self.entries[i])) for i in order]


def check_model(index: SearchIndex, model: Any, folder: str) -> None:
    """Refuse to mix embeddings from different weights (or precisions) in one index."""
    fp, prec = model.manifest.fingerprint, model.precision
    if index.fingerprint != fp:
        raise InputError(
            f"index {display_path(folder)!r} was built with bundle {index.model!r} "
            f"(fingerprint {index.fingerprint[:12]}...); this model {model.manifest.name!r} has fingerprint "
            f"{fp[:12]}...: use --model {index.bundle_dir or index.model} "
            "or rebuild the index with `clip-rt index DIR -o INDEX --rebuild`"
        )
    if index.precision != prec:
        raise InputError(
            f"index {display_path(folder)!r} holds {index.precision} embeddings, the model runs {prec}: "
            f"pass --precision {index.precision} or rebuild with --rebuild"
        )


def update_index(folder: str, root: str, model: Any, *, batch_size: int = 32, rebuild: bool = False,
                 on_progress: Optional[Callable[[int], None]] = None) -> tuple[SearchIndex, UpdateStats]:
    """Create or refresh the index in *folder* for the images under *root*: embeds only new or
    changed files, drops deleted ones. Unreadable images are left out and listed in the stats."""
    root_abs = os.path.abspath(root)
    old: Optional[SearchIndex] = None
    if not rebuild and os.path.exists(os.path.join(folder, INDEX_FILE)):
        old = SearchIndex.load(folder)
        check_model(old, model, folder)
        if os.path.abspath(old.root) != root_abs:
            raise InputError(f"index {display_path(folder)!r} is for folder {display_path(old.root)!r}, "
                             f"not {display_path(root_abs)!r}; use another -o or --rebuild")
    stats = UpdateStats()
    known = {e.path: (i, e) for i, e in enumerate(old.entries)} if old else {}
    current: list[tuple[str, os.stat_result]] = []
    for p in walk_images(root_abs):
        try:
            current.append((os.path.relpath(p, root_abs), os.stat(p)))
        except OSError as exc:  # vanished or unreadable between walk and stat
            stats.failed.append((p, str(exc)))
    keep: dict[str, tuple[Entry, np.ndarray]] = {}
    todo: list[tuple[str, os.stat_result]] = []
    for rel, st in current:
        hit = known.get(rel)
        if hit and hit[1].size == st.st_size and hit[1].mtime_ns == st.st_mtime_ns:
            keep[rel] = (hit[1], old.embeddings[hit[0]])  # type: ignore[union-attr]
            stats.unchanged += 1
        else:
            todo.append((rel, st))
            if hit:
                stats.changed += 1
    seen = {rel for rel, _ in current}
    stats.removed = sum(1 for rel in known if rel not in seen)

    by_rel = dict(todo)
    for item in model.iter_images([os.path.join(root_abs, rel) for rel, _ in todo], batch_size=batch_size):
        rel = os.path.relpath(os.fspath(item.source), root_abs)
        if item.embedding is None or item.error is not None:
            stats.failed.append((os.fspath(item.source), item.error or "no embedding"))
            stats.changed -= 1 if rel in known else 0
        else:
            st = by_rel[rel]
            keep[rel] = (Entry(rel, st.st_size, st.st_mtime_ns, item.width, item.height),
                         np.asarray(item.embedding, dtype=np.float32))
            stats.added += 0 if rel in known else 1
        if on_progress:
            on_progress(1)

    rows = [keep[rel] for rel, _ in current if rel in keep]  # sorted like the folder walk
    dim = int(model.manifest.embed_dim) if hasattr(model.manifest, "embed_dim") else (
        rows[0][1].shape[0] if rows else (old.embed_dim if old else 0))
    emb = np.stack([r[1] for r in rows]).astype(np.float32) if rows else np.zeros((0, dim), np.float32)
    index = SearchIndex(root=root_abs, model=model.manifest.name, fingerprint=model.manifest.fingerprint,
                        precision=model.precision, embed_dim=dim, entries=[r[0] for r in rows], embeddings=emb,
                        generation=old.generation if old else _existing_generation(folder),
                        bundle_dir=_bundle_dir(model))
    index.save(folder)
    return index, stats


def default_model(index: SearchIndex) -> str:
    """The bundle to search with when --model is not given: the directory that built the index
    if it is still there, else its store name."""
    from .store import is_bundle

    if index.bundle_dir and is_bundle(Path(index.bundle_dir)):
        return index.bundle_dir
    return index.model


def _bundle_dir(model: Any) -> Optional[str]:
    path = getattr(model, "bundle_dir", None)
    return os.path.abspath(path) if path is not None else None


def _existing_generation(folder: str) -> int:
    """On --rebuild, carry on numbering so the old embeddings file gets replaced, not reused."""
    gens = [int(p.stem.split("-")[1]) for p in Path(folder).glob("embeddings-*.npy") if p.stem.split("-")[1].isdigit()]
    return max(gens, default=0)
