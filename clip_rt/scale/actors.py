"""The per-actor work of a Ray job: a callable class for ``Dataset.map_batches``.

It loads the bundle once per actor and maps a batch of rows (``path``, and either
``fs_path``, the file to open, or ``bytes``, its content) to result rows, with the runtime's
own loading, preprocessing and encoding (:meth:`clip_rt.model.ClipModel.iter_images`), so an
embedding equals the one ``clip-rt index`` computes for the same file. A bad image gives a row
with ``error`` set; the batch goes on. No Ray import here: only pyarrow and the runtime.
"""
from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Union

import numpy as np

from ..model import load
from . import parts

if TYPE_CHECKING:
    from ..zeroshot import ZeroShotClassifier

BYTES_SOURCE = "<bytes>"  # how the loader names an in-memory image in its errors


class ImageRows:
    """``map_batches`` callable: batch of inputs -> Arrow table in :func:`parts.schema`."""

    def __init__(self, bundle: Any, identity: dict[str, Any], *, threads: Optional[int] = None,
                 batch_size: int = 8, draft: bool = False, providers: Union[str, Sequence[str], None] = None,
                 classifier: Optional[ZeroShotClassifier] = None, decode_workers: Optional[int] = None) -> None:
        """*bundle*: its folder on a shared file system, or the packed bundle (an object ref or
        :func:`materialise`'s dict) shipped through Ray's object store."""
        bundle_dir = bundle if isinstance(bundle, str) else materialise(bundle)
        self.model = load(bundle_dir, precision=identity["precision"], threads=threads, cache=False, draft=draft,
                          providers=providers)
        if self.model.manifest.fingerprint != identity["fingerprint"]:
            raise RuntimeError(f"{bundle_dir}: bundle fingerprint {self.model.manifest.fingerprint[:12]}... on this "
                               f"worker, the driver has {identity['fingerprint'][:12]}...: every node must see the "
                               "same bundle")
        self.model.session("image")  # a damaged graph fails the actor's start, not each batch
        self.identity = identity
        self.schema = parts.schema(identity)
        self.batch_size = batch_size
        self.classifier = classifier
        self.decode_workers = decode_workers

    def __call__(self, batch: dict[str, Any]) -> Any:
        import pyarrow as pa

        paths = [str(p) for p in batch["path"]]
        if "bytes" in batch:
            # bytearray: always image data (the loader reads short ``bytes`` as a file name)
            sources: list[bytearray] | list[str] = [bytearray(b) for b in batch["bytes"]]
        else:
            sources = [os.fsdecode(bytes(b)) for b in batch["fs_path"]]
        n, dim = len(paths), int(self.identity["embed_dim"])
        emb = np.zeros((n, dim), dtype=np.float32)
        ok = np.zeros(n, dtype=bool)
        width: list[Optional[int]] = [None] * n
        height: list[Optional[int]] = [None] * n
        error: list[Optional[str]] = [None] * n
        for item in self.model.iter_images(sources, batch_size=self.batch_size, workers=self.decode_workers):
            i = item.index
            width[i], height[i] = item.width, item.height
            if item.embedding is None or item.error is not None:
                error[i] = _name_error(item.error or "no embedding", paths[i], "bytes" in batch)
            else:
                emb[i], ok[i] = item.embedding, True
        columns: dict[str, Any] = {
            "path": pa.array(paths, pa.string()),
            "width": pa.array(width, pa.int32()),
            "height": pa.array(height, pa.int32()),
            "embedding": _fixed_list(emb, ok),
            "error": pa.array(error, pa.string()),
        }
        if self.classifier is not None:
            columns.update(self._classify(self.classifier, emb, ok))
        return pa.Table.from_pydict(columns, schema=self.schema)

    @staticmethod
    def _classify(classifier: ZeroShotClassifier, emb: np.ndarray, ok: np.ndarray) -> dict[str, Any]:
        import pyarrow as pa

        probs = np.zeros((len(emb), len(classifier.names)), dtype=np.float32)
        if ok.any():
            probs[ok] = classifier.probabilities(emb[ok])
        best = probs.argmax(axis=1)  # the first of equal scores, as the CLI's stable sort
        labels = [classifier.names[j] if good else None for j, good in zip(best, ok)]
        scores = [float(probs[i, j]) if good else None for i, (j, good) in enumerate(zip(best, ok))]
        return {"label": pa.array(labels, pa.string()), "score": pa.array(scores, pa.float32()),
                "scores": _fixed_list(probs, ok)}


def _fixed_list(values: np.ndarray, valid: np.ndarray) -> Any:
    import pyarrow as pa

    flat = pa.array(np.ascontiguousarray(values, dtype=np.float32).reshape(-1), pa.float32())
    return pa.FixedSizeListArray.from_arrays(flat, values.shape[1], mask=pa.array(~valid))


def _name_error(error: str, path: str, from_bytes: bool) -> str:
    """The loader names an in-memory image ``<bytes>``; the record names its path instead."""
    if from_bytes and error.startswith(BYTES_SOURCE + ":"):
        return path + error[len(BYTES_SOURCE):]
    return error


# -- a bundle shipped through Ray's object store --------------------------------------------
def pack_bundle(bundle_dir: str, precision: str) -> dict[str, Any]:
    """What a node needs to run the image encoder: the manifest and the image graph's files
    (the class embeddings of a classify job are computed on the driver)."""
    from ..bundle.manifest import read_manifest
    from ..bundle.store import MANIFEST_NAME

    manifest = read_manifest(Path(bundle_dir))
    graph = manifest.graph(precision, "image")
    names = [MANIFEST_NAME, graph.file, *graph.external_data]
    return {"fingerprint": manifest.fingerprint, "precision": precision,
            "files": {name: (Path(bundle_dir) / name).read_bytes() for name in names}}


def materialise(packed: Any) -> str:
    """Write a shipped bundle (an object ref or the packed dict) once per node under
    ``$CLIP_RT_HOME/ray-bundles/<fingerprint>-<precision>``; later actors on the node reuse it.
    The files are checked against the manifest's sha256 when the model loads them."""
    if not isinstance(packed, dict):
        import ray

        packed = ray.get(packed)
    from ..bundle.store import home

    target = home() / "ray-bundles" / f"{packed['fingerprint'][:24]}-{packed['precision']}"
    if (target / "manifest.json").is_file():
        return str(target)
    tmp = target.with_name(f".{target.name}.tmp-{uuid.uuid4().hex}")
    tmp.mkdir(parents=True)
    try:
        for name, data in packed["files"].items():
            (tmp / name).parent.mkdir(parents=True, exist_ok=True)
            (tmp / name).write_bytes(data)
        try:
            os.rename(tmp, target)
        except OSError:  # another actor on this node finished first: use its copy
            if not (target / "manifest.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return str(target)
