"""What ``clip-rt search`` searches: an index folder (``clip-rt index``) or a Parquet output of
``clip-rt ray embed|classify``, behind one small interface.

A collection gives its rows' embeddings (float32, L2-normalised), their paths, the model that
made them, and a *signature* that changes whenever the embeddings do (an ANN index built from
them records it, and is rebuilt when it no longer matches).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np

from ..display import display_path
from ..errors import InputError


@dataclass
class Collection:
    folder: str
    kind: str  # "index" | "parquet"
    model: str
    fingerprint: str
    precision: str
    embed_dim: int
    count: int
    signature: str
    bundle_dir: Optional[str] = None
    _index: Any = None  # the SearchIndex, once loaded

    # The ANN index lives beside the embeddings, in a folder of its own.
    @property
    def ann_dir(self) -> str:
        return os.path.join(self.folder, "ann" if self.kind == "index" else "_ann")

    def vectors(self) -> np.ndarray:
        """(count, embed_dim) float32, row order = :meth:`paths` order."""
        if self.kind == "index":
            return self._load_index().embeddings
        chunks = list(self.iter_vectors())
        return np.concatenate(chunks) if chunks else np.zeros((0, self.embed_dim), np.float32)

    def iter_vectors(self) -> Iterator[np.ndarray]:
        """The vectors in row order, a part (or the whole index) at a time: building an ANN
        index from Parquet never holds two copies of every embedding."""
        if self.kind == "index":
            yield self._load_index().embeddings
            return
        import pyarrow.parquet as pq

        from ..scale import parts

        for part in parts.finished_parts(self.folder):
            try:
                col = pq.read_table(part, columns=["embedding"]).column("embedding")
            except Exception as exc:  # noqa: BLE001 - any pyarrow failure: a damaged part
                raise InputError(f"{display_path(str(part))}: not a readable Parquet part ({exc})") from None
            col = col.filter(col.is_valid())
            flat = col.combine_chunks().flatten().to_numpy(zero_copy_only=False) if len(col) else np.zeros(0)
            yield np.asarray(flat, dtype=np.float32).reshape(-1, self.embed_dim)

    def paths(self, rows: Optional[Sequence[int]] = None) -> list[str]:
        if self.kind == "index":
            index = self._load_index()
            entries = index.entries if rows is None else [index.entries[i] for i in rows]
            return [index.abs_path(e) for e in entries]
        from ..scale import parts

        # A row has an embedding exactly when its error is null; reading "error" instead of
        # "embedding" keeps this cheap (paths only, not 2 KB a row).
        table = parts.read_table(self.folder, ["path", "error"])
        table = table.filter(table.column("error").is_null())
        col = table.column("path")
        return col.to_pylist() if rows is None else [col[int(i)].as_py() for i in rows]

    def _load_index(self) -> Any:
        if self._index is None:
            from .search_index import SearchIndex

            self._index = SearchIndex.load(self.folder)
        return self._index


def open_collection(folder: str) -> Collection:
    """The index or Parquet output in *folder*, read as far as its description (vectors and paths
    are read when asked for)."""
    from ..scale import parts

    if parts.is_job_dir(folder):
        return _parquet(folder)
    from .search_index import SearchIndex

    index = SearchIndex.load(folder)  # not an index either: its error says so
    emb_file = os.path.join(folder, f"embeddings-{index.generation}.npy")
    st = os.stat(emb_file) if os.path.exists(emb_file) else None
    sig = _digest(
        [
            index.generation,
            index.fingerprint,
            index.precision,
            len(index.entries),
            st.st_size if st else None,
            st.st_mtime_ns if st else None,
        ]
    )
    return Collection(
        folder=folder,
        kind="index",
        model=index.model,
        fingerprint=index.fingerprint,
        precision=index.precision,
        embed_dim=index.embed_dim,
        count=len(index.entries),
        signature=sig,
        bundle_dir=index.bundle_dir,
        _index=index,
    )


def _parquet(folder: str) -> Collection:
    import pyarrow.parquet as pq

    from ..scale import parts

    job = parts.read_job(folder)
    files = parts.finished_parts(folder)
    count = 0
    for f in files:
        try:
            meta = pq.read_metadata(f)
            count += meta.num_rows
        except Exception as exc:  # noqa: BLE001 - any pyarrow failure: a damaged part
            raise InputError(
                f"{display_path(str(f))}: not a readable Parquet part ({exc}); rerun the job to redo it"
            ) from None
    stats = [(f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in files]
    # Rows without an embedding (failed images, error set) are not searchable: count them out.
    failed = parts.summarize(folder, limit=0).failed if files else 0
    return Collection(
        folder=folder,
        kind="parquet",
        model=job["model"],
        fingerprint=job["fingerprint"],
        precision=job["precision"],
        embed_dim=int(job["embed_dim"]),
        count=count - failed,
        signature=_digest([job["fingerprint"], job["precision"], stats]),
        bundle_dir=job.get("bundle_dir"),
    )


def _digest(parts_: list[Any]) -> str:
    return hashlib.sha256(json.dumps(parts_, sort_keys=True).encode()).hexdigest()[:32]
