"""Does a graph keep the contract its manifest describes? Checked once, when its session is
created (:meth:`clip_rt.model.ClipModel.session`), so that a graph that disagrees with the
manifest fails with the file named, before any input is read or any output file opened.

- before onnxruntime opens the graph: every external-data file it refers to is one the manifest
  lists for it (:func:`check_external_data`);
- after: input and output names, element types and the static dimensions agree with the
  manifest (image size, context length, embedding width, float outputs);
- the text graph embeds the largest token id the manifest allows (``vocab_size - 1``): a graph
  with a smaller vocabulary fails here, not on the first rare word. The image graph is run once
  only when its input or output size is not fixed in the graph.
"""

from __future__ import annotations

import posixpath
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..bundle.manifest import (
    IMAGE_INPUT,
    IMAGE_OUTPUT,
    TEXT_INPUT,
    TEXT_OUTPUT,
    GraphEntry,
    Manifest,
    check_confined,
    display,
)
from ..bundle.onnx_refs import GraphFormatError, external_data_locations
from ..errors import BundleError
from .session import OrtSession, ort_graph_errors, ort_reason


def check_external_data(bundle_dir: Path, graph: GraphEntry) -> None:
    """BundleError unless every external-data location in *graph*'s file is one of the files
    the manifest lists as its ``external_data`` (and so has a checksum and stays inside)."""
    path = Path(bundle_dir) / graph.file
    try:
        locations = external_data_locations(check_confined(Path(bundle_dir), graph.file))
    except GraphFormatError as exc:
        raise BundleError(f"{path}: not a valid ONNX graph ({exc})") from None
    except (OSError, ValueError) as exc:  # unreadable; mmap of an odd file
        raise BundleError(f"{path}: cannot read the graph ({getattr(exc, 'strerror', None) or exc})") from None
    listed = set(graph.external_data)
    folder = posixpath.dirname(graph.file)
    for location in locations:
        # onnxruntime resolves a location against the graph's own folder.
        name = posixpath.normpath(posixpath.join(folder, location)) if location else location
        if location.startswith("/") or name.startswith("../") or name not in listed:
            raise BundleError(
                f"{path}: refers to external data {display(location)!r}, which the manifest does not "
                f"list for this graph (listed: {', '.join(sorted(listed)) or 'none'}); refusing to load "
                "weights that have no checksum"
            )


def _dims(meta: Any) -> list[Any]:
    return list(meta.shape) if isinstance(meta.shape, (list, tuple)) else []


def check_session(session: Any, encoder: str, manifest: Manifest) -> None:
    """BundleError naming the graph file if *session* (an onnxruntime session, or any backend of
    clip_rt.engine.backends) disagrees with *manifest*."""
    if not hasattr(session, "inference_session"):  # another backend (OpenVINO): its own I/O names
        _check_backend(session, encoder, manifest)
        return
    ort = session.inference_session
    name = session.path
    want_in, want_out, in_type = (
        (IMAGE_INPUT, IMAGE_OUTPUT, "tensor(float)")
        if encoder == "image"
        else (TEXT_INPUT, TEXT_OUTPUT, "tensor(int64)")
    )
    inputs, outputs = list(ort.get_inputs()), list(ort.get_outputs())
    if [i.name for i in inputs] != [want_in] or want_out not in [o.name for o in outputs]:
        raise BundleError(
            f"{name}: expected input {want_in!r} and output {want_out!r}, found inputs "
            f"{[i.name for i in inputs]} and outputs {[o.name for o in outputs]}"
        )
    inp = inputs[0]
    out = next(o for o in outputs if o.name == want_out)
    if inp.type != in_type:
        raise BundleError(f"{name}: input {want_in!r} is {inp.type}, the bundle format needs {in_type}")
    if out.type != "tensor(float)":
        raise BundleError(
            f"{name}: output {want_out!r} is {out.type}, the bundle format needs tensor(float) (float32 embeddings)"
        )
    in_dims, out_dims = _dims(inp), _dims(out)
    _check_rank(name, want_in, in_dims, 4 if encoder == "image" else 2)
    _check_rank(name, want_out, out_dims, 2)
    if isinstance(out_dims[1], int) and out_dims[1] != manifest.embed_dim:
        raise BundleError(
            f"{name}: output {want_out!r} has {out_dims[1]} values per row, the manifest's "
            f"embed_dim is {manifest.embed_dim}"
        )
    if encoder == "image":
        _check_image(session, in_dims, out_dims, manifest)
    else:
        _check_text(session, in_dims, manifest)


def _check_rank(name: Path, tensor: str, dims: Sequence[Any], rank: int) -> None:
    if len(dims) != rank:
        raise BundleError(f"{name}: {tensor!r} has {len(dims)} dimensions {dims}, expected {rank}")


