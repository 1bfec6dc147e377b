"""Batch embedding and zero-shot classification on Ray Data (``pip install 'clip-rt[ray]'``).

```python
from clip_rt.scale import ray as crt_ray

crt_ray.init()                                  # local Ray on this machine (127.0.0.1), or init("ray://...")
ds = crt_ray.embed_images(["./photos"], model="ViT-B-32-openai")      # a lazy ray.data.Dataset
ds = crt_ray.classify_images(["./photos"], model="ViT-B-32-openai", labels=["cat", "dog"])
result = crt_ray.run_job(["./photos"], "./out", model="ViT-B-32-openai")  # Parquet parts, resumable
```

Rows: ``path, width, height, embedding`` (fixed-size list of float32, L2-normalised),
``error`` (null, or why the image failed; such a row has no embedding), and for classify
``label, score, scores`` (one probability per label, in label order). Inputs are folders,
files (as ``clip-rt classify`` takes them; made absolute on the driver, read by the workers, so
on a cluster they must be on a filesystem every node mounts), object-store URIs such as
``s3://bucket/photos/`` (read with ``ray.data.read_binary_files``), or a ``ray.data.Dataset``
with a ``path`` column and a ``bytes`` (image content) or ``fs_path`` (file to open) column.

The bundle reaches the workers as a path by default (the same directory on every node: the
machine itself, a shared filesystem, or a container image); ``ship_bundle=True`` sends the
image graph through Ray's object store instead, once per node (docs/scale.md compares them).
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Union

from .. import templates as _templates
from ..display import display_path
from ..errors import ClipRtError, InputError
from ..inputs.discover import IMAGE_EXTENSIONS, discover, no_images_found, path_key
from ..options import RuntimeOptions
from . import parts

if TYPE_CHECKING:  # Ray (the [ray] extra) is imported when a job runs
    from ray.data import Dataset

    from ..adapt.head import Head, HeadArg
    from ..bundle.manifest import Manifest
    from ..zeroshot import LabelsArg

DEFAULT_PART_ROWS = 10_000
DEFAULT_OBJECT_STORE_MB = 1024
_MAP_ROWS = 256  # rows per map_batches call at most: enough for the model's batches, small blocks
_started_here = False
_quiet = False  # init(quiet=True): run_job reports a failed job in one line, without Ray Data's console report


class RayUnavailable(ClipRtError):
    """Ray Data is not installed."""


def _ray() -> Any:
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as exc:
        raise RayUnavailable(
            f"this needs Ray Data, which is not installed ({exc}): pip install 'clip-rt[ray]'"
        ) from None
    return ray


# -- the cluster ---------------------------------------------------------------------------
def init(
    address: Optional[str] = None,
    *,
    num_cpus: Optional[int] = None,
    object_store_mb: int = DEFAULT_OBJECT_STORE_MB,
    quiet: bool = True,
) -> bool:
    """Connect to Ray. *address*: a cluster (``"auto"``, ``"10.0.0.5:6379"``,
    ``"ray://head:10001"``; default ``$RAY_ADDRESS``); none starts a local Ray on this machine, bound to 127.0.0.1, with
    *num_cpus* (default: all cores) and an object store of *object_store_mb*. Already
    connected: nothing is done. Returns True if this call started (and so owns) a local Ray."""
    global _started_here, _quiet
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address is None:
        # Read by Ray at import and by the processes it starts: a local node then uses the
        # loopback address, so every server (GCS, raylet, workers) listens on 127.0.0.1 only.
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    ray = _ray()
    if ray.is_initialized():
        return False
    kwargs: dict[str, Any] = {"configure_logging": not quiet, "log_to_driver": not quiet, "include_dashboard": False}
    if address is None:
        import ray._private.ray_constants as constants  # in case ray was imported before the variable was set

        constants.ENABLE_RAY_CLUSTER = False
        # address="local": a new Ray of its own, even where another local cluster is running
        # (Ray would otherwise join that one, and refuse num_cpus for it).
        ray.init(
            address="local",
            num_cpus=num_cpus or os.cpu_count() or 1,
            object_store_memory=object_store_mb * 2**20,
            **kwargs,
        )
        host = ray.get_runtime_context().gcs_address.rsplit(":", 1)[0]
        if host not in ("127.0.0.1", "localhost", "::1", "[::1]"):
            ray.shutdown()
            raise ClipRtError(
                f"the local Ray came up on {host}, not on 127.0.0.1; refusing to run a cluster "
                "reachable from the network (start one yourself and pass its address)"
            )
        _started_here = True
    else:
        ray.init(address=address, **kwargs)
    _quiet = quiet
    if quiet:
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = sys.stderr.isatty()
        logging.getLogger("ray.data").setLevel(logging.WARNING)
    return address is None


class _QuietConsole(logging.Filter):
    """Ray Data's console lines, during a quiet run's job, that it says better itself: a failed
    job's report and traceback (the job raises one ClipRtError line instead; Ray Data's log file
    keeps them all), and the note that progress bars are off (they are, where stderr is not a
    terminal)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno < logging.ERROR and not record.name.startswith("ray.data._internal.progress")


