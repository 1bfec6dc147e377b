"""An image-embedding index on disk, for `clip-rt index` and `clip-rt search`.

The index is a folder:

- ``index.json``: format version, the model that made it (name, bundle fingerprint,
  precision, embedding size), the indexed root folder, the embeddings file name, and one
  entry per image (path relative to the root, size, mtime_ns, width, height), in row order;
- ``embeddings-<generation>.npy``: float32 ``(N, D)``, L2-normalised, row i = entry i;
- ``.clip-rt-index``: the marker that says clip-rt made this folder as an index. clip-rt writes
  and cleans files (temporaries, embeddings files index.json no longer names) only in a folder
  that has it, that it creates itself, or that was empty: ``index -o DIR`` (and ``--rebuild``)
  never touches a folder of other files. An index made before the marker existed is
  recognised by its files and gets the marker on its next update (:func:`claim_index_folder`).

Updates write a new embeddings file, then replace ``index.json`` atomically, then delete the
old embeddings file: a crash at any point leaves a consistent index. A file is re-embedded
when its size or mtime_ns changed (no content hashing: cheap on large folders).
"""

from __future__ import annotations

import json
import os
import stat
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional, Protocol

import numpy as np

from ..display import display_path
from ..errors import ClipRtError, InputError, OutputError
from ..inputs.discover import path_key, walk_images
from .records import dumps_json

if TYPE_CHECKING:
    from ..results import ImageEmbedding

INDEX_FORMAT = 1
INDEX_FILE = "index.json"
LOCK_FILE = ".lock"
MARKER_FILE = ".clip-rt-index"
ANN_DIR = "ann"  # outputs/ann.py builds its index there (Collection.ann_dir)
REBUILD_HINT = "rebuild it with `clip-rt index DIR -o INDEX --rebuild`"
MAX_EMBED_DIM = 65536
# index.json is read whole: about 150 bytes per image, so 2 GB is some 14 million images (a
# collection that size belongs in a `clip-rt ray` Parquet output).
MAX_INDEX_JSON_BYTES = 2 << 30
ENTRY_KEYS = frozenset({"path", "size", "mtime_ns", "width", "height"})


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
    failed: list[tuple[str, str]] = field(default_factory=list)  # (path, reason); a folder: not listable
    unlisted: int = 0  # entries kept as they were because their folder could not be listed


class Embeddings(Protocol):
    """What made a set of embeddings, as an index or a collection (``collection.Collection``,
    an index or a Ray output) records it: ``search`` checks its model against it."""

    @property
    def model(self) -> str: ...  # the bundle's name
    @property
    def fingerprint(self) -> str: ...
    @property
    def precision(self) -> str: ...
    @property
    def bundle_dir(self) -> Optional[str]: ...


class BundleIdentity(Protocol):
    @property
    def name(self) -> str: ...
    @property
    def fingerprint(self) -> str: ...


