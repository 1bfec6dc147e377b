"""The Parquet output of a Ray job: schema, job description, finished parts, resume.

An output folder holds:

- ``_clip-rt-job.json``: what wrote it (format version, kind ``embed``/``classify``, bundle
  name and fingerprint, precision, embedding size, labels, templates). A rerun with another
  model, precision, labels or templates is refused.
- ``part-<hash>.parquet``: finished parts; each one's footer metadata ``clip_rt_nodes`` says
  which Ray nodes computed its rows (node id -> IP address, rows, failed rows). A part is written under a temporary name
  (``.part-<hash>.parquet.tmp-<id>``), flushed to disk and only then renamed, so a file with a
  final name is always complete; ``<hash>`` is derived from the paths it holds, so a write task
  that Ray retries after its rename rewrites the same file instead of adding a duplicate.
- nothing else: temporary files left by a killed job are deleted by the next run, and a
  final-named part that does not read back (damaged on disk) is moved aside to
  ``*.damaged`` with a warning and its images are done again.

Resume granularity: a finished part. A rerun reads the ``path`` column of every finished part
and skips those inputs (failed ones included: their record, with its ``error``, is written).
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from ..display import display_path
from ..errors import InputError

JOB_FILE = "_clip-rt-job.json"
JOB_FORMAT = 1
PART_PREFIX = "part-"
PART_SUFFIX = ".parquet"
TMP_MARK = ".tmp-"
DAMAGED_SUFFIX = ".damaged"
METADATA_KEY = b"clip_rt"
NODES_KEY = b"clip_rt_nodes"  # a part's footer: {node id: {"ip", "rows", "failed"}} of the nodes that computed it
# Columns the actors add for the sink, which counts them into NODES_KEY and drops them.
NODE_IP = "_node_ip"
NODE_ID = "_node_id"
# Columns every output has; classify adds LABEL_COLUMNS.
BASE_COLUMNS = ("path", "width", "height", "embedding", "error")
LABEL_COLUMNS = ("label", "score", "scores")


def _pa() -> Any:
    import pyarrow

    return pyarrow


def schema(identity: dict[str, Any]) -> Any:
    """The Arrow schema of a job's rows: embeddings and per-label scores as fixed-size lists
    (``embed_dim`` / number of labels wide), null where the image failed."""
    pa = _pa()
    fields = [
        pa.field("path", pa.string(), nullable=False),
        pa.field("width", pa.int32()),
        pa.field("height", pa.int32()),
        pa.field("embedding", pa.list_(pa.float32(), int(identity["embed_dim"]))),
        pa.field("error", pa.string()),
    ]
    if identity["kind"] == "classify":
        fields += [
            pa.field("label", pa.string()),
            pa.field("score", pa.float32()),
            pa.field("scores", pa.list_(pa.float32(), len(identity["labels"]))),
        ]
    return pa.schema(fields, metadata={METADATA_KEY: json.dumps(identity).encode()})


def identity(
    kind: str,
    manifest: Any,
    precision: str,
    labels: Optional[Sequence[str]] = None,
    label_spec: Any = None,
    templates: Sequence[str] = (),
    bundle_dir: Optional[str] = None,
) -> dict[str, Any]:
    """The job description; ``bundle_dir`` (where the driver loaded the model: search's default
    model) is recorded but a rerun from another directory with the same fingerprint is fine."""
    ident: dict[str, Any] = {
        "format": JOB_FORMAT,
        "kind": kind,
        "model": manifest.name,
        "fingerprint": manifest.fingerprint,
        "precision": precision,
        "embed_dim": int(manifest.embed_dim),
        "bundle_dir": bundle_dir,
    }
    if kind == "classify":
        ident.update({"labels": list(labels or []), "label_spec": label_spec, "templates": list(templates)})
        scoring = getattr(manifest, "scoring", "softmax")
        if scoring != "softmax":  # SigLIP: per-label sigmoid scores (absent: CLIP's softmax, as before)
            ident["scoring"] = scoring
    return ident


# -- the output folder ---------------------------------------------------------------------
def prepare_output(out: str, ident: dict[str, Any], *, overwrite: bool = False) -> None:
    """Create *out* or check that it holds this job; delete temporaries of a killed run.
    *overwrite*: delete the parts of whatever job was there and start over."""
    folder = Path(out)
    if folder.exists() and not folder.is_dir():
        raise InputError(f"output {display_path(out)!r} is a file; expected a folder for Parquet parts")
    folder.mkdir(parents=True, exist_ok=True)
    job = folder / JOB_FILE
    names = [p.name for p in folder.iterdir()]
    ours = [folder / n for n in names if _is_ours(n)]
    # The job description is the folder's marker: without it, only a folder that is empty (or
    # holds nothing but a killed first run's temporary description) is taken, so that files
    # of a folder clip-rt did not make -- even ones named part-*.parquet -- are never deleted,
    # moved aside or read as results.
    other = [n for n in names if not n.startswith(f".{JOB_FILE}{TMP_MARK}")]
    if job.is_symlink() or (job.exists() and not job.is_file()):
        raise InputError(
            f"output {display_path(out)!r}: its {JOB_FILE} is not a regular file; expected the job "
            "description clip-rt writes (use an empty or new folder)"
        )
    if other and not job.exists():
        raise InputError(
            f"output {display_path(out)!r} already holds files and is not a clip-rt job (no {JOB_FILE} "
            f"in it: {', '.join(repr(n) for n in sorted(other)[:3])}{'...' if len(other) > 3 else ''}); "
            "use an empty or new folder"
        )
    if job.exists() and not overwrite:
        stored = read_job(out)
        diffs = [k for k in ident if k not in ("label_spec", "bundle_dir") and stored.get(k) != ident[k]]
        if (
            stored.get("label_spec") != ident.get("label_spec")
            and "labels" not in diffs
            and ident["kind"] == "classify"
        ):
            diffs.append("label_spec")
        if diffs:
            detail = "; ".join(f"{k}: output has {stored.get(k)!r}, this run has {ident.get(k)!r}" for k in diffs)
            raise InputError(
                f"cannot resume {display_path(out)!r}: it was written by a different run ({detail}); "
                "use --overwrite to start over, or another output folder"
            )
    if overwrite:
        for p in ours:
            if p.is_file() or p.is_symlink():  # a folder of that name is not something we wrote
                p.unlink()
    else:
        for p in ours:
            if TMP_MARK in p.name:  # an unfinished part of a killed run: never a result
                p.unlink(missing_ok=True)
    _write_atomic(job, (json.dumps(ident, indent=1, ensure_ascii=False) + "\n").encode())


def _is_ours(name: str) -> bool:
    return name == JOB_FILE or name.startswith((PART_PREFIX, "." + PART_PREFIX, f".{JOB_FILE}"))


def read_job(out: str) -> dict[str, Any]:
    from ..inputs.bounded import LABELS_ENV, env_hint, labels_limit, read_limited

    path = Path(out) / JOB_FILE
    try:  # a regular file; it holds the labels and templates, so it follows the labels-file limit
        data = json.loads(
            read_limited(
                path, what=display_path(str(path)), limit=4 * labels_limit() + (1 << 20), hint=env_hint(LABELS_ENV)
            ).decode("utf-8")
        )
    except FileNotFoundError:
        raise InputError(f"{display_path(out)!r} is not a clip-rt Ray output: no {JOB_FILE} in it") from None
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise InputError(f"{display_path(str(path))!r} is damaged: not valid JSON ({exc})") from None
    if not isinstance(data, dict) or data.get("format") != JOB_FORMAT:
        got = data.get("format") if isinstance(data, dict) else type(data).__name__
        raise InputError(f"{display_path(str(path))!r}: job format {got!r}, this clip-rt reads {JOB_FORMAT}")
    return data


def is_job_dir(path: str) -> bool:
    return (Path(path) / JOB_FILE).is_file()


def finished_parts(out: str) -> list[Path]:
    """Final-named parts, sorted by name (the row order of :func:`read_column`)."""
    return sorted(p for p in Path(out).iterdir() if p.name.startswith(PART_PREFIX) and p.name.endswith(PART_SUFFIX))


def part_name(paths: Iterable[str]) -> str:
    h = hashlib.sha256("\0".join(paths).encode("utf-8", "surrogatepass")).hexdigest()[:24]
    return f"{PART_PREFIX}{h}{PART_SUFFIX}"


def write_part(out: str, table: Any, nodes: Optional[dict[str, dict[str, Any]]] = None) -> str:
    """Write *table* as one finished part: temporary file, fsync, rename. Returns its name.
    *nodes*: which nodes computed its rows, kept in the footer (:data:`NODES_KEY`)."""
    import pyarrow.parquet as pq

    name = part_name(table.column("path").to_pylist())
    if nodes:
        meta = dict(table.schema.metadata or {})
        meta[NODES_KEY] = json.dumps(nodes, sort_keys=True).encode()
        table = table.replace_schema_metadata(meta)
    final = Path(out) / name
    tmp = Path(out) / f".{name}{TMP_MARK}{uuid.uuid4().hex}"
    try:
        with open(tmp, "wb") as f:
            pq.write_table(table, f, compression="zstd")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_dir(out)
    return name


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}{TMP_MARK}{uuid.uuid4().hex}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _fsync_dir(folder: str) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# -- reading back --------------------------------------------------------------------------
def done_paths(out: str) -> set[str]:
    """The ``path`` of every row in the finished parts. A part that does not read back is
    moved aside (``*.damaged``) with a warning, so its images are done again."""
    import pyarrow.parquet as pq

    done: set[str] = set()
    for part in finished_parts(out):
        try:
            col = pq.read_table(part, columns=["path"]).column("path")
        except Exception as exc:  # noqa: BLE001 - pyarrow raises ArrowInvalid, OSError, ...: all mean "damaged"
            aside = part.with_name(part.name + DAMAGED_SUFFIX)
            os.replace(part, aside)
            warnings.warn(
                f"{display_path(str(part))}: not a readable Parquet file ({exc}); moved aside to "
                f"{aside.name}, its images will be done again",
                RuntimeWarning,
                stacklevel=2,
            )
            continue
        done.update(col.to_pylist())
    return done


@dataclass
class Summary:
    rows: int = 0
    failed: int = 0
    failed_examples: list[tuple[str, str]] = field(default_factory=list)  # (path, error), the first 10
    parts: int = 0
    nodes: dict[str, dict[str, Any]] = field(default_factory=dict)  # node id -> ip, rows, failed (parts that say)


def count_nodes(ips: Sequence[str], ids: Sequence[str], errors: Sequence[Optional[str]]) -> dict[str, dict[str, Any]]:
    """Rows (and failed rows) per node id, from the node columns of a block."""
    nodes: dict[str, dict[str, Any]] = {}
    for ip, node_id, error in zip(ips, ids, errors):
        entry = nodes.setdefault(node_id, {"ip": ip, "rows": 0, "failed": 0})
        entry["rows"] += 1
        entry["failed"] += error is not None
    return nodes


def add_nodes(total: dict[str, dict[str, Any]], more: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    for node_id, entry in more.items():
        into = total.setdefault(node_id, {"ip": entry.get("ip", "?"), "rows": 0, "failed": 0})
        into["rows"] += int(entry.get("rows", 0))
        into["failed"] += int(entry.get("failed", 0))
    return total


def part_nodes(schema_metadata: Optional[dict[bytes, bytes]]) -> dict[str, dict[str, Any]]:
    """The nodes a part's footer names (none for parts written without node columns)."""
    raw = (schema_metadata or {}).get(NODES_KEY)
    if raw is None:
        return {}
    try:
        data = json.loads(raw)
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def summarize(out: str, limit: int = 10) -> Summary:
    """Counts over every finished part (reads only the path and error columns, and the footer)."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    s = Summary()
    for part in finished_parts(out):
        t = pq.read_table(part, columns=["path", "error"])
        s.rows += t.num_rows
        s.parts += 1
        add_nodes(s.nodes, part_nodes(t.schema.metadata))
        bad = t.filter(pc.is_valid(t.column("error")))
        s.failed += bad.num_rows
        for path, err in zip(bad.column("path").to_pylist(), bad.column("error").to_pylist()):
            if len(s.failed_examples) < limit:
                s.failed_examples.append((path, err))
    return s


def read_table(out: str, columns: Optional[Sequence[str]] = None) -> Any:
    """Every finished part as one Arrow table, parts in name order (raises InputError if one is damaged)."""
    import pyarrow.parquet as pq

    pa = _pa()
    tables = []
    for part in finished_parts(out):
        try:
            tables.append(pq.read_table(part, columns=list(columns) if columns else None))
        except Exception as exc:  # noqa: BLE001 - any pyarrow failure means the part is damaged
            raise InputError(
                f"{display_path(str(part))}: not a readable Parquet part ({exc}); rerun the job "
                "to redo it (the damaged part is moved aside)"
            ) from None
    if not tables:
        ident = read_job(out)
        return schema(ident).empty_table() if columns is None else schema(ident).empty_table().select(list(columns))
    return pa.concat_tables(tables)