def shutdown() -> None:
    """Disconnect; a local Ray started by :func:`init` is stopped."""
    global _started_here
    ray = _ray()
    if ray.is_initialized():
        ray.shutdown()
    _started_here = False


def _ensure() -> Any:
    ray = _ray()
    if not ray.is_initialized():
        init()
    return ray


# -- inputs --------------------------------------------------------------------------------
Source = Union[str, "os.PathLike[str]", Sequence[Union[str, "os.PathLike[str]"]], Any]


def _is_uri(p: str) -> bool:
    return "://" in p


def input_dataset(
    source: Source, *, skip: Optional[set[str]] = None, walk_errors: Optional[list[tuple[str, str]]] = None
) -> Any:
    """A Dataset of ``path`` plus ``fs_path`` or ``bytes`` for *source*; rows whose path is in
    *skip* are left out. Local paths: discovered on the driver like ``clip-rt classify`` does
    (folders walked, missing files kept so they get an error row), made absolute."""
    ray = _ensure()
    if isinstance(source, ray.data.Dataset):
        ds = source
        if skip:
            done = frozenset(skip)
            ds = ds.filter(lambda row: row["path"] not in done, num_cpus=0)
        return ds
    rows = local_rows(source, skip=skip, walk_errors=walk_errors) if not _uris(source) else None
    if rows is None:
        exts = sorted(e.lstrip(".") for e in IMAGE_EXTENSIONS)
        ds = ray.data.read_binary_files(
            _uris(source),
            include_paths=True,
            file_extensions=exts + [e.upper() for e in exts],
            ray_remote_args={"num_cpus": 0},
        )
        return input_dataset(ds, skip=skip)
    if not rows:
        raise InputError("no images to process: every input is already done, or none was found")
    return _from_rows(ray, rows, _MAP_ROWS)


