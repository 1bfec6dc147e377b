"""Approximate nearest-neighbour search for large collections (faiss; ``pip install 'clip-rt[ann]'``).

Why faiss, and an inverted-file index over the full float32 vectors (IVF-Flat) rather than an
HNSW graph: on the synthetic 1M x 512 set of bench/scale_ann.py, HNSW (faiss, hnswlib; usearch
quantised) reached recall@10 0.91 at most for text-like queries, which sit far from the
image embeddings (CLIP's modality gap), while IVF-Flat with 64 probes reached 0.97 text /
0.9995 image at about 10-14 ms a query; its file is memory-mapped, so opening it costs
nothing (bench/results/scale.json, docs/scale.md).

On disk, beside the embeddings (``INDEX/ann/`` for an index, ``OUT/_ann/`` for a Ray output):

- ``ann.json``: ``format`` (:data:`ANN_FORMAT`), ``backend`` (``faiss``) and its version,
  ``factory`` (the faiss index description, e.g. ``IVF2048,Flat``), ``metric``
  (``inner_product``), ``params`` (``nlist``, ``nprobe``, ``train_rows``), ``count``, ``dim``,
  ``signature`` (the collection's: it changes whenever the embeddings do), ``file`` and
  ``bytes`` of the index file;
- ``vectors-<signature>.faiss``: the faiss index; its ids are the collection's row numbers.

The index file is written first, then ``ann.json`` is replaced atomically, then older index
files are deleted: a crash leaves the previous, consistent state. Opening checks the format,
the signature (stale: rebuilt), the file's size, that faiss reads it, its count and
dimension, that its lists add up to the count, and that stored vectors are unit-length and
find themselves; a damaged index is rebuilt with a warning (it is derived data).
"""

from __future__ import annotations

import json
import math
import os
import threading
import time
import uuid
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Optional

import numpy as np

from ..display import display_path
from ..errors import ClipRtError, InputError

if TYPE_CHECKING:
    from .collection import Collection

ANN_FORMAT = 1
ANN_FILE = "ann.json"
# Below this many embeddings exact search is used by default (bench/results/scale.json,
# "crossover"): up to 30k an exact one-off query costs ~30 ms and is exact; from 100k the ANN
# index is 2.5x faster (docs/scale.md).
EXACT_BELOW = 50_000
MODES = ("auto", "exact", "ann")


@dataclass(frozen=True)
class AnnSpec:
    """An IVF-Flat index: k-means lists of about *rows_per_list* vectors (a power of two), a
    query scans the *nprobe* nearest lists with exact inner products (scores of the hits are
    exact). Trained on a random sample of at most *max_train* rows (at least 40 per list)."""

    nprobe: int = 64
    rows_per_list: int = 500
    max_train: int = 100_000

    def nlist(self, count: int) -> int:
        return int(min(65536, 2 ** max(0, round(math.log2(max(1.0, count / self.rows_per_list))))))

    def train_rows(self, count: int) -> int:
        return min(count, max(self.max_train, 40 * self.nlist(count)))

    def factory(self, count: int) -> str:
        return f"IVF{self.nlist(count)},Flat"


DEFAULT_SPEC = AnnSpec()


class AnnUnavailable(ClipRtError):
    """faiss is not installed."""


def _faiss() -> Any:
    try:
        import faiss
    except ImportError as exc:
        raise AnnUnavailable(
            f"approximate search needs faiss, which is not installed ({exc}): pip install 'clip-rt[ann]'"
        ) from None
    return faiss


def have_faiss() -> bool:
    try:
        _faiss()
    except AnnUnavailable:
        return False
    return True


