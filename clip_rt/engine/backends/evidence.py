"""Parity evidence for modes that have no graph of their own (OpenVINO's bf16 hint on the fp32
graph, or on the int8 graph, whose float parts then run in bf16): such a mode is a default only
once it has been shown to agree with the fp32 graph.

The check runs the bundle's fp32 graph on onnxruntime (the graph whose parity with torch the
export measured) and the candidate on the export's own sample inputs (the procedural scenes and
prompts of ``clip_rt_export.sample_inputs``, drawn with numpy and PIL only), and compares the
embeddings against a gate: :data:`GATE` (the gate the export applies to fp16) for the fp32
graph in bf16, the export's own int8 gate of that encoder for the int8 graph in bf16. Verdicts
are cached in ``$CLIP_RT_HOME/cache/derived_parity.json``, keyed by bundle fingerprint, encoder,
backend and its version, mode (``bf16``, ``int8+bf16``) and CPU class, so it runs once per
bundle and machine kind.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional

import numpy as np

if TYPE_CHECKING:
    from ...bundle.manifest import Manifest
    from ...inputs.tokenizer import TextTokenizer

GATE = {"min_cosine": 0.999}
CACHE_NAME = "derived_parity.json"
_lock = threading.Lock()


def cache_path() -> Path:
    from ...bundle.store import cache_dir

    return cache_dir() / CACHE_NAME


def evidence_key(fingerprint: str, encoder: str, backend: str, version: str, precision: str, isa_class: str) -> str:
    return f"{fingerprint}:{encoder}:{backend}-{version}:{precision}:{isa_class}"


def read_cache(path: Optional[Path] = None) -> dict[str, Any]:
    from ...errors import ClipRtError
    from ...inputs.bounded import read_limited

    path = path or cache_path()
    try:  # a regular file of at most 16 MB (not a FIFO or device put there)
        data = json.loads(read_limited(path, what=str(path), limit=16 << 20).decode("utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError, ClipRtError):  # damaged: the checks simply run again and rewrite it
        return {}
    return data if isinstance(data, dict) else {}


def _write_cache(key: str, record: dict[str, Any], path: Optional[Path] = None) -> None:
    path = path or cache_path()
    with _lock:
        data = read_cache(path)
        data[key] = record
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.{os.getpid()}-{threading.get_ident()}.tmp")
            tmp.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n", encoding="utf-8")
            os.replace(tmp, path)
        except OSError:  # a read-only home: the verdict holds for this process only
            pass


def sample_inputs(manifest: Manifest, encoder: str, tokenizer: Optional[TextTokenizer] = None) -> np.ndarray:
    """The export's sample inputs for *encoder*, prepared as the runtime prepares its inputs:
    preprocessed scenes (image), or token ids cut to the longest prompt when the text graph
    takes a dynamic sequence (text; needs the bundle's *tokenizer*)."""
    from clip_rt_export.sample_inputs import PROMPTS, sample_images

    if encoder == "image":
        from ...inputs.preprocess import Preprocessor

        pre = Preprocessor(manifest.image)
        return np.stack([pre(img) for img in sample_images()]).astype(np.float32)
    if tokenizer is None:  # a caller's mistake, not the user's
        raise ValueError("the text encoder's sample inputs need the bundle's tokenizer")
    tokens = tokenizer.encode_batch(list(PROMPTS))
    ids = tokens.ids
    if manifest.text.dynamic_sequence:
        ids = np.ascontiguousarray(ids[:, : int(tokens.lengths.max())])
    return ids


def compare(candidate: np.ndarray, reference: np.ndarray) -> dict[str, float]:
    a, b = candidate.astype(np.float64), reference.astype(np.float64)
    cos = (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))
    return {"min_cosine": float(cos.min()), "max_abs_diff": float(np.abs(a - b).max())}


def load_reference(path: Path, encoder: str, rows: int, dim: int) -> np.ndarray:
    """The stored fp32 embeddings of *encoder* (``parity_reference.npz``; already verified against
    the manifest's checksum), (rows, dim) float32, or BundleError: nothing but plain arrays is
    read (no pickle), and an entry's declared size is checked before it is decompressed."""
    import zipfile

    from ...errors import BundleError

    want = rows * dim * 4
    try:
        with zipfile.ZipFile(path) as archive:
            info = archive.getinfo(f"{encoder}.npy")
            if info.file_size > want + 4096:  # the array plus its .npy header
                raise BundleError(
                    f"{path}: {encoder}.npy holds {info.file_size} bytes, more than {rows} x {dim} float32 embeddings"
                )
        with np.load(path, allow_pickle=False) as data:
            array = np.asarray(data[encoder])
    except BundleError:
        raise
    except (OSError, KeyError, ValueError, zipfile.BadZipFile) as exc:
        raise BundleError(f"{path}: not a parity reference of {encoder} embeddings ({exc})") from None
    if array.dtype != np.float32 or array.shape != (rows, dim):
        raise BundleError(
            f"{path}: {encoder} embeddings of {array.dtype} {array.shape}, expected float32 ({rows}, {dim})"
        )
    return array


def check(
    key: str,
    run_candidate: Callable[[np.ndarray], np.ndarray],
    run_reference: Optional[Callable[[np.ndarray], np.ndarray]],
    make_inputs: Callable[[], np.ndarray],
    *,
    cache: Optional[Path] = None,
    gate: Optional[dict[str, float]] = None,
    reference: Optional[np.ndarray] = None,
    against: str = "onnxruntime fp32 graph",
) -> dict[str, Any]:
    """The cached verdict for *key*, or a new one measured on ``make_inputs()`` (batches of 8),
    against *gate* (default :data:`GATE`): the candidate's embeddings compared with *reference*
    (stored fp32 embeddings of the same inputs) or with ``run_reference``'s."""
    gate = dict(gate or GATE)
    known = read_cache(cache).get(key)
    if isinstance(known, dict) and isinstance(known.get("passed"), bool):
        return {**known, "cached": True}
    inputs = make_inputs()
    cand = np.concatenate([run_candidate(inputs[i : i + 8]) for i in range(0, len(inputs), 8)])
    if reference is not None:
        if len(reference) != len(inputs):
            from ...errors import BundleError

            raise BundleError(
                f"the stored fp32 embeddings have {len(reference)} rows for {len(inputs)} sample "
                "inputs: the bundle was exported by another clip-rt; export it again"
            )
        ref = reference
    else:
        if run_reference is None:
            raise ValueError("check() needs run_reference or reference")
        ref = np.concatenate([run_reference(inputs[i : i + 8]) for i in range(0, len(inputs), 8)])
    fig = compare(cand, ref)
    record = {
        **fig,
        "samples": int(len(inputs)),
        "gate": gate,
        "passed": fig["min_cosine"] >= gate["min_cosine"],
        "reference": against,
        "inputs": "export sample inputs (clip_rt_export.sample_inputs)",
        "measured": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    _write_cache(key, record, cache)
    return {**record, "cached": False}