def _from_rows(ray: Any, rows: list[dict[str, Any]], map_rows: int) -> Any:
    """Blocks of about *map_rows* rows, and at least two per CPU so that every actor gets work."""
    cpus = int(ray.cluster_resources().get("CPU", 1))
    blocks = min(len(rows), 10_000, max(-(-len(rows) // map_rows), 2 * cpus))
    return ray.data.from_items(rows, override_num_blocks=max(1, blocks))


def _is_dataset(source: Source) -> bool:
    """A caller's Dataset (its read tasks may need CPUs); URIs are read with 0-CPU tasks."""
    return "ray" in sys.modules and isinstance(source, sys.modules["ray"].data.Dataset)


def _items(source: Source) -> list[str]:
    items = [os.fspath(source)] if isinstance(source, (str, os.PathLike)) else [os.fspath(s) for s in source]
    if not items:
        raise InputError("no inputs given: expected folders, files or URIs")
    return items


def _uris(source: Source) -> list[str]:
    items = _items(source)
    uris = [s for s in items if _is_uri(s)]
    if uris and len(uris) != len(items):
        raise InputError("give either local paths or URIs (s3://...), not both in one job")
    return uris


def local_rows(
    source: Source, *, skip: Optional[set[str]] = None, walk_errors: Optional[list[tuple[str, str]]] = None
) -> list[dict[str, Any]]:
    """Input rows for local paths: discovered as ``clip-rt classify`` does, made absolute
    (workers do not share the driver's working directory), minus those in *skip*."""
    rows = []
    items = _items(source)
    errors: list[tuple[str, str]] = [] if walk_errors is None else walk_errors
    found = discover(items, errors=errors)
    if not found and not errors:  # as `clip-rt classify`: an empty folder is a mistake, not an empty job
        raise no_images_found(items)
    for p in found:
        abs_path = path_key(p)
        shown = display_path(abs_path)  # Arrow strings are UTF-8: undecodable bytes shown as \xNN
        if skip and shown in skip:
            continue
        rows.append({"path": shown, "fs_path": os.fsencode(abs_path)})
    return rows


# -- the model -----------------------------------------------------------------------------
def _bundle(model: Union[str, os.PathLike[str]], precision: Optional[str]) -> tuple[str, Any, str]:
    from ..bundle.manifest import read_manifest
    from ..bundle.store import resolve_bundle
    from ..engine.session import CPU
    from ..model import default_precision

    bundle_dir = resolve_bundle(model)
    manifest = read_manifest(bundle_dir)
    precision = (precision or default_precision(manifest, CPU)).lower()
    if precision not in manifest.precisions:
        raise InputError(
            f"bundle {manifest.name!r} has no {precision!r} graphs; it has: {', '.join(manifest.precisions)}"
        )
    return str(Path(bundle_dir).resolve()), manifest, precision


def _map(
    ds: Any,
    bundle_dir: str,
    identity: dict[str, Any],
    *,
    classifier: Any,
    actors: Optional[int],
    cpus_per_actor: float,
    batch_size: int,
    draft: bool,
    providers: Any,
    ship_bundle: bool,
    ray_remote_args: Optional[dict[str, Any]],
    map_rows: int = 256,
    spare_cpu: bool = False,
    node_columns: bool = False,
) -> Any:
    from .actors import ImageRows
    from .actors import ship_bundle as ship

    ray = _ensure()
    bundle: Any = bundle_dir
    if ship_bundle:
        bundle = ship(bundle_dir, identity["precision"], ray.put)
    if actors is None:
        # Actors hold their CPUs for the whole job. A Dataset of the caller's may have read
        # tasks that need a CPU too: leave one free for them, or the job waits forever.
        cpus = int(ray.cluster_resources().get("CPU", 1)) - (1 if spare_cpu else 0)
        actors = max(1, int(cpus // max(cpus_per_actor, 1e-9)))
    threads = max(1, int(cpus_per_actor))
    return ds.map_batches(
        ImageRows,
        batch_size=map_rows,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=actors),
        num_cpus=cpus_per_actor,
        # Actors are long-lived (a whole job each): steady speed chooses their backend.
        fn_constructor_kwargs={
            "bundle": bundle,
            "identity": identity,
            "options": RuntimeOptions(threads=threads, draft=draft, providers=providers),
            "batch_size": batch_size,
            "classifier": classifier,
            "decode_workers": threads + 1,
            "node_columns": node_columns,
        },
        **(ray_remote_args or {}),
    )


def embed_images(
    source: Source,
    model: Union[str, os.PathLike[str]],
    *,
    precision: Optional[str] = None,
    actors: Optional[int] = None,
    cpus_per_actor: float = 1,
    batch_size: int = 8,
    draft: bool = False,
    providers: Union[str, Sequence[str], None] = None,
    ship_bundle: bool = False,
    ray_remote_args: Optional[dict[str, Any]] = None,
) -> Dataset:
    """A lazy ``ray.data.Dataset`` of image embeddings (columns above). *actors*: how many
    model copies (default: the cluster's CPUs / *cpus_per_actor*); each runs ONNX Runtime
    with ``int(cpus_per_actor)`` threads. *ray_remote_args*: passed to ``map_batches``
    (e.g. ``{"num_gpus": 1}`` with ``providers=["cuda"]``)."""
    bundle_dir, manifest, precision = _bundle(model, precision)
    ident = parts.identity("embed", manifest, precision, bundle_dir=bundle_dir)
    return _map(
        input_dataset(source),
        bundle_dir,
        ident,
        classifier=None,
        actors=actors,
        cpus_per_actor=cpus_per_actor,
        batch_size=batch_size,
        draft=draft,
        providers=providers,
        ship_bundle=ship_bundle,
        ray_remote_args=ray_remote_args,
        spare_cpu=_is_dataset(source),
    )


def classify_images(
    source: Source,
    model: Union[str, os.PathLike[str]],
    labels: Optional[LabelsArg] = None,
    templates: Union[str, Sequence[str]] = _templates.SIMPLE,
    *,
    head: Optional[HeadArg] = None,
    **options: Any,
) -> Dataset:
    """Like :func:`embed_images`, plus ``label``, ``score`` and ``scores`` (softmax over
    *labels*, or each label's sigmoid for SigLIP bundles: the bundle's ``scoring``, as
    ``clip-rt classify``). The class embeddings are computed once, on the driver. *head*: a
    fitted head (:class:`clip_rt.Head` or its file) instead of zero-shot labels; its labels,
    and its softmax probabilities as scores."""
    bundle_dir, manifest, precision = _bundle(model, options.pop("precision", None))
    classifier, ident = _classifier(bundle_dir, manifest, precision, labels, templates, head)
    return _map(
        input_dataset(source),
        bundle_dir,
        ident,
        classifier=classifier,
        spare_cpu=_is_dataset(source),
        **_map_options(options),
    )


def _map_options(options: dict[str, Any]) -> dict[str, Any]:
    allowed = {
        "actors": None,
        "cpus_per_actor": 1,
        "batch_size": 8,
        "draft": False,
        "providers": None,
        "ship_bundle": False,
        "ray_remote_args": None,
    }
    unknown = set(options) - set(allowed)
    if unknown:
        raise TypeError(f"unexpected option(s): {', '.join(sorted(unknown))}")
    return {k: options.get(k, v) for k, v in allowed.items()}


def _classifier(
    bundle_dir: str,
    manifest: Manifest,
    precision: str,
    labels: Optional[LabelsArg],
    templates: Union[str, Sequence[str]],
    head: Optional[HeadArg] = None,
) -> tuple[Any, dict[str, Any]]:
    from ..model import load
    from ..zeroshot import check_templates, parse_labels

    if head is not None:
        return _head_classifier(manifest, precision, labels, head, bundle_dir)
    if labels is None:
        raise InputError("no labels given: expected class labels, or a fitted head (head=...)")

    model = load(bundle_dir, precision=precision, providers=["cpu"])
    classifier = model.classifier(labels, templates)
    model.close()
    parsed = parse_labels(labels)
    spec = {lab.name: (list(lab.prompts) if lab.prompts else None) for lab in parsed}
    ident = parts.identity(
        "classify",
        manifest,
        precision,
        labels=classifier.names,
        label_spec=spec,
        templates=list(check_templates(templates)),
        bundle_dir=bundle_dir,
    )
    ident["head"] = None  # a head's output is not resumed without it (absent in older jobs: the same)
    return classifier, ident


def check_head(head: HeadArg, model: Union[str, os.PathLike[str]]) -> None:
    """Refuse a head fitted on another bundle than *model*, from its manifest alone: the CLI
    calls this before it starts Ray (the precision is compared, with a warning, by the job)."""
    from ..adapt.head import as_head, check_compatible
    from ..bundle.manifest import read_manifest
    from ..bundle.store import resolve_bundle

    found = as_head(head)
    manifest = read_manifest(resolve_bundle(model))
    check_compatible(found, fingerprint=manifest.fingerprint, precision=found.model.precision, bundle=manifest.name)


def _head_classifier(
    manifest: Any, precision: str, labels: Any, head: HeadArg, bundle_dir: str
) -> tuple[Head, dict[str, Any]]:
    """A head checked against the bundle on the driver (another bundle: refused before Ray
    runs anything); the actors apply it like a zero-shot classifier (names, probabilities)."""
    import warnings

    from ..adapt.head import as_head, check_compatible, check_head_arguments

    found = as_head(head)
    check_head_arguments(found, labels, None)
    message = check_compatible(found, fingerprint=manifest.fingerprint, precision=precision, bundle=manifest.name)
    if message:
        warnings.warn(message, UserWarning, stacklevel=4)
    ident = parts.identity(
        "classify",
        manifest,
        precision,
        labels=found.names,
        label_spec=dict.fromkeys(found.names),
        templates=list(found.templates),
        bundle_dir=bundle_dir,
    )
    ident.pop("scoring", None)  # a head's scores are its softmax, whatever the bundle's scoring
    ident["head"] = found.digest
    return found, ident


# -- the resumable job ------------------------------------------------------------------------
def run_job(
    source: Source,
    output: Union[str, os.PathLike[str]],
    model: Union[str, os.PathLike[str]],
    *,
    labels: Any = None,
    templates: Union[str, Sequence[str]] = _templates.SIMPLE,
    part_rows: int = DEFAULT_PART_ROWS,
    overwrite: bool = False,
    head: Optional[HeadArg] = None,
    **options: Any,
) -> dict[str, Any]:
    """Embed (or, with *labels* or a fitted *head*, classify) *source* into Parquet parts in *output*. A rerun
    skips every input already in a finished part (see :mod:`clip_rt.scale.parts`); per-image
    errors are rows with ``error`` set, never a failed job. Returns counts: ``new`` rows written
    by this run, ``done_before``, ``rows`` and ``failed`` over the whole output, up to ten
    ``failed_examples``, and ``nodes``: this run's rows per Ray node id (``ip``, ``rows``,
    ``failed``). A node that cannot do its part, or a loss Ray does not recover from, raises a
    :class:`~clip_rt.scale.nodes.NodeError` / :class:`~clip_rt.scale.nodes.RayJobError` naming
    the node and the cause; the parts finished so far are kept, and rerunning resumes."""
    if part_rows < 1:
        raise InputError(f"part_rows must be at least 1, got {part_rows}")
    out = os.fspath(output)
    bundle_dir, manifest, precision = _bundle(model, options.pop("precision", None))
    if labels is not None or head is not None:
        classifier, ident = _classifier(bundle_dir, manifest, precision, labels, templates, head)
    else:
        classifier, ident = None, parts.identity("embed", manifest, precision, bundle_dir=bundle_dir)
    walk_errors: list[tuple[str, str]] = []
    # Local inputs are found first: a source without images fails before the output folder is made.
    local = None if _is_dataset(source) or _uris(source) else local_rows(source, walk_errors=walk_errors)
    parts.prepare_output(out, ident, overwrite=overwrite)
    done = parts.done_paths(out)
    ray = _ensure()
    if local is None:
        ds = input_dataset(source, skip=done)
    else:
        rows = [row for row in local if row["path"] not in done]
        ds = _from_rows(ray, rows, min(_MAP_ROWS, part_rows)) if rows else None
    new = _write_unlisted(out, ident, walk_errors, done)
    nodes: dict[str, dict[str, Any]] = {}
    if ds is not None:
        from .sink import PartsDatasink

        ds = _map(
            ds,
            bundle_dir,
            ident,
            classifier=classifier,
            map_rows=min(_MAP_ROWS, part_rows),
            spare_cpu=_is_dataset(source),
            node_columns=True,
            **_map_options(options),
        )
        sink = PartsDatasink(out, part_rows)
        _write(ds, sink)
        new += sum(w["rows"] for w in sink.written)
        for w in sink.written:
            parts.add_nodes(nodes, w.get("nodes") or {})
    summary = parts.summarize(out)
    return {
        "output": out,
        "new": new,
        "done_before": len(done),
        "rows": summary.rows,
        "failed": summary.failed,
        "failed_examples": summary.failed_examples,
        "parts": summary.parts,
        "nodes": nodes,
    }


def _write(ds: Any, sink: Any) -> None:
    """Run the job into *sink*. A failure of the cluster or of a node (its actor could not load
    the model, a node or an object was lost for good) becomes one ClipRtError line naming the
    node and the cause (:mod:`clip_rt.scale.nodes`); the parts finished so far stay for the rerun."""
    from .nodes import job_failure

    ctx = _ray().data.DataContext.get_current()
    # The actor's own exception, not Ray Data's "UDF failed" wrapper (which loses it on the way
    # to the driver); the caller's setting is put back afterwards.
    before, ctx.raise_original_map_exception = ctx.raise_original_map_exception, True
    console = [h for h in logging.getLogger("ray.data").handlers if isinstance(h, logging.StreamHandler)]
    quiet = _QuietConsole()
    for handler in console if _quiet else []:
        handler.addFilter(quiet)
    try:
        ds.write_datasink(sink, ray_remote_args={"num_cpus": 0})
    except ClipRtError:
        raise
    except Exception as exc:
        failure = job_failure(exc)
        if failure is None:
            raise
        raise failure from None
    finally:
        ctx.raise_original_map_exception = before
        for handler in console:
            handler.removeFilter(quiet)


def _write_unlisted(out: str, ident: dict[str, Any], walk_errors: list[tuple[str, str]], done: set[str]) -> int:
    """A folder that could not be listed gets one failed row, as in ``clip-rt classify``."""
    import pyarrow as pa

    rows: dict[str, str] = {}  # shown path -> reason
    for folder, reason in walk_errors:
        shown = display_path(path_key(folder))
        if shown not in done:
            rows.setdefault(shown, reason)
    if not rows:
        return 0
    schema = parts.schema(ident)
    cols: dict[str, Any] = {name: pa.nulls(len(rows), schema.field(name).type) for name in schema.names}
    cols["path"] = pa.array(list(rows), pa.string())
    cols["error"] = pa.array(list(rows.values()), pa.string())
    parts.write_part(out, pa.Table.from_pydict(cols, schema=schema))
    return len(rows)