class IndexModel(Protocol):
    """The model an index is built and searched with: a ``ClipModel`` (or a test's stand-in).
    ``bundle_dir``, ``runtime`` and ``manifest.embed_dim`` are recorded where it has them."""

    @property
    def manifest(self) -> BundleIdentity: ...
    @property
    def precision(self) -> str: ...

    def iter_images(self, sources: Iterable[Any], /, batch_size: Optional[int] = None) -> Iterator[ImageEmbedding]: ...


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
    runtime: Optional[dict[str, Any]] = None  # which backend/precision/mode embedded the images (last update)

    # -- storage ---------------------------------------------------------------------
    @classmethod
    def load(cls, folder: str) -> SearchIndex:
        """Read the index in *folder*. A damaged index (a member that is not a file, values of
        the wrong type, an embeddings file whose header disagrees with the entries, NaN or
        infinite embeddings) is an :class:`InputError` that says how to rebuild it, never a
        traceback or a huge allocation."""
        meta = _read_meta(folder)
        fields = _check_meta(folder, meta)
        entries = fields["entries"]
        shape = (len(entries), fields["embed_dim"])
        try:
            emb = _load_embeddings(folder, meta, shape)
        except FileNotFoundError:
            # An update may have replaced index.json and deleted the embeddings file it named
            # between our two reads: the new index.json names the new file. Retry once.
            meta = _read_meta(folder)
            fields = _check_meta(folder, meta)
            entries = fields["entries"]
            shape = (len(entries), fields["embed_dim"])
            try:
                emb = _load_embeddings(folder, meta, shape)
            except FileNotFoundError:
                raise _damaged(folder, f"its embeddings file {meta['embeddings']!r} is missing") from None
        return cls(
            root=fields["root"],
            model=fields["model"],
            fingerprint=fields["fingerprint"],
            precision=fields["precision"],
            embed_dim=fields["embed_dim"],
            entries=entries,
            embeddings=emb,
            generation=fields["generation"],
            bundle_dir=fields["bundle_dir"],
            runtime=fields["runtime"],
        )

    def save(self, folder: str) -> None:
        """Write the next generation: embeddings file, then ``index.json`` (atomic replace), then
        delete the previous embeddings file and any orphan left by a crash. Concurrent writers
        must hold :func:`index_lock` (``update_index`` does); readers need no lock. A write
        that fails (full disk ...) is an :class:`OutputError`; the previous index stays intact.
        *folder* must be an index folder (:func:`claim_index_folder`)."""
        claim_index_folder(folder)
        old = os.path.join(folder, f"embeddings-{self.generation}.npy")
        generation = self.generation + 1
        emb_name = f"embeddings-{generation}.npy"
        # Temp names unique per process and thread: a half-written file never sits under a name
        # that a reader (or another writer that ignored the lock) uses.
        suffix = f".{os.getpid()}-{threading.get_ident()}.tmp"
        emb_tmp = os.path.join(folder, f".{emb_name}{suffix}")
        tmp = os.path.join(folder, f".{INDEX_FILE}{suffix}")
        meta = {
            "format": INDEX_FORMAT,
            "model": self.model,
            "fingerprint": self.fingerprint,
            "precision": self.precision,
            "embed_dim": self.embed_dim,
            "root": self.root,
            "bundle_dir": self.bundle_dir,
            "runtime": self.runtime,
            "generation": generation,
            "embeddings": emb_name,
            "count": len(self.entries),
            "entries": [asdict(e) for e in self.entries],
        }
        try:
            with open(emb_tmp, "wb") as f:  # a file object: np.save would append ".npy" to a name
                np.save(f, self.embeddings.astype(np.float32, copy=False))
                f.flush()
                os.fsync(f.fileno())
            os.replace(emb_tmp, os.path.join(folder, emb_name))
            with open(tmp, "w", encoding="utf-8") as f:
                f.write(dumps_json(meta) + "\n")
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, os.path.join(folder, INDEX_FILE))
        except OSError as exc:
            for path in (emb_tmp, tmp, os.path.join(folder, emb_name)):
                if os.path.exists(path) and path != old:
                    _remove(path)
            raise OutputError(
                f"cannot write index {display_path(folder)!r}: {exc.strerror or exc}; "
                "the index is as it was before this update"
            ) from None
        self.generation = generation
        if os.path.exists(old):
            _remove(old)
        remove_leftovers(folder, keep=emb_name)

    def abs_path(self, entry: Entry) -> str:
        return os.path.join(self.root, entry.path)

    # -- queries -----------------------------------------------------------------------
    def search(self, query: np.ndarray, top_k: int) -> list[tuple[float, str]]:
        """``(cosine, absolute path)`` of the *top_k* best rows, best first."""
        return [(score, self.abs_path(self.entries[row])) for score, row in self.search_rows(query, top_k)]

    def search_rows(self, query: np.ndarray, top_k: int) -> list[tuple[float, int]]:
        """``(cosine, row)`` of the *top_k* best rows, best first; row i is ``entries[i]``."""
        if not self.entries:
            return []
        q = np.asarray(query, dtype=np.float32).reshape(-1)
        if q.shape[0] != self.embed_dim:
            raise InputError(f"query embedding has {q.shape[0]} values; the index has {self.embed_dim}")
        q = q / (np.linalg.norm(q) or 1.0)
        scores = self.embeddings @ q
        k = min(top_k, len(scores))
        order = np.argsort(-scores, kind="stable")[:k]
        return [(float(scores[i]), int(i)) for i in order]


def check_model(index: Embeddings, model: IndexModel, folder: str) -> None:
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
            f"leave --precision out (it then follows the index) or rebuild with --rebuild"
        )


def recorded_precision(folder: str) -> Optional[str]:
    """The precision of the index in *folder* from its ``index.json`` alone (the embeddings are
    not read); None when there is no readable index (``SearchIndex.load`` reports why)."""
    try:
        meta = json.loads(_read_index_json(folder))
    except (OSError, ValueError, RecursionError, InputError):
        return None
    value = meta.get("precision") if isinstance(meta, dict) else None
    return value if isinstance(value, str) else None