# -- the searches ------------------------------------------------------------------------------
def exact_search(vectors: np.ndarray, query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(scores, rows) of the *k* best rows by inner product, best first (ties: lower row first)."""
    scores = vectors @ query
    k = min(k, len(scores))
    if k <= 0:
        return np.zeros(0, np.float32), np.zeros(0, np.int64)
    top = np.argpartition(-scores, k - 1)[:k] if k < len(scores) else np.arange(len(scores))
    order = top[np.lexsort((top, -scores[top]))]
    return scores[order], order


def search(
    collection: Collection,
    query: np.ndarray,
    k: int,
    *,
    mode: str = "auto",
    rebuild: bool = False,
    spec: AnnSpec = DEFAULT_SPEC,
    on_message: Callable[[str], None] = lambda m: None,
) -> tuple[list[tuple[float, str]], str]:
    """The *k* nearest rows of *collection* to *query*: ``([(cosine, path)], how)`` where *how*
    is ``"exact"`` or ``"ann"``. *mode*: ``auto`` (ANN from :data:`EXACT_BELOW` rows on, when
    faiss is installed; otherwise exact, with a message), ``exact``, ``ann``."""
    if mode not in MODES:
        raise InputError(f"search mode must be one of {', '.join(MODES)}, got {mode!r}")
    q = np.asarray(query, dtype=np.float32).reshape(-1)
    if q.shape[0] != collection.embed_dim:
        raise InputError(f"query embedding has {q.shape[0]} values; the collection has {collection.embed_dim}")
    q = q / (np.linalg.norm(q) or 1.0)
    use_ann = mode == "ann" or (mode == "auto" and collection.count >= EXACT_BELOW)
    if use_ann and mode == "auto" and not have_faiss():
        on_message(f"{collection.count} embeddings: exact search (install clip-rt[ann] for approximate search)")
        use_ann = False
    if collection.count == 0:
        return [], "exact"
    if use_ann:
        index = ensure_ann(collection, spec, rebuild=rebuild, on_message=on_message)
        scores, rows = index.search(q, k)
        how = "ann"
    else:
        scores, rows = exact_search(collection.vectors(), q, k)
        how = "exact"
    paths = collection.paths([int(r) for r in rows])
    return [(float(s), p) for s, p in zip(scores, paths)], how


# -- the on-disk index --------------------------------------------------------------------------
class AnnIndex:
    def __init__(self, index: Any, meta: dict[str, Any]) -> None:
        self.index, self.meta = index, meta

    def search(self, query: np.ndarray, k: int, nprobe: Optional[int] = None) -> tuple[np.ndarray, np.ndarray]:
        faiss = _faiss()
        k = min(k, self.index.ntotal)
        params = faiss.SearchParametersIVF(nprobe=int(nprobe or self.meta["params"]["nprobe"]))
        scores, ids = self.index.search(np.ascontiguousarray(query.reshape(1, -1), dtype=np.float32), k, params=params)
        keep = ids[0] >= 0
        return scores[0][keep], ids[0][keep]


def ensure_ann(
    collection: Collection,
    spec: AnnSpec = DEFAULT_SPEC,
    *,
    rebuild: bool = False,
    on_message: Callable[[str], None] = lambda m: None,
) -> AnnIndex:
    """The collection's ANN index: opened if it is current and sound, else (re)built."""
    folder = collection.ann_dir
    os.makedirs(folder, exist_ok=True)
    if not rebuild:
        found = _try_open(folder, collection)
        if isinstance(found, AnnIndex):
            return found
        if found:
            on_message(found)
    with _lock(folder):  # one builder at a time; a second one finds the first's result
        if not rebuild:
            found = _try_open(folder, collection)
            if isinstance(found, AnnIndex):
                return found
        on_message(
            f"building the ANN index over {collection.count} embeddings (once; stored in {display_path(folder)})"
        )
        return build(folder, collection, spec)


def _try_open(folder: str, collection: Collection) -> AnnIndex | str | None:
    """The index, or why it must be (re)built (None: there is none yet)."""
    if not os.path.exists(os.path.join(folder, ANN_FILE)):
        return None
    try:
        return open_ann(folder, collection)
    except _Stale as exc:
        return f"the ANN index is out of date ({exc}); rebuilding it"
    except InputError as exc:
        warnings.warn(f"{exc}; rebuilding it", RuntimeWarning, stacklevel=3)
        return ""


class _Stale(Exception):
    pass


def open_ann(folder: str, collection: Collection) -> AnnIndex:
    """Open and check the index in *folder* for *collection*. Raises InputError when damaged,
    ``_Stale`` when the embeddings changed since it was built."""
    faiss = _faiss()
    meta_path = os.path.join(folder, ANN_FILE)

    def damaged(what: str) -> InputError:
        return InputError(f"ANN index {display_path(folder)!r} is damaged: {what}")

    from ..inputs.bounded import read_limited

    try:  # a regular file of at most 1 MB (it holds a dozen fields)
        meta = json.loads(read_limited(meta_path, what=ANN_FILE, limit=1 << 20, error=damaged).decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise damaged(f"{ANN_FILE} is not valid JSON ({exc})") from None
    if not isinstance(meta, dict):
        raise damaged(f"{ANN_FILE} holds a {type(meta).__name__}, expected an object")
    if meta.get("format") != ANN_FORMAT:
        raise _Stale(f"format {meta.get('format')!r}, this clip-rt writes {ANN_FORMAT}")
    try:
        name, size, count, dim = str(meta["file"]), int(meta["bytes"]), int(meta["count"]), int(meta["dim"])
        signature = meta["signature"]
        int(meta["params"]["nprobe"])
    except (KeyError, TypeError, ValueError) as exc:
        raise damaged(f"{ANN_FILE} lacks or mangles a field ({exc!r})") from None
    if signature != collection.signature or count != collection.count or dim != collection.embed_dim:
        raise _Stale("the embeddings changed since it was built")
    path = os.path.join(folder, name)
    if os.path.basename(name) != name or not os.path.isfile(path):
        raise damaged(f"its index file {name!r} is missing")
    if os.path.getsize(path) != size:
        raise damaged(f"{name} has {os.path.getsize(path)} bytes, {ANN_FILE} says {size}")
    try:  # memory-mapped: opening a 2 GB index reads nothing up front
        index = faiss.read_index(path, faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY)
    except RuntimeError as exc:  # faiss reports unreadable files as RuntimeError
        raise damaged(f"faiss cannot read {name} ({str(exc).splitlines()[0][:200]})") from None
    if index.ntotal != count or index.d != dim:
        raise damaged(f"{name} holds {index.ntotal} vectors of {index.d}, expected {count} of {dim}")
    ann = AnnIndex(index, meta)
    _self_check(ann, damaged)
    return ann


def _self_check(ann: AnnIndex, damaged: Callable[[str], InputError]) -> None:
    """The lists must add up to the count; a few stored vectors must be unit-length and be
    found as their own best match."""
    faiss = _faiss()
    ivf = faiss.extract_index_ivf(ann.index)
    lists = ivf.invlists
    sizes = [lists.list_size(i) for i in range(ivf.nlist)]
    if sum(sizes) != ann.index.ntotal:
        raise damaged(f"its lists hold {sum(sizes)} vectors, expected {ann.index.ntotal}")
    non_empty = [i for i, n in enumerate(sizes) if n]
    for list_no in sorted({non_empty[0], non_empty[len(non_empty) // 2], non_empty[-1]}):
        n = sizes[list_no]
        codes = faiss.rev_swig_ptr(lists.get_codes(list_no), n * lists.code_size)
        ids = faiss.rev_swig_ptr(lists.get_ids(list_no), n)
        vec = np.frombuffer(bytes(codes[: lists.code_size]), dtype=np.float32)
        row = int(ids[0])
        norm = float(np.linalg.norm(vec))
        if not np.isfinite(norm) or abs(norm - 1.0) > 1e-3 or not 0 <= row < ann.index.ntotal:
            raise damaged(f"stored vector {row} has norm {norm:.4g}, expected 1")
        scores, rows = ann.search(vec, 10)
        if not len(scores) or (row not in rows.tolist() and scores[0] < norm * norm - 1e-4):
            raise damaged(f"stored vector {row} is not found by a search for itself")


def build(folder: str, collection: Collection, spec: AnnSpec = DEFAULT_SPEC) -> AnnIndex:
    """Train on a random sample of the collection's vectors, add them all (a chunk at a time),
    store the result."""
    t0 = time.perf_counter()
    index = build_index(collection.iter_vectors, collection.count, collection.embed_dim, spec)
    if index.ntotal != collection.count:
        raise InputError(
            f"{display_path(collection.folder)!r} gave {index.ntotal} vectors, its description "
            f"says {collection.count}; it changed while the ANN index was built: search again"
        )
    faiss = _faiss()
    name = f"vectors-{collection.signature[:16]}.faiss"
    tmp = os.path.join(folder, f".{name}.{os.getpid()}-{threading.get_ident()}-{uuid.uuid4().hex[:8]}.tmp")
    try:
        faiss.write_index(index, tmp)
        os.replace(tmp, os.path.join(folder, name))
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    meta = {
        "format": ANN_FORMAT,
        "backend": "faiss",
        "backend_version": getattr(faiss, "__version__", None),
        "factory": spec.factory(collection.count),
        "metric": "inner_product",
        "params": {
            "nlist": spec.nlist(collection.count),
            "nprobe": spec.nprobe,
            "train_rows": spec.train_rows(collection.count),
        },
        "count": int(index.ntotal),
        "dim": int(index.d),
        "signature": collection.signature,
        "file": name,
        "bytes": os.path.getsize(os.path.join(folder, name)),
        "build_s": round(time.perf_counter() - t0, 2),
    }
    meta_tmp = os.path.join(folder, f".{ANN_FILE}.{uuid.uuid4().hex}.tmp")
    with open(meta_tmp, "w", encoding="utf-8") as f:
        f.write(json.dumps(meta, indent=1) + "\n")
    os.replace(meta_tmp, os.path.join(folder, ANN_FILE))
    for other in os.listdir(folder):  # older generations, and temporaries of killed builds
        if other != name and (other.startswith("vectors-") or (other.startswith(".") and other.endswith(".tmp"))):
            try:
                os.remove(os.path.join(folder, other))
            except OSError:
                pass
    return AnnIndex(index, meta)


def build_index(
    chunks: Callable[[], Iterator[np.ndarray]], count: int, dim: int, spec: AnnSpec = DEFAULT_SPEC, seed: int = 0
) -> Any:
    """A trained, filled faiss IVF-Flat index; *chunks()* yields the vectors in row order (it is
    called twice: once to sample the training rows, once to add everything)."""
    faiss = _faiss()
    faiss.omp_set_num_threads(os.cpu_count() or 1)
    index = faiss.index_factory(dim, spec.factory(count), faiss.METRIC_INNER_PRODUCT)
    want = spec.train_rows(count)
    rng = np.random.default_rng(seed)
    sample = [c[rng.random(len(c)) < want / max(count, 1)] for c in chunks() if len(c)]
    train = np.ascontiguousarray(np.concatenate(sample) if sample else np.zeros((0, dim), np.float32))
    if len(train) < spec.nlist(count):  # the random draw fell short on a tiny collection
        train = np.ascontiguousarray(np.concatenate([c for c in chunks() if len(c)]))
    index.train(train)
    del train, sample
    for chunk in chunks():
        if len(chunk):
            index.add(np.ascontiguousarray(chunk, dtype=np.float32))
    faiss.omp_set_num_threads(1)  # one query at a time: threads cost more than they give
    return index


@contextmanager
def _lock(folder: str) -> Iterator[None]:
    try:
        import fcntl
    except ImportError:
        yield
        return
    with open(os.path.join(folder, ".lock"), "a+b") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        yield
