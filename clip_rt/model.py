"""``load()`` and :class:`ClipModel`: embeddings, similarity and zero-shot classification.

Sessions are created on first use, per encoder: text-only use never reads the image graph.
The files an encoder uses are checked against the manifest's sha256 before its session is
created; a successful check is remembered by (path, size, mtime_ns) so that later loads do
not hash hundreds of megabytes again.
"""
from __future__ import annotations

import os
import threading
import warnings
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional, Sequence, Union

import numpy as np

from . import templates as _templates
from .errors import BundleError, ClipRtError, InputError
from .bundle.manifest import IMAGE_INPUT, IMAGE_OUTPUT, TEXT_INPUT, TEXT_OUTPUT, Manifest, read_manifest
from .engine.session import CPU, CUDA, OrtSession, available_providers, provider_name, resolve_providers
from .bundle.store import resolve_bundle
from .bundle.verify import verify_bundle_files
from .zeroshot import (
    Classification,
    LabelsArg,
    ZeroShotClassifier,
    check_templates,
    class_embeddings,
    parse_labels,
    softmax,
)

DEFAULT_TEXT_BATCH = 64
# Images per batch on the CPU: batch 8 measured 2x the throughput of 32 on a 2-core CPU and
# less peak memory (bench/results, docs/bench.md). Pass a larger batch_size for a GPU.
DEFAULT_IMAGE_BATCH = 8


@dataclass
class ImageEmbedding:
    """One item of :meth:`ClipModel.iter_images`: an embedding, or the reason there is none."""

    index: int
    source: Any  # as given (a path stays a path)
    embedding: Optional[np.ndarray]
    width: Optional[int] = None
    height: Optional[int] = None
    error: Optional[str] = None
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_dict(self) -> dict[str, Any]:
        src = self.source
        return {
            "index": self.index,
            "source": os.fspath(src) if isinstance(src, (str, os.PathLike)) else f"<{type(src).__name__}>",
            "embedding": None if self.embedding is None else self.embedding.tolist(),
            "width": self.width, "height": self.height, "error": self.error, "notes": list(self.notes),
        }


@dataclass
class PreprocessedImage:
    """One image ready for :meth:`ClipModel.encode_pixels`: ``pixels`` float32 ``(3, H, W)``, and
    the image's size after EXIF orientation (before any resizing)."""

    pixels: np.ndarray
    width: int
    height: int
    notes: list[str] = field(default_factory=list)


@dataclass
class _Decoded:
    index: int
    source: Any
    pixels: Optional[np.ndarray]  # (3, H, W)
    width: Optional[int]
    height: Optional[int]
    error: Optional[BaseException]
    notes: list[str]


def load(
    name_or_path: Union[str, "os.PathLike[str]"],
    *,
    providers: Union[str, Sequence[str], None] = None,
    precision: Optional[str] = None,
    threads: Optional[int] = None,
    session_options: Any = None,
    cache: Union[bool, str] = True,
    verify: bool = True,
    exif_transpose: bool = True,
    strict: bool = False,
    draft: bool = False,
    allow_fallback: bool = False,
    provider_options: Optional[dict[str, dict[str, Any]]] = None,
) -> "ClipModel":
    """Load a bundle by store name, alias (``ViT-B/32``) or directory.

    *providers*: ``["cuda", "cpu"]``, ``["cuda:1"]``, ``"cpu"``, ``"cuda,cpu"``...; default CUDA
    when available, else CPU.
    A named provider that is missing or does not come up raises ProviderError unless
    *allow_fallback*. *precision*: ``fp32`` | ``fp16`` | ``int8``; default fp16 when CUDA comes
    first and the bundle has it, else fp32; when CUDA then falls back to the CPU (automatic choice,
    or *allow_fallback*), the CPU default is used instead, before any embedding is computed.
    *cache*: True (SQLite + memory), ``"memory"``, or False (every prompt is encoded). *verify*: check the sha256 of the files used.
    *provider_options*: per provider, e.g. ``{"cuda": {"cudnn_conv_algo_search": "HEURISTIC"}}``
    (docs/gpu.md).
    """
    bundle_dir = resolve_bundle(name_or_path)
    manifest = read_manifest(bundle_dir)
    return ClipModel(bundle_dir, manifest, providers=providers, precision=precision, threads=threads,
                     session_options=session_options, cache=cache, verify=verify,
                     exif_transpose=exif_transpose, strict=strict, draft=draft, allow_fallback=allow_fallback,
                     provider_options=provider_options)