def update_index(
    folder: str,
    root: str,
    model: IndexModel,
    *,
    batch_size: int = 32,
    rebuild: bool = False,
    on_progress: Optional[Callable[[int], None]] = None,
) -> tuple[SearchIndex, UpdateStats]:
    """Create or refresh the index in *folder* for the images under *root*: embeds only new or
    changed files, drops deleted ones. Unreadable images are left out and listed in the stats.
    Holds :func:`index_lock` throughout, so overlapping updates run one after the other.
    *folder* must be new, empty, or an index (:func:`claim_index_folder`): nothing in a folder
    of other files is ever replaced or deleted."""
    claim_index_folder(folder)
    with index_lock(folder):
        return _update_locked(folder, root, model, batch_size=batch_size, rebuild=rebuild, on_progress=on_progress)


def _update_locked(
    folder: str,
    root: str,
    model: IndexModel,
    *,
    batch_size: int,
    rebuild: bool,
    on_progress: Optional[Callable[[int], None]],
) -> tuple[SearchIndex, UpdateStats]:
    root_abs = os.path.abspath(root)
    old: Optional[SearchIndex] = None
    meta_path = os.path.join(folder, INDEX_FILE)
    if rebuild and os.path.isdir(meta_path) and not os.path.islink(meta_path):
        try:  # a damaged index whose index.json became a folder: an empty one can go
            os.rmdir(meta_path)
        except OSError:
            raise OutputError(
                f"cannot rebuild index {display_path(folder)!r}: its {INDEX_FILE} is a folder with "
                "files in it; move it away first"
            ) from None
    if not rebuild and os.path.exists(os.path.join(folder, INDEX_FILE)):
        old = SearchIndex.load(folder)
        check_model(old, model, folder)
        if os.path.abspath(old.root) != root_abs:
            raise InputError(
                f"index {display_path(folder)!r} is for folder {display_path(old.root)!r}, "
                f"not {display_path(root_abs)!r}; use another -o or --rebuild"
            )
    stats = UpdateStats()
    known = {e.path: (i, e) for i, e in enumerate(old.entries)} if old else {}
    current: list[tuple[str, os.stat_result]] = []
    listing_errors: list[tuple[str, str]] = []
    for p in walk_images(root_abs, listing_errors):
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
    # A folder that could not be listed says nothing about its files: keep their entries as
    # they were (a permission glitch must not wipe part of the index) and report the folder.
    stats.failed.extend(listing_errors)
    unlisted_dirs = [path_key(d) for d, _ in listing_errors]
    preserved = [rel for rel in known if rel not in seen and _under_any(os.path.join(root_abs, rel), unlisted_dirs)]
    for rel in preserved:
        i, entry = known[rel]
        keep[rel] = (entry, old.embeddings[i])  # type: ignore[union-attr]
    stats.unlisted = len(preserved)
    stats.removed = sum(1 for rel in known if rel not in seen) - len(preserved)

    by_rel = dict(todo)
    for item in model.iter_images([os.path.join(root_abs, rel) for rel, _ in todo], batch_size=batch_size):
        rel = os.path.relpath(os.fspath(item.source), root_abs)
        if item.embedding is None or item.error is not None:
            stats.failed.append((os.fspath(item.source), item.error or "no embedding"))
            stats.changed -= 1 if rel in known else 0
        else:
            st = by_rel[rel]
            keep[rel] = (
                Entry(rel, st.st_size, st.st_mtime_ns, item.width, item.height),
                np.asarray(item.embedding, dtype=np.float32),
            )
            stats.added += 0 if rel in known else 1
        if on_progress:
            on_progress(1)

    order = [rel for rel, _ in current] + preserved
    if preserved:  # sorted like the folder walk (inputs.walk_images)
        order.sort(key=lambda rel: os.fsencode(os.path.join(root_abs, rel)))
    rows = [keep[rel] for rel in order if rel in keep]
    dim = (
        int(model.manifest.embed_dim)
        if hasattr(model.manifest, "embed_dim")
        else (rows[0][1].shape[0] if rows else (old.embed_dim if old else 0))
    )
    emb = np.stack([r[1] for r in rows]).astype(np.float32) if rows else np.zeros((0, dim), np.float32)
    index = SearchIndex(
        root=root_abs,
        model=model.manifest.name,
        fingerprint=model.manifest.fingerprint,
        precision=model.precision,
        embed_dim=dim,
        entries=[r[0] for r in rows],
        embeddings=emb,
        generation=old.generation if old else _existing_generation(folder),
        bundle_dir=_bundle_dir(model),
        runtime=_runtime(model),
    )
    index.save(folder)
    return index, stats


