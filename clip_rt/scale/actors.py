"""The per-actor work of a Ray job: a callable class for ``Dataset.map_batches``.

It loads the bundle once per actor and maps a batch of rows (``path``, and either
``fs_path``, the file to open, or ``bytes``, its content) to result rows, with the runtime's
own loading, preprocessing and encoding (:meth:`clip_rt.model.ClipModel.iter_images`), so an
embedding equals the one ``clip-rt index`` computes for the same file. A bad image gives a row
with ``error`` set; the batch goes on. Ray is imported only inside functions (object refs, the
node's id): pyarrow and the runtime do the work.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Union

import numpy as np

from ..errors import BundleError, ClipRtError
from ..model import load
from ..options import RuntimeOptions
from . import parts

if TYPE_CHECKING:
    from ..zeroshot import EmbeddingClassifier

BYTES_SOURCE = "<bytes>"  # how the loader names an in-memory image in its errors


class ImageRows:
    """``map_batches`` callable: batch of inputs -> Arrow table in :func:`parts.schema`.

    A node where the model cannot be loaded (a bundle that is damaged or differs there, a shipped
    copy that cannot be written, a backend that does not start) does not fail the actor's start:
    there, Ray Data (2.60) retried the actor's calls without end, printed Ray's traceback and
    went on without the node. The cause is kept and raised on the first batch as a
    :class:`NodeError` naming the node, which fails the job with that one line (the finished
    parts are kept for the rerun)."""

    def __init__(
        self,
        bundle: Union[str, ShippedBundle],
        identity: dict[str, Any],
        options: RuntimeOptions,
        *,
        batch_size: int = 8,
        classifier: Optional[EmbeddingClassifier] = None,
        decode_workers: Optional[int] = None,
        node_columns: bool = False,
    ) -> None:
        """*options*: how the model runs, built once by the driver (the precision is the job's).
        *node_columns*: add ``_node_ip`` and ``_node_id`` to every row (the sink counts and drops them)."""
        self.identity = identity
        self.schema = parts.schema(identity)
        self.batch_size = batch_size
        self.classifier = classifier
        self.decode_workers = decode_workers
        self.node: Optional[tuple[str, str]] = None
        if node_columns:
            from .nodes import this_node

            self.node = this_node()
        self.model: Any = None
        self.failure: Optional[Exception] = None
        try:
            self.model = self._load(bundle, options)
        except Exception as exc:  # noqa: BLE001 - not hidden: raised, naming the node, on the first batch
            from .nodes import node_error

            self.failure = node_error("the model could not be loaded on this node", exc)

    def _load(self, bundle: Union[str, ShippedBundle], options: RuntimeOptions) -> Any:
        identity = self.identity
        bundle_dir = bundle if isinstance(bundle, str) else materialise(bundle)
        model = load(bundle_dir, options=options.replace(precision=identity["precision"], cache=False))
        if model.manifest.fingerprint != identity["fingerprint"]:
            raise BundleError(
                f"{bundle_dir}: bundle fingerprint {model.manifest.fingerprint[:12]}... on this "
                f"node, the driver has {identity['fingerprint'][:12]}...: every node must see the "
                "same bundle"
            )
        if not isinstance(bundle, str):
            fetch_reference(bundle, Path(bundle_dir), model)
        model.session("image")  # a damaged graph fails here, not on each batch
        return model

    def __call__(self, batch: dict[str, Any]) -> Any:
        if self.failure is not None:
            raise self.failure
        try:
            table = self._rows(batch)
        except Exception as exc:  # noqa: BLE001 - per-image errors are rows; this is the node failing
            from .nodes import node_error

            raise node_error(f"a batch of {len(batch['path'])} images failed", exc) from exc
        if self.node is not None:
            import pyarrow as pa

            n = table.num_rows
            table = table.append_column(parts.NODE_IP, pa.array([self.node[0]] * n, pa.string()))
            table = table.append_column(parts.NODE_ID, pa.array([self.node[1]] * n, pa.string()))
        return table

    def _rows(self, batch: dict[str, Any]) -> Any:
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
    def _classify(classifier: EmbeddingClassifier, emb: np.ndarray, ok: np.ndarray) -> dict[str, Any]:
        import pyarrow as pa

        probs = np.zeros((len(emb), len(classifier.names)), dtype=np.float32)
        if ok.any():
            probs[ok] = classifier.probabilities(emb[ok])
        best = probs.argmax(axis=1)  # the first of equal scores, as the CLI's stable sort
        labels = [classifier.names[j] if good else None for j, good in zip(best, ok)]
        scores = [float(probs[i, j]) if good else None for i, (j, good) in enumerate(zip(best, ok))]
        return {
            "label": pa.array(labels, pa.string()),
            "score": pa.array(scores, pa.float32()),
            "scores": _fixed_list(probs, ok),
        }


def _fixed_list(values: np.ndarray, valid: np.ndarray) -> Any:
    import pyarrow as pa

    flat = pa.array(np.ascontiguousarray(values, dtype=np.float32).reshape(-1), pa.float32())
    return pa.FixedSizeListArray.from_arrays(flat, values.shape[1], mask=pa.array(~valid))


def _name_error(error: str, path: str, from_bytes: bool) -> str:
    """The loader names an in-memory image ``<bytes>``; the record names its path instead."""
    if from_bytes and error.startswith(BYTES_SOURCE + ":"):
        return path + error[len(BYTES_SOURCE) :]
    return error


# -- a bundle shipped through Ray's object store --------------------------------------------
@dataclass(frozen=True)
class ShippedBundle:
    """What the actors of a ``--ship-bundle`` job get: the manifest itself, and object refs of
    the files (fetched only by a node that has no good copy yet). *reference*: the fp32 image
    graph, put only when a node may choose a derived mode of the job's precision (bf16 compute
    on the int8 graph), which must be checked against it before it is used; a node fetches it
    only when its plan asks for that check (see :func:`fetch_reference`)."""

    fingerprint: str
    precision: str
    manifest: bytes
    graph: Any  # ObjectRef of {file name: bytes}
    reference: Any = None  # ObjectRef of {file name: bytes}, or None


def graph_files(manifest: Any, precision: str) -> list[str]:
    """The image graph of *precision* and, where the bundle has them, the stored fp32 embeddings a
    derived mode is checked against."""
    graph = manifest.graph(precision, "image")
    stored = getattr(manifest, "parity_reference", None)
    return [graph.file, *graph.external_data, *([stored.file] if stored is not None else [])]


def derived_mode_possible(manifest: Any, precision: str) -> bool:
    """Whether some CPU of the choice table may run this bundle's *precision* image graph in a
    derived mode (bf16 compute), which a node checks against the fp32 graph before using it."""
    from ..engine.backends.choose import int8_scheme, load_table

    if precision == "fp32" or "fp32" not in manifest.graphs or getattr(manifest, "parity_reference", None):
        return False  # nothing to check, or checked against the stored embeddings shipped with the graph
    graph = f"int8-{int8_scheme(manifest, 'image')}" if precision == "int8" else precision
    return any(
        row.get("encoder") == "image" and row.get("compute") == "bf16" and row.get("graph") == graph
        for row in load_table().get("rows", [])
    )


def ship_bundle(bundle_dir: str, precision: str, put: Callable[[Any], Any]) -> ShippedBundle:
    """Put what a node needs to run the image encoder into the object store with *put*
    (``ray.put``): the image graph of *precision* (the class embeddings of a classify job are
    computed on the driver), and the fp32 image graph where a derived mode may need it."""
    from ..bundle.manifest import read_manifest
    from ..bundle.store import MANIFEST_NAME

    folder = Path(bundle_dir)
    manifest = read_manifest(folder)

    def files(names: list[str]) -> Any:
        return put({name: (folder / name).read_bytes() for name in names})

    reference = files(graph_files(manifest, "fp32")) if derived_mode_possible(manifest, precision) else None
    return ShippedBundle(
        manifest.fingerprint,
        precision,
        (folder / MANIFEST_NAME).read_bytes(),
        files(graph_files(manifest, precision)),
        reference,
    )


def _get(ref: Any) -> Any:
    if isinstance(ref, dict):  # already the files (tests build a ShippedBundle without Ray)
        return ref
    import ray

    return ray.get(ref)


def materialise(shipped: ShippedBundle) -> str:
    """The shipped bundle as a folder on this node, ``$CLIP_RT_HOME/ray-bundles/<fingerprint>-
    <precision>``, written once per node (atomically; later actors reuse it). A copy that no
    longer matches its manifest (damaged on this node's disk) is written again from the shipped
    files, with a warning. The model checks the files' sha256 again when it loads them."""
    from ..bundle.manifest import Manifest
    from ..bundle.store import MANIFEST_NAME, home
    from ..bundle.verify import verify_bundle_files

    manifest = Manifest.from_dict(json.loads(shipped.manifest), source="the shipped manifest")
    names = graph_files(manifest, shipped.precision)
    target = home() / "ray-bundles" / f"{shipped.fingerprint[:24]}-{shipped.precision}"
    damaged = False
    if (target / MANIFEST_NAME).is_file():
        try:
            if (target / MANIFEST_NAME).read_bytes() != shipped.manifest:
                raise BundleError(f"{target}: {MANIFEST_NAME} differs from the shipped one")
            verify_bundle_files(target, manifest, names)
            return str(target)
        except ClipRtError as exc:
            damaged = True
            warnings.warn(
                f"the shipped bundle's copy on this node is damaged ({exc}); writing it again",
                RuntimeWarning,
                stacklevel=2,
            )
    files = {MANIFEST_NAME: shipped.manifest, **_get(shipped.graph)}
    tmp = target.with_name(f".{target.name}.tmp-{uuid.uuid4().hex}")
    try:
        tmp.mkdir(parents=True)
        for name, data in files.items():
            (tmp / name).parent.mkdir(parents=True, exist_ok=True)
            (tmp / name).write_bytes(data)
        _put_folder(tmp, target, replace=damaged)
    except OSError as exc:  # this node's home is not writable (full disk, read-only, not a folder)
        raise BundleError(
            f"cannot write the shipped bundle to {target.parent} ({exc.strerror or exc}): "
            "CLIP_RT_HOME must be a writable folder on every node"
        ) from exc
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return str(target)


def _put_folder(new: Path, target: Path, *, replace: bool) -> None:
    """Rename *new* to *target*. Where another actor on this node put a copy there first, that
    copy is used, unless *replace* (the copy there is damaged): then it is moved aside first."""
    aside = None
    if replace and target.exists():
        aside = target.with_name(f".{target.name}.old-{uuid.uuid4().hex}")
        try:
            os.rename(target, aside)
        except FileNotFoundError:  # another actor on this node moved it first
            aside = None
    try:
        os.rename(new, target)
    except OSError:  # a non-empty folder is there: another actor's copy, written the same way
        if not (target / "manifest.json").is_file():
            raise
    if aside is not None:
        shutil.rmtree(aside, ignore_errors=True)


def fetch_reference(shipped: ShippedBundle, folder: Path, model: Any) -> None:
    """Where this node's plan runs the image encoder in a derived mode that must first be
    checked against the fp32 graph, write that graph next to the shipped copy (fetched from the
    object store, once per node) so that the check can run, as it would on the full bundle."""
    choice = model.plan.image
    if not choice.needs_evidence or choice.graph_precision == "fp32" or model.manifest.parity_reference is not None:
        return  # no check, a check against the graph that was shipped, or against the stored embeddings
    from ..bundle.verify import verify_bundle_files

    names = graph_files(model.manifest, "fp32")
    if all((folder / name).is_file() for name in names):
        try:
            verify_bundle_files(folder, model.manifest, names)
            return
        except ClipRtError as exc:
            warnings.warn(
                f"the fp32 image graph on this node is damaged ({exc}); writing it again", RuntimeWarning, stacklevel=2
            )
    if shipped.reference is None:
        raise BundleError(
            f"{choice.backend} {choice.mode_label} was chosen for the image encoder on this node, and "
            "must first be checked against the fp32 image graph, which the driver did not ship "
            "(its clip-rt expects no derived mode here: run the same clip-rt version on every node, "
            "or give the bundle as a path every node reads)"
        )
    for name, data in _get(shipped.reference).items():
        path = folder / name
        tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex}")
        try:
            tmp.write_bytes(data)
            os.replace(tmp, path)
        except OSError as exc:
            raise BundleError(f"cannot write the fp32 image graph to {folder} ({exc.strerror or exc})") from exc
        finally:
            tmp.unlink(missing_ok=True)