def default_precision(manifest: Manifest, first_provider: str) -> str:
    have = manifest.precisions
    if not have:
        raise BundleError(f"bundle {manifest.name!r} lists no graphs")
    if first_provider == CUDA and "fp16" in have:
        return "fp16"
    return "fp32" if "fp32" in have else have[0]


class ClipModel:
    """A loaded bundle. Thread-safe: sessions are created once, ONNX Runtime runs concurrently."""

    def __init__(self, bundle_dir: Path, manifest: Manifest, *, providers: Union[str, Sequence[str], None] = None,
                 precision: Optional[str] = None, threads: Optional[int] = None, session_options: Any = None,
                 cache: Union[bool, str] = True, verify: bool = True, exif_transpose: bool = True,
                 strict: bool = False, draft: bool = False, allow_fallback: bool = False,
                 provider_options: Optional[dict[str, dict[str, Any]]] = None) -> None:
        self.bundle_dir = Path(bundle_dir)
        self.manifest = manifest
        if isinstance(providers, str):  # "cpu" is one provider, not ["c", "p", "u"]; "cuda,cpu" as in the CLI
            providers = [p for p in providers.split(",") if p.strip()]
        self._requested = list(providers) if providers else None
        # Resolved now so that a missing provider fails at load, not at the first image.
        self._entries = resolve_providers(self._requested, available_providers())
        if precision is not None and not isinstance(precision, str):
            raise InputError(f"precision must be a string such as 'fp32', got {type(precision).__name__}")
        self.precision = precision.lower() if precision else default_precision(manifest, provider_name(self._entries[0]))
        # A defaulted precision follows the provider; it is only known once a session came up on
        # CUDA (or fell back to the CPU). Until then nothing may be computed or cached with it.
        self._precision_settled = not (precision is None and provider_name(self._entries[0]) == CUDA)
        if self.precision not in manifest.precisions:
            raise BundleError(f"bundle {manifest.name!r} has no {self.precision!r} graphs; it has: "
                              f"{', '.join(manifest.precisions)}")
        for encoder in ("image", "text"):
            manifest.graph(self.precision, encoder)  # both must exist, even if only one is used
        if cache not in (True, False, "memory"):
            raise InputError(f"cache must be True, False or 'memory', got {cache!r}")
        if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
            raise InputError(f"threads must be a positive integer, got {threads!r}")
        self._threads = threads
        self._session_options = session_options
        self._verify = verify
        self._allow_fallback = allow_fallback
        self._provider_options = provider_options
        self._cache_mode = cache
        self._exif_transpose, self._strict, self._draft = exif_transpose, strict, draft
        self._lock = threading.RLock()
        self._sessions: dict[str, OrtSession] = {}
        self._tokenizer_obj: Any = None
        self._preprocessor_obj: Any = None
        self._cache_obj: Any = None

    # -- properties -------------------------------------------------------------
    @property
    def embed_dim(self) -> int:
        return self.manifest.embed_dim

    @property
    def logit_scale(self) -> float:
        return self.manifest.logit_scale

    @property
    def logit_bias(self) -> Optional[float]:
        return self.manifest.logit_bias

    @property
    def providers(self) -> list[str]:
        """The providers the sessions run on; before the first session exists, those requested."""
        with self._lock:
            for session in self._sessions.values():
                return list(session.providers)
        return [provider_name(e) for e in self._entries]

    def __repr__(self) -> str:
        return f"ClipModel({self.manifest.name!r}, precision={self.precision!r}, providers={self.providers})"

    # -- lazy parts ---------------------------------------------------------------
    def session(self, encoder: str) -> OrtSession:
        """The ONNX Runtime session of ``"image"`` or ``"text"`` (created and verified on first use)."""
        with self._lock:
            if encoder not in self._sessions:
                sess = self._open_session(encoder)
                if not self._precision_settled:
                    if sess.fell_back and CUDA not in sess.providers:
                        sess = self._fall_back_to_cpu_precision(encoder, sess)
                    self._precision_settled = True
                want_in, want_out = (IMAGE_INPUT, IMAGE_OUTPUT) if encoder == "image" else (TEXT_INPUT, TEXT_OUTPUT)
                if sess.input_names != [want_in] or want_out not in sess.output_names:
                    raise BundleError(f"{sess.path.name}: expected input {want_in!r} and output {want_out!r}, "
                                      f"found inputs {sess.input_names} and outputs {sess.output_names}")
                self._sessions[encoder] = sess
            return self._sessions[encoder]

    def _open_session(self, encoder: str) -> OrtSession:
        graph = self.manifest.graph(self.precision, encoder)
        self._check_files([graph.file, *graph.external_data])
        return OrtSession(self.bundle_dir / graph.file, self._requested, intra_op_threads=self._threads,
                          session_options=self._session_options, allow_fallback=self._allow_fallback,
                          options=self._provider_options)

    def _fall_back_to_cpu_precision(self, encoder: str, sess: OrtSession) -> OrtSession:
        """CUDA came up on the CPU: the defaulted precision (fp16) was chosen for CUDA and is slow
        on the CPU, so the CPU's default precision is used instead."""
        cpu_precision = default_precision(self.manifest, CPU)
        if cpu_precision == self.precision:
            return sess
        warnings.warn(f"{self.manifest.name}: using the {cpu_precision} graphs instead of {self.precision} "
                      "(the default for CUDA) since the session runs on the CPU", RuntimeWarning, stacklevel=3)
        self.precision = cpu_precision
        return self._open_session(encoder)

    def _check_files(self, names: list[str]) -> None:
        if self._verify:
            verify_bundle_files(self.bundle_dir, self.manifest, names)
            return
        for name in names:
            if not (self.bundle_dir / name).is_file():
                raise BundleError(f"{self.bundle_dir}: {name} is missing (listed in the manifest)")

    def _tokenizer(self) -> Any:
        with self._lock:
            if self._tokenizer_obj is None:
                from .inputs.tokenizer import ClipTokenizer

                self._check_files([self.manifest.text.tokenizer_file])
                path = self.bundle_dir / self.manifest.text.tokenizer_file
                self._tokenizer_obj = ClipTokenizer.from_file(path, self.manifest.text)
            return self._tokenizer_obj

    def _preprocessor(self) -> Any:
        with self._lock:
            if self._preprocessor_obj is None:
                from .inputs.preprocess import Preprocessor

                self._preprocessor_obj = Preprocessor(self.manifest.image, exif_transpose=self._exif_transpose,
                                                      strict=self._strict, draft=self._draft)
            return self._preprocessor_obj

    def _cache(self) -> Any:
        if not self._precision_settled and self._cache_mode:
            self.session("text")  # the cache is keyed by precision, which a CPU fallback changes
        with self._lock:
            if self._cache_obj is None and self._cache_mode:
                from .engine.prompt_cache import PromptCache

                self._cache_obj = PromptCache(self.manifest.fingerprint, self.precision, dim=self.embed_dim,
                                              persistent=self._cache_mode is True)
            return self._cache_obj

    def release(self, encoder: str) -> None:
        """Free an encoder's session (its weights and arena); it is re-created on next use.
        A folder classify needs the text graph only to build the class embeddings."""
        with self._lock:
            self._sessions.pop(encoder, None)

    def close(self) -> None:
        """Release the prompt cache's database connection (sessions are freed with the model)."""
        with self._lock:
            if self._cache_obj is not None:
                self._cache_obj.close()

    # -- text ---------------------------------------------------------------------
    def encode_text(self, texts: Union[str, Sequence[str]], batch_size: int = DEFAULT_TEXT_BATCH) -> np.ndarray:
        """(N, D) float32 L2-normalised embeddings; repeated prompts come from the cache."""
        items = [texts] if isinstance(texts, str) else list(texts)
        _check_batch_size(batch_size)
        for t in items:
            if not isinstance(t, str):
                raise InputError(f"texts must be strings, got {type(t).__name__}: {t!r}")
        if not items:
            return np.zeros((0, self.embed_dim), dtype=np.float32)
        unique = list(dict.fromkeys(items))
        cache = self._cache()
        found = cache.get_many(unique) if cache is not None else {}
        missing = [t for t in unique if t not in found]
        if missing:
            new = self._encode_uncached(missing, batch_size)
            if cache is not None:
                cache.put_many(new)
            found.update(new)
        return np.stack([found[t] for t in items]).astype(np.float32, copy=False)

    def _encode_uncached(self, texts: list[str], batch_size: int) -> dict[str, np.ndarray]:
        tokens = self._tokenizer().encode_batch(texts)
        message = tokens.truncation_message(texts)
        if message:
            warnings.warn(message, UserWarning, stacklevel=3)  # one warning per call
        ids, lengths = tokens.ids, tokens.lengths
        session = self.session("text")
        dynamic = self.manifest.text.dynamic_sequence
        # Sorting by length groups prompts of similar size, so slicing drops the most padding.
        order = np.argsort(lengths, kind="stable") if dynamic else np.arange(len(texts))
        out = np.empty((len(texts), self.embed_dim), dtype=np.float32)
        for start in range(0, len(texts), batch_size):
            rows = order[start:start + batch_size]
            chunk = ids[rows]
            if dynamic:
                chunk = np.ascontiguousarray(chunk[:, :int(lengths[rows].max())])
            out[rows] = session.run({TEXT_INPUT: chunk})[0]
        return {t: out[i] for i, t in enumerate(texts)}

    # -- images -------------------------------------------------------------------
    def encode_image(self, images: Any, batch_size: int = DEFAULT_IMAGE_BATCH) -> np.ndarray:
        """(N, D) float32 L2-normalised embeddings; raises on the first image that cannot be read."""
        items = _as_image_list(images)
        out = np.empty((len(items), self.embed_dim), dtype=np.float32)
        for item in self._iter(items, batch_size, raise_errors=True):
            out[item.index] = item.embedding
        return out

    def encode_pixels(self, pixel_values: Any, output: str = "numpy") -> Any:
        """Embeddings of one preprocessed batch, (N, 3, H, W) float32 (numpy, or an OrtValue
        already on the device). *output* ``"numpy"``: a host array; ``"ortvalue"``: an
        ``onnxruntime.OrtValue`` left on the session's device (IO binding, no host round trip)."""
        if output not in ("numpy", "ortvalue"):
            raise InputError(f"output must be 'numpy' or 'ortvalue', got {output!r}")
        if isinstance(pixel_values, np.ndarray) and (pixel_values.ndim != 4 or pixel_values.dtype != np.float32):
            raise InputError(f"pixel_values must be float32 (N, 3, H, W), got {pixel_values.dtype} {pixel_values.shape}")
        session = self.session("image")
        if output == "numpy":
            if not isinstance(pixel_values, np.ndarray):
                return session.run_binding({IMAGE_INPUT: pixel_values}, "cpu")[0].numpy()
            return session.run({IMAGE_INPUT: pixel_values})[0]
        return session.run_binding({IMAGE_INPUT: pixel_values})[0]

    def preprocess(self, source: Any) -> PreprocessedImage:
        """Decode and preprocess one image exactly as :meth:`encode_image` does (this model's EXIF,
        draft and strict settings, PIL's pixel limit). Raises ImageLoadError or InputError.
        Thread-safe: for callers that decode on their own threads and batch the pixels through
        :meth:`encode_pixels` themselves (``clip-rt serve``)."""
        decoded = self._decode(0, source)
        if decoded.error is not None:
            raise decoded.error
        return PreprocessedImage(decoded.pixels, decoded.width, decoded.height, decoded.notes)  # type: ignore[arg-type]

    def iter_images(self, sources: Iterable[Any], batch_size: int = DEFAULT_IMAGE_BATCH, *,
                    workers: Optional[int] = None) -> Iterator[ImageEmbedding]:
        """Embeddings in input order, one per source; an unreadable image yields an item with
        ``error`` set and the stream goes on. *sources* may be a generator: at most about
        ``2 * batch_size`` images are decoded ahead, in *workers* threads, while the previous
        batch runs through the model."""
        return self._iter(sources, batch_size, raise_errors=False, workers=workers)

    def _decode(self, index: int, source: Any) -> _Decoded:
        pre = self._preprocessor()
        try:
            loaded = pre.load(source)  # with the model's EXIF and draft settings
            pixels = pre(loaded)
        except ClipRtError as exc:  # unreadable image, bad array: reported on this item only
            return _Decoded(index, source, None, None, None, exc, [])
        except MemoryError:
            raise
        except Exception as exc:  # a decoder quirk no one listed: still this item's error, not the stream's
            from .inputs.images import unexpected_load_error

            return _Decoded(index, source, None, None, None, unexpected_load_error(source, exc), [])
        return _Decoded(index, source, pixels, loaded.width, loaded.height, None, list(loaded.notes))

    def _iter(self, sources: Iterable[Any], batch_size: int, *, raise_errors: bool,
              workers: Optional[int] = None) -> Iterator[ImageEmbedding]:
        _check_batch_size(batch_size)
        if workers is None:
            workers = min(4, os.cpu_count() or 1)
        session = self.session("image")  # fail before reading any image
        self._preprocessor()
        return self._pipeline(iter(sources), session, batch_size, raise_errors, workers)

    def _pipeline(self, sources: Iterator[Any], session: OrtSession, batch_size: int, raise_errors: bool,
                  workers: int) -> Iterator[ImageEmbedding]:
        ahead = 2 * batch_size
        pending: deque[Future[_Decoded]] = deque()
        batch: list[_Decoded] = []
        next_index = 0
        exhausted = False
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="clip-rt-decode") as pool:
            try:
                while True:
                    while not exhausted and len(pending) < ahead:
                        try:
                            source = next(sources)
                        except StopIteration:
                            exhausted = True
                            break
                        pending.append(pool.submit(self._decode, next_index, source))
                        next_index += 1
                    if not pending:
                        break
                    item = pending.popleft().result()
                    if item.error is not None and raise_errors:
                        raise item.error
                    batch.append(item)
                    if len(batch) >= batch_size:
                        yield from self._run_batch(session, batch)
                        batch = []
                if batch:
                    yield from self._run_batch(session, batch)
            finally:
                for fut in pending:  # the consumer stopped early, or an error is propagating
                    fut.cancel()

    @staticmethod
    def _run_batch(session: OrtSession, batch: list[_Decoded]) -> Iterator[ImageEmbedding]:
        good = [d for d in batch if d.pixels is not None]
        embs = session.run({IMAGE_INPUT: np.stack([d.pixels for d in good])})[0] if good else None
        row = 0
        for d in batch:
            emb = None
            if d.pixels is not None:
                emb, row = embs[row], row + 1  # type: ignore[index]
            yield ImageEmbedding(index=d.index, source=d.source, embedding=emb, width=d.width, height=d.height,
                                 error=None if d.error is None else str(d.error), notes=d.notes)

    # -- similarity and zero-shot ---------------------------------------------------
    def similarity(self, images: Any, texts: Union[str, Sequence[str]], batch_size: int = DEFAULT_IMAGE_BATCH) -> np.ndarray:
        """Probabilities over *texts*: ``softmax(logit_scale * cos)``; shape (T,) for one image,
        (N, T) for a list."""
        single = _is_single_source(images)
        text_list = [texts] if isinstance(texts, str) else list(texts)
        if not text_list:
            raise InputError("no texts given: expected at least one")
        img = self.encode_image(images, batch_size=batch_size)
        probs = softmax(self.logit_scale * (img @ self.encode_text(text_list).T))
        return probs[0] if single else probs

    def classifier(self, labels: LabelsArg, templates: Union[str, Sequence[str]] = _templates.SIMPLE) -> ZeroShotClassifier:
        """A classifier with the class embeddings computed once (prompt ensembles, cached)."""
        parsed = parse_labels(labels)
        temps = check_templates(templates)
        embs = class_embeddings(parsed, temps, self.encode_text)
        return ZeroShotClassifier(parsed, embs, self.logit_scale, self.logit_bias, temps)

    def classify(self, images: Any, labels: LabelsArg, templates: Union[str, Sequence[str]] = _templates.SIMPLE,
                 top_k: int = 5, batch_size: int = DEFAULT_IMAGE_BATCH) -> list[Classification]:
        """One :class:`Classification` per image; raises on the first unreadable image.

        With the prompt cache on, the text session is freed once the class embeddings exist
        (the next call finds them in the cache): a folder then peaks at the image graph's
        memory alone (docs/bench.md)."""
        clf = self.classifier(labels, templates)
        if self._cache_mode:
            self.release("text")
        return clf.classify_embeddings(self.encode_image(images, batch_size=batch_size), top_k=top_k)


def _check_batch_size(batch_size: int) -> None:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise InputError(f"batch_size must be a positive integer, got {batch_size!r}")


def _is_single_source(images: Any) -> bool:
    """One image (path, bytes, file object, PIL image, array) rather than a collection of them."""
    if isinstance(images, (list, tuple)):
        return False
    if isinstance(images, (str, bytes, bytearray, memoryview, os.PathLike, np.ndarray)):
        return True
    return hasattr(images, "read") or hasattr(images, "getexif") or not hasattr(images, "__iter__")


def _as_image_list(images: Any) -> list[Any]:
    return [images] if _is_single_source(images) else list(images)