def claim_index_folder(folder: str) -> None:
    """Make sure *folder* is a clip-rt index folder before anything is written or cleaned in
    it: created (with its marker) when missing, marked when empty, accepted when it has the
    marker. A folder without the marker that holds files is accepted only when it is a
    complete index made before the marker existed -- a readable format-1 ``index.json`` whose
    embeddings file has the shape its entries say, and nothing beside them but files clip-rt
    writes (``embeddings-*.npy``, ``.lock``, its temporaries, ``ann/``) -- and is then marked.
    Anything else is an :class:`OutputError` that names what is there; nothing is touched."""
    marker = os.path.join(folder, MARKER_FILE)
    try:
        os.makedirs(folder, exist_ok=True)
    except FileExistsError:
        raise OutputError(f"cannot write index {display_path(folder)!r}: it is a file; expected a folder") from None
    except OSError as exc:
        raise OutputError(f"cannot create index {display_path(folder)!r}: {exc.strerror or exc}") from None
    try:
        st = os.lstat(marker)
    except FileNotFoundError:
        st = None
    except OSError as exc:
        raise OutputError(f"cannot write index {display_path(folder)!r}: {exc.strerror or exc}") from None
    if st is not None:
        if not stat.S_ISREG(st.st_mode):
            raise OutputError(
                f"cannot write index {display_path(folder)!r}: its {MARKER_FILE} is not a file; "
                "expected the marker clip-rt writes in an index folder"
            )
        return
    try:
        names = os.listdir(folder)
    except OSError as exc:
        raise OutputError(f"cannot write index {display_path(folder)!r}: {exc.strerror or exc}") from None
    if names and not _is_unmarked_index(folder, names):
        foreign = sorted(n for n in names if not _index_member(n)) or sorted(names)
        shown = ", ".join(repr(n) for n in foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
        raise OutputError(
            f"{display_path(folder)!r} is not a clip-rt index: it holds {shown}, and no "
            f"{MARKER_FILE} marker. `clip-rt index -o` writes and deletes files in its folder, so it "
            "only uses a new or empty folder or an index it made; choose another -o (an index "
            "made by an older clip-rt that is damaged: delete it and index again)"
        )
    try:
        fd = os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666)
    except FileExistsError:
        return  # another run marked it meanwhile
    except OSError as exc:
        raise OutputError(f"cannot write index {display_path(folder)!r}: {exc.strerror or exc}") from None
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(dumps_json({"clip-rt": "index", "format": INDEX_FORMAT}) + "\n")


def _index_member(name: str) -> bool:
    """Whether *name* is one clip-rt writes in an index folder."""
    return (
        name in (INDEX_FILE, LOCK_FILE, MARKER_FILE, ANN_DIR)
        or (name.startswith("embeddings-") and name.endswith(".npy"))
        or (name.startswith((f".{INDEX_FILE}.", ".embeddings-")) and name.endswith(".tmp"))
    )


def _is_unmarked_index(folder: str, names: list[str]) -> bool:
    """A complete index from before the marker: only clip-rt's names, ``ann`` a folder, and an
    index.json that passes every check with an embeddings file of the shape it says (the
    embeddings are memory-mapped for the check, not read)."""
    if INDEX_FILE not in names or not all(_index_member(n) for n in names):
        return False
    ann = os.path.join(folder, ANN_DIR)
    if ANN_DIR in names and (os.path.islink(ann) or not os.path.isdir(ann)):
        return False
    try:
        meta = _read_meta(folder)
        fields = _check_meta(folder, meta)
        name = meta.get("embeddings")
        if not isinstance(name, str) or os.path.basename(name) != name or name not in names:
            return False
        mapped = np.load(os.path.join(folder, name), mmap_mode="r", allow_pickle=False)
    except (ClipRtError, OSError, ValueError, EOFError, OverflowError):
        return False
    return isinstance(mapped, np.ndarray) and mapped.shape == (len(fields["entries"]), fields["embed_dim"])


@contextmanager
def index_lock(folder: str) -> Iterator[None]:
    """An exclusive lock on the index in *folder* (``flock`` on ``folder/.lock``), for a whole
    read-modify-write. Blocks until any other holder (process or thread) is done. On a platform
    without ``fcntl`` it locks nothing."""
    try:
        import fcntl
    except ImportError:  # Windows: no flock; updates are not serialised there
        yield
        return
    try:
        f = open(os.path.join(folder, LOCK_FILE), "a+b")
    except OSError as exc:
        raise OutputError(f"cannot write index {display_path(folder)!r}: {exc.strerror or exc}") from None
    with f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)  # released when the file is closed
        yield