def _check_image(session: OrtSession, dims: list[Any], out_dims: list[Any], manifest: Manifest) -> None:
    height, width = manifest.image.size
    for axis, want, what in ((1, 3, "channels"), (2, height, "height"), (3, width, "width")):
        if isinstance(dims[axis], int) and dims[axis] != want:
            raise BundleError(
                f"{session.path}: input {IMAGE_INPUT!r} has shape {dims}; the manifest's image "
                f"{what} is {want} (image.size {list(manifest.image.size)})"
            )
    if all(isinstance(d, int) for d in (dims[2], dims[3], out_dims[1])):
        return  # everything the manifest says is fixed in the graph: nothing left to try
    _probe(
        session,
        IMAGE_INPUT,
        np.zeros((1, 3, height, width), np.float32),
        manifest,
        f"a 1x3x{height}x{width} input (image.size {list(manifest.image.size)})",
    )


def _check_text(session: OrtSession, dims: list[Any], manifest: Manifest) -> None:
    text = manifest.text
    length = dims[1]
    if isinstance(length, int):
        if length != text.context_length:
            raise BundleError(
                f"{session.path}: input {TEXT_INPUT!r} takes {length} tokens, the manifest's "
                f"text.context_length is {text.context_length}"
            )
        if text.dynamic_sequence:
            raise BundleError(
                f"{session.path}: the manifest says text.dynamic_sequence, but input "
                f"{TEXT_INPUT!r} has a fixed length of {length} tokens"
            )
    top = text.vocab_size - 1
    _probe(
        session, TEXT_INPUT, _probe_ids(text), manifest, f"token ids up to {top} (text.vocab_size {text.vocab_size})"
    )


def _probe_ids(text: Any) -> np.ndarray:
    """One row with the largest id the manifest allows, between the special ids the tokenizer
    has (a Hugging Face tokenizer may have no SOT), padded unless the sequence is dynamic."""
    top = text.vocab_size - 1
    ids = [i for i in (text.sot_token_id, top, text.eot_token_id) if i is not None]
    if len(ids) > text.context_length:  # context 2: no room for SOT
        ids = ids[1:]
    row = ids if text.dynamic_sequence else ids + [text.pad_token_id] * (text.context_length - len(ids))
    return np.array([row], np.int64)


def _probe(session: OrtSession, input_name: str, feed: np.ndarray, manifest: Manifest, what: str) -> None:
    import onnxruntime

    quiet = onnxruntime.RunOptions()
    quiet.log_severity_level = 4  # the failure is reported below, in one line; not also by onnxruntime's log
    try:
        result = session.inference_session.run(None, {input_name: feed}, quiet)
    except ort_graph_errors() as exc:
        raise BundleError(
            f"{session.path}: the graph fails on {what} ({ort_reason(exc)}); it does not match its manifest"
        ) from None
    out = np.asarray(result[session.output_names.index(IMAGE_OUTPUT if input_name == IMAGE_INPUT else TEXT_OUTPUT)])
    if out.shape != (1, manifest.embed_dim) or out.dtype != np.float32:
        raise BundleError(
            f"{session.path}: on {what} the graph gave {out.dtype} {tuple(out.shape)}, expected "
            f"float32 (1, {manifest.embed_dim}) (embed_dim)"
        )


def _check_backend(backend: Any, encoder: str, manifest: Manifest) -> None:
    """The same contract through the backend's own ``run``: names, then one probe (the image
    size, the largest token id) whose output must be float32 (1, embed_dim)."""
    want_in, want_out = (IMAGE_INPUT, IMAGE_OUTPUT) if encoder == "image" else (TEXT_INPUT, TEXT_OUTPUT)
    name = backend.path
    if list(backend.input_names) != [want_in] or want_out not in backend.output_names:
        raise BundleError(
            f"{name}: expected input {want_in!r} and output {want_out!r}, found inputs "
            f"{list(backend.input_names)} and outputs {list(backend.output_names)}"
        )
    if encoder == "image":
        height, width = manifest.image.size
        feed = np.zeros((1, 3, height, width), np.float32)
        what = f"a 1x3x{height}x{width} input (image.size {list(manifest.image.size)})"
    else:
        text = manifest.text
        top = text.vocab_size - 1
        feed = _probe_ids(text)
        what = f"token ids up to {top} (text.vocab_size {text.vocab_size})"
    try:
        probe = getattr(backend, "probe", backend.run)  # through what the job compiled (OpenVINO)
        result = probe({want_in: feed})
    except RuntimeError as exc:  # OpenVINO reports shape and type errors as RuntimeError
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise BundleError(f"{name}: the graph fails on {what} ({first}); it does not match its manifest") from None
    out = np.asarray(result[list(backend.output_names).index(want_out)])
    if out.shape != (1, manifest.embed_dim) or out.dtype != np.float32:
        raise BundleError(
            f"{name}: on {what} the graph gave {out.dtype} {tuple(out.shape)}, expected "
            f"float32 (1, {manifest.embed_dim}) (embed_dim)"
        )