def default_model(index: Embeddings) -> str:
    """The bundle to search with when --model is not given: the directory that built the index
    if it is still there, else its store name."""
    from ..bundle.store import is_bundle

    if index.bundle_dir and is_bundle(Path(index.bundle_dir)):
        return index.bundle_dir
    return index.model


def _damaged(folder: str, what: str) -> InputError:
    return InputError(f"index {display_path(folder)!r} is damaged: {what}; {REBUILD_HINT}")


def _read_index_json(folder: str) -> bytes:
    """index.json's bytes: a regular file (a FIFO there would block, a device never end), at
    most MAX_INDEX_JSON_BYTES."""
    from ..inputs.bounded import read_limited

    meta_path = os.path.join(folder, INDEX_FILE)
    if os.path.isdir(meta_path):
        raise IsADirectoryError(meta_path)
    return read_limited(
        meta_path,
        what=INDEX_FILE,
        limit=MAX_INDEX_JSON_BYTES,
        hint="an index that large belongs in a `clip-rt ray` Parquet output",
        error=lambda message: _damaged(folder, message),
    )


def _read_meta(folder: str) -> dict[str, Any]:
    meta_path = os.path.join(folder, INDEX_FILE)
    try:
        meta = json.loads(_read_index_json(folder).decode("utf-8"))
    except FileNotFoundError:
        raise InputError(
            f"{display_path(folder)!r} is not a clip-rt index: no {INDEX_FILE} in it "
            "(make one with `clip-rt index DIR -o INDEX`)"
        ) from None
    except IsADirectoryError:
        raise _damaged(folder, f"{INDEX_FILE} is a folder, not a file") from None
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise _damaged(folder, f"{INDEX_FILE} is not valid JSON ({exc})") from None
    except OSError as exc:  # permissions, I/O error: not damage, but no traceback either
        raise InputError(f"cannot read {display_path(meta_path)!r}: {exc.strerror or exc}") from None
    if not isinstance(meta, dict):
        raise _damaged(folder, f"{INDEX_FILE} holds a {type(meta).__name__}, expected a JSON object")
    if meta.get("format") != INDEX_FORMAT:
        raise InputError(
            f"{display_path(meta_path)!r}: index format {meta.get('format')!r}, "
            f"this clip-rt reads {INDEX_FORMAT}; {REBUILD_HINT}"
        )
    return meta


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_meta(folder: str, meta: dict[str, Any]) -> dict[str, Any]:
    """The fields of index.json with their types checked (JSON can hold anything)."""

    def need(key: str, ok: Callable[[Any], bool], expected: str) -> Any:
        if key not in meta:
            raise _damaged(folder, f"{INDEX_FILE} has no {key!r} field")
        if not ok(meta[key]):
            raise _damaged(folder, f"{INDEX_FILE}: {key!r} is {_short(meta[key])}, expected {expected}")
        return meta[key]

    fields = {
        "root": need("root", lambda v: isinstance(v, str) and bool(v), "a folder path"),
        "model": need("model", lambda v: isinstance(v, str), "a bundle name"),
        "fingerprint": need("fingerprint", lambda v: isinstance(v, str), "a fingerprint string"),
        "precision": need("precision", lambda v: isinstance(v, str), "a precision name"),
        "embed_dim": need(
            "embed_dim", lambda v: _is_int(v) and 0 < v <= MAX_EMBED_DIM, f"an embedding size from 1 to {MAX_EMBED_DIM}"
        ),
        "generation": meta.get("generation", 0),
        "bundle_dir": meta.get("bundle_dir"),
        "runtime": meta.get("runtime"),  # what ran (informational; any JSON object)
    }
    if not _is_int(fields["generation"]) or fields["generation"] < 0:
        raise _damaged(folder, f"{INDEX_FILE}: 'generation' is {_short(fields['generation'])}, expected a count")
    if fields["runtime"] is not None and not isinstance(fields["runtime"], dict):
        fields["runtime"] = None  # informational only: a damaged description is not a damaged index
    if fields["bundle_dir"] is not None and not isinstance(fields["bundle_dir"], str):
        raise _damaged(folder, f"{INDEX_FILE}: 'bundle_dir' is {_short(fields['bundle_dir'])}, expected a path")
    raw = need("entries", lambda v: isinstance(v, list), "a list of entries")
    entries = []
    for i, e in enumerate(raw):
        if not (
            isinstance(e, dict)
            and set(e) == ENTRY_KEYS
            and isinstance(e["path"], str)
            and e["path"]
            and _is_int(e["size"])
            and _is_int(e["mtime_ns"])
            and all(e[k] is None or (_is_int(e[k]) and e[k] > 0) for k in ("width", "height"))
        ):
            raise _damaged(
                folder,
                f"{INDEX_FILE}: entry {i} is {_short(e)}, expected "
                "{path: str, size: int, mtime_ns: int, width: int, height: int}",
            )
        entries.append(Entry(**e))
    fields["entries"] = entries
    return fields


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _load_embeddings(folder: str, meta: dict[str, Any], shape: tuple[int, int]) -> np.ndarray:
    """The embeddings file *meta* names, checked against *shape* before anything is read into
    memory (memory-mapped first: a header that claims a huge shape costs nothing).
    FileNotFoundError passes through (load retries it)."""
    name = meta.get("embeddings")
    if not isinstance(name, str) or os.path.basename(name) != name or not name:
        raise _damaged(folder, f"{INDEX_FILE} names no valid embeddings file (got {_short(name)})")
    try:
        mapped = np.load(os.path.join(folder, name), mmap_mode="r", allow_pickle=False)
    except IsADirectoryError:
        raise _damaged(folder, f"{name} is a folder, not a file") from None
    except FileNotFoundError:
        raise
    except (ValueError, EOFError, OverflowError) as exc:  # not an .npy, truncated, shorter than its header says
        raise _damaged(folder, f"{name} is not a readable .npy file ({exc})") from None
    except OSError as exc:
        raise InputError(f"cannot read {display_path(os.path.join(folder, name))!r}: {exc.strerror or exc}") from None
    if not isinstance(mapped, np.ndarray) or mapped.dtype.kind != "f" or mapped.shape != shape:
        what = f"{getattr(mapped, 'dtype', type(mapped).__name__)} {getattr(mapped, 'shape', '')}"
        raise _damaged(
            folder,
            f"{name} holds {what}; the index needs float embeddings of shape {shape} "
            f"({shape[0]} entries of size {shape[1]})",
        )
    emb = np.array(mapped, dtype=np.float32)  # a copy in memory; the mapping is dropped
    del mapped
    if not np.isfinite(emb).all():
        bad = int((~np.isfinite(emb)).any(axis=1).sum())
        raise _damaged(folder, f"{name} has NaN or infinite values in {bad} row(s)")
    return emb


def remove_leftovers(folder: str, keep: str) -> int:
    """Delete what crashed updates left in *folder*: temporary files, and embeddings files
    that index.json does not name (*keep*). Only while holding :func:`index_lock`: no other
    writer then owns a temporary file; a reader that still wants an older embeddings file
    re-reads index.json (see :meth:`SearchIndex.load`). Returns how many files went."""
    removed = 0
    for name in os.listdir(folder):
        stale_tmp = name.startswith((f".{INDEX_FILE}.", ".embeddings-")) and name.endswith(".tmp")
        orphan = name.startswith("embeddings-") and name.endswith(".npy") and name != keep
        if stale_tmp or orphan:
            removed += _remove(os.path.join(folder, name))
    return removed


def _remove(path: str) -> int:
    try:
        os.remove(path)
        return 1
    except IsADirectoryError:  # not something we wrote: leave it
        return 0
    except OSError:
        return 0


def _under_any(path: str, folders: list[str]) -> bool:
    """Whether *path* lies in one of *folders* (``path_key`` form)."""
    key = path_key(path)
    return any(key.startswith(d.rstrip(os.sep) + os.sep) for d in folders)


def _runtime(model: IndexModel) -> Optional[dict[str, Any]]:
    runtime = getattr(model, "runtime", None)
    if not isinstance(runtime, dict):
        return None
    from ..engine.runtime_info import summary

    return summary(runtime)


def _bundle_dir(model: IndexModel) -> Optional[str]:
    path = getattr(model, "bundle_dir", None)
    return os.path.abspath(path) if path is not None else None


def _existing_generation(folder: str) -> int:
    """On --rebuild, carry on numbering so the old embeddings file gets replaced, not reused."""
    gens = [int(p.stem.split("-")[1]) for p in Path(folder).glob("embeddings-*.npy") if p.stem.split("-")[1].isdigit()]
    return max(gens, default=0)
