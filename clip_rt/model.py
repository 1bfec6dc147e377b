"""``load()`` and :class:`ClipModel`: embeddings, similarity and zero-shot classification.

Sessions are created on first use, per encoder: text-only use never reads the image graph.
The files an encoder uses are checked against the manifest's sha256 before its session is
created; a successful check is remembered by (path, size, mtime_ns) so that later loads do
not hash hundreds of megabytes again.
"""
from __future__ import annotations

import dataclasses
import os
import threading
import warnings
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Optional, Sequence, Union

import numpy as np

from . import templates as _templates
from .errors import BundleError, InputError, ModelNotFoundError
from .bundle.manifest import IMAGE_INPUT, Manifest, read_manifest
from .engine.backends import Backend, EncoderChoice, RuntimePlan, open_backend, plan_runtime
from .engine.pipeline import Decoded, image_stream
from .engine.text_batches import encode_token_rows
from .engine.pipeline import decode as decode_image
from .engine.contract import check_external_data, check_session
from .engine.cpu import CpuIsa, detect_cpu
from .engine.memory import (LOW_MEMORY_DECODE_WORKERS, LOW_MEMORY_IMAGE_BATCH, low_memory_session_options,
                            use_low_memory_allocator)
from .engine.session import (
    CPU,
    CUDA,
    available_providers,
    provider_name,
    resolve_providers,
    unavailable_providers,
    without_options_for,
)
from .bundle.store import cache_dir, resolve_bundle
from .bundle.verify import verify_bundle_files
from .inputs.discover import expand_folders
from .inputs.texts import check_utf8
from .results import ClassifiedImage, ImageEmbedding, PreprocessedImage
from .zeroshot import (
    Classification,
    LabelsArg,
    ZeroShotClassifier,
    check_templates,
    class_embeddings,
    parse_labels,
    scores_from_logits,
)

DEFAULT_TEXT_BATCH = 64
# Images per batch on the CPU: batch 8 measured 2x the throughput of 32 on a 2-core CPU and
# less peak memory (bench/results, docs/bench.md). Pass a larger batch_size for a GPU.
DEFAULT_IMAGE_BATCH = 8


def load(
    name_or_path: Union[str, "os.PathLike[str]", None] = None,
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
    backend: Optional[str] = None,
    low_memory: bool = False,
) -> "ClipModel":
    """Load a bundle by store name, alias (``ViT-B/32``) or directory; None: the configured
    default model (``$CLIP_RT_MODEL``, else ``model`` in ``$CLIP_RT_HOME/config.toml``, else
    ``ViT-B-32-openai``; see :mod:`clip_rt.settings`).

    *providers*: ``["cuda", "cpu"]``, ``["cuda:1"]``, ``"cpu"``, ``"cuda,cpu"``...; default CUDA
    when available, else CPU.
    A named provider that is missing or does not come up raises ProviderError unless
    *allow_fallback*. *backend*: ``onnxruntime`` | ``openvino`` | None (chosen per CPU and
    encoder, docs/runtime.md); a backend that is not installed raises ProviderError.
    *precision*: ``fp32`` | ``fp16`` | ``int8`` | ``bf16`` (the fp32 graph computed in bf16 by
    OpenVINO), or ``IMAGE/TEXT`` such as ``int8/bf16``; default: per encoder, the fastest
    precision measured on this CPU among the bundle's graphs whose export parity passed (fp16
    when CUDA comes first and the bundle has it); when CUDA then falls back to the CPU (automatic
    choice, or *allow_fallback*), the CPU's onnxruntime default is used instead, before any
    embedding is computed. ``model.runtime`` says what was chosen and why.
    *cache*: True (SQLite + memory), ``"memory"``, or False (every prompt is encoded). *verify*: check the sha256 of the files used.
    *provider_options*: per provider, e.g. ``{"cuda": {"cudnn_conv_algo_search": "HEURISTIC"}}``
    (docs/gpu.md).
    *low_memory*: the lowest peak memory with the same results, for small devices: onnxruntime
    sessions without their arena, images one at a time with one decoding thread (the default
    *batch_size* of the image methods becomes 1), and glibc's large buffers returned when freed
    (process-wide: :func:`clip_rt.engine.memory.use_low_memory_allocator`). Slower per image.
    """
    if name_or_path is None:
        from .settings import default_model

        setting = default_model()
        try:
            bundle_dir = resolve_bundle(setting.value)
        except ModelNotFoundError as exc:
            raise ModelNotFoundError(f"default model {setting.value!r} (from {setting.source}): {exc}") from exc
    else:
        bundle_dir = resolve_bundle(name_or_path)
    manifest = read_manifest(bundle_dir)
    return ClipModel(bundle_dir, manifest, providers=providers, precision=precision, threads=threads,
                     session_options=session_options, cache=cache, verify=verify,
                     exif_transpose=exif_transpose, strict=strict, draft=draft, allow_fallback=allow_fallback,
                     provider_options=provider_options, backend=backend, low_memory=low_memory)


def default_precision(manifest: Manifest, first_provider: str) -> str:
    """onnxruntime's default with nothing measured for the CPU: fp16 first on CUDA where the
    bundle has it; on the CPU the fastest precision whose export parity passed (int8, fp32)."""
    from .engine.backends.choose import choose_encoder

    if not manifest.precisions:
        raise BundleError(f"bundle {manifest.name!r} lists no graphs")
    accelerator = None if first_provider == CPU else first_provider
    return choose_encoder("image", manifest, CpuIsa("generic", frozenset()), installed=("onnxruntime",),
                          accelerator=accelerator, table={"rows": []}).precision


class ClipModel:
    """A loaded bundle. Thread-safe: sessions are created once, ONNX Runtime runs concurrently."""

    def __init__(self, bundle_dir: Path, manifest: Manifest, *, providers: Union[str, Sequence[str], None] = None,
                 precision: Optional[str] = None, threads: Optional[int] = None, session_options: Any = None,
                 cache: Union[bool, str] = True, verify: bool = True, exif_transpose: bool = True,
                 strict: bool = False, draft: bool = False, allow_fallback: bool = False,
                 provider_options: Optional[dict[str, dict[str, Any]]] = None, backend: Optional[str] = None,
                 cpu: Optional[CpuIsa] = None, low_memory: bool = False) -> None:
        self.bundle_dir = Path(bundle_dir)
        self.manifest = manifest
        if isinstance(providers, str):  # "cpu" is one provider, not ["c", "p", "u"]; "cuda,cpu" as in the CLI
            providers = [p for p in providers.split(",") if p.strip()]
        self._requested = list(providers) if providers else None
        # Resolved now so that a missing provider fails at load, not at the first image; with
        # allow_fallback, one this onnxruntime build lacks (CUDA on the CPU-only package) is left
        # out here, with one warning, and the sessions are asked for the rest.
        available = available_providers()
        self._dropped = unavailable_providers(self._requested, available) if self._requested and allow_fallback else []
        self._entries = resolve_providers(self._requested, available, allow_fallback=allow_fallback)
        if self._dropped:
            self._requested = [p for p in self._requested if p not in self._dropped] or ["cpu"]  # type: ignore[union-attr]
        if precision is not None and not isinstance(precision, str):
            raise InputError(f"precision must be a string such as 'fp32', got {type(precision).__name__}")
        if not manifest.precisions:
            raise BundleError(f"bundle {manifest.name!r} lists no graphs")
        first = provider_name(self._entries[0])
        self._accelerator = None if first == CPU else first
        self._cpu = cpu or detect_cpu()
        self._backend_asked = backend
        self._precision_asked = precision
        self._plan: RuntimePlan = plan_runtime(manifest, self._cpu, accelerator=self._accelerator, backend=backend,
                                               precision=precision, evidence=self._known_evidence())
        # A defaulted precision follows the provider; it is only known once a session came up on
        # CUDA (or fell back to the CPU). Until then nothing may be computed or cached with it.
        self._precision_settled = not (precision is None and first == CUDA)
        for encoder in ("image", "text"):  # both must exist, even if only one is used
            manifest.graph(self._plan.encoder(encoder).graph_precision, encoder)
        if cache not in (True, False, "memory"):
            raise InputError(f"cache must be True, False or 'memory', got {cache!r}")
        if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
            raise InputError(f"threads must be a positive integer, got {threads!r}")
        self._threads = threads
        self._low_memory = bool(low_memory)
        if self._low_memory:
            session_options = low_memory_session_options(session_options)
            use_low_memory_allocator()  # before any session or decoded image exists
        self._session_options = session_options
        self._verify = verify
        self._allow_fallback = allow_fallback
        self._provider_options = without_options_for(provider_options, self._dropped, available)
        self._cache_mode = cache
        self._exif_transpose, self._strict, self._draft = exif_transpose, strict, draft
        self._lock = threading.RLock()
        self._sessions: dict[str, Backend] = {}
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
    def scoring(self) -> str:
        """``softmax`` (CLIP: probabilities over the labels) or ``sigmoid`` (SigLIP: each label's
        own probability); the bundle's ``scoring``."""
        return self.manifest.scoring

    @property
    def precision(self) -> str:
        """The precision that runs: one name, or ``IMAGE/TEXT`` when the encoders differ."""
        return self._plan.precision

    @property
    def plan(self) -> RuntimePlan:
        """The per-encoder choice of backend, precision and mode (see :attr:`runtime`)."""
        return self._plan

    @property
    def providers(self) -> list[str]:
        """The onnxruntime providers the sessions run on; before the first session exists,
        those requested (an OpenVINO encoder runs on the CPU)."""
        with self._lock:
            for session in self._sessions.values():
                if hasattr(session, "providers"):
                    return list(session.providers)
        return [provider_name(e) for e in self._entries]

    @property
    def runtime(self) -> dict[str, Any]:
        """What runs each encoder on this machine, and why: the CPU (ISA class and flags), the
        installed backends, and per encoder the backend, precision, compute precision, folder
        mode, the reason and the measurement it came from (plus the live backend's settings
        once its session exists). Recorded in outputs' metadata."""
        from .engine.runtime_info import runtime_dict

        with self._lock:
            live = {enc: s.describe() for enc, s in self._sessions.items()}
        return {**runtime_dict(self._plan, live), "low_memory": self._low_memory}

    def describe(self) -> str:
        """:attr:`runtime` as readable lines (what ``clip-rt info`` prints)."""
        from .engine.runtime_info import describe_lines

        return "\n".join(describe_lines(self.runtime))

    def __repr__(self) -> str:
        return f"ClipModel({self.manifest.name!r}, precision={self.precision!r}, providers={self.providers})"

    # -- lazy parts ---------------------------------------------------------------
    def session(self, encoder: str) -> Backend:
        """The backend running ``"image"`` or ``"text"`` (created and verified on first use): an
        onnxruntime session (:class:`~clip_rt.engine.backends.ort.OrtBackend`) or an OpenVINO one."""
        with self._lock:
            if encoder not in self._sessions:
                sess = self._open_session(encoder)
                if not self._precision_settled:
                    if getattr(sess, "fell_back", False) and CUDA not in getattr(sess, "providers", ()):
                        sess = self._fall_back_to_cpu_precision(encoder, sess)
                    self._precision_settled = True
                check_session(sess, encoder, self.manifest)  # the graph agrees with its manifest
                self._sessions[encoder] = sess
            return self._sessions[encoder]

    def prepare(self, encoders: Sequence[str] = ("image", "text")) -> None:
        """Create and check the sessions of *encoders* now (files verified, graph checked against
        the manifest): a damaged or mismatched bundle then fails here, before a caller opens its
        output files, rather than after."""
        for encoder in encoders:
            if encoder not in ("image", "text"):
                raise InputError(f"encoder must be 'image' or 'text', got {encoder!r}")
            self.session(encoder)

    def _open_session(self, encoder: str) -> Backend:
        choice = self._plan.encoder(encoder)
        backend = self._open_backend(choice)
        if self._dropped and hasattr(backend, "fell_back"):
            backend.fell_back = True  # a provider asked for was left out at load (allow_fallback)
        if choice.needs_evidence:
            backend = self._settle_evidence(choice, backend)
        return backend

    def _open_backend(self, choice: EncoderChoice) -> Backend:
        graph = self.manifest.graph(choice.graph_precision, choice.encoder)
        self._check_files([graph.file, *graph.external_data])
        check_external_data(self.bundle_dir, graph)  # before the backend opens anything it names
        return open_backend(choice, self.bundle_dir / graph.file, native_bf16=self._cpu.native_bf16,
                            providers=self._requested, threads=self._threads, session_options=self._session_options,
                            allow_fallback=self._allow_fallback, provider_options=self._provider_options,
                            cache_dir=cache_dir() / "openvino",
                            quantization=self.manifest.quantization_of(choice.graph_precision, choice.encoder))

    def _known_evidence(self) -> dict[str, dict[str, bool]]:
        from .engine.runtime_info import known_evidence

        return known_evidence(self.manifest.fingerprint, self._cpu)

    def _settle_evidence(self, choice: EncoderChoice, backend: Backend) -> Backend:
        """A derived mode (bf16 compute on the fp32 or int8 graph) chosen without being asked for
        by name: compare it with the fp32 graph on onnxruntime once (cached); if it fails, choose
        again without it."""
        from .engine.runtime_info import derived_parity

        fp32 = self.manifest.graph("fp32", choice.encoder)
        self._check_files([fp32.file, *fp32.external_data])
        tokenizer = self._tokenizer() if choice.encoder == "text" else None
        record = derived_parity(self.manifest, self.bundle_dir / fp32.file, choice, backend, self._cpu, tokenizer)
        note = (f"parity vs the fp32 graph: min cosine {record['min_cosine']:.6f} on {record['samples']} sample "
                f"inputs (gate >= {record['gate']['min_cosine']}), {'cached' if record['cached'] else 'measured now'}")
        if record["passed"]:
            self._plan = self._plan.with_encoder(dataclasses.replace(choice, needs_evidence=False,
                                                                     notes=(*choice.notes, note)))
            return backend
        warnings.warn(f"{self.manifest.name}: {choice.backend} {choice.mode_label} for the {choice.encoder} encoder "
                      f"failed its {note}; choosing again without it", RuntimeWarning, stacklevel=4)
        backend.close()
        evidence = self._known_evidence()
        evidence.setdefault(choice.encoder, {})[f"{choice.backend}:{choice.mode_label}"] = False
        # The precision asked for, if any (the int8 graph in bf16 is checked even then; the
        # fp32 graph in bf16, asked for by name, never gets here).
        plan = plan_runtime(self.manifest, self._cpu, accelerator=self._accelerator, backend=self._backend_asked,
                            precision=self._precision_asked, evidence=evidence)
        self._plan = self._plan.with_encoder(plan.encoder(choice.encoder))
        return self._open_session(choice.encoder)

    def _fall_back_to_cpu_precision(self, encoder: str, sess: Backend) -> Backend:
        """CUDA came up on the CPU: the defaulted precision (fp16) was chosen for CUDA and is slow
        on the CPU, so the CPU's onnxruntime default precision is used instead."""
        plan = plan_runtime(self.manifest, self._cpu, backend="onnxruntime", evidence=self._known_evidence())
        before = self.precision
        self._plan = plan
        if self.precision == before:
            return sess
        warnings.warn(f"{self.manifest.name}: using the {self.precision} graphs instead of {before} "
                      "(the default for CUDA) since the session runs on the CPU", RuntimeWarning, stacklevel=3)
        sess.close()
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
                from .inputs.hf_tokenizer import open_tokenizer

                self._check_files([self.manifest.text.tokenizer_file])
                path = self.bundle_dir / self.manifest.text.tokenizer_file
                self._tokenizer_obj = open_tokenizer(path, self.manifest.text)
            return self._tokenizer_obj

    def _preprocessor(self) -> Any:
        with self._lock:
            if self._preprocessor_obj is None:
                from .inputs.preprocess import Preprocessor

                self._preprocessor_obj = Preprocessor(self.manifest.image, exif_transpose=self._exif_transpose,
                                                      strict=self._strict, draft=self._draft)
            return self._preprocessor_obj

    def _cache(self) -> Any:
        if (not self._precision_settled or self._plan.text.needs_evidence) and self._cache_mode:
            self.session("text")  # the cache is keyed by precision, which a CPU fallback or a failed check changes
        with self._lock:
            if self._cache_obj is None and self._cache_mode:
                from .engine.prompt_cache import PromptCache

                self._cache_obj = PromptCache(self._prompt_fingerprint(), self._plan.text.cache_key, dim=self.embed_dim,
                                              persistent=self._cache_mode is True)
            return self._cache_obj

    def _prompt_fingerprint(self) -> str:
        """What cached text embeddings are keyed by: the bundle's files and text settings, and
        the text cleaner in use (ftfy repairs mojibake that the built-in cleaner leaves alone)."""
        import hashlib
        import importlib.util

        cleaner = "ftfy" if importlib.util.find_spec("ftfy") is not None else "lite"
        return hashlib.sha256(f"{self.manifest.text_fingerprint}:{cleaner}".encode()).hexdigest()[:32]

    def release(self, encoder: str) -> None:
        """Free an encoder's session (its weights and arena); it is re-created on next use.
        A folder classify needs the text graph only to build the class embeddings. Releasing
        ``"text"`` frees the tokenizer too (about 30 MiB of heap for CLIP's BPE tables;
        docs/devices.md#memory); it is loaded again when text is encoded."""
        with self._lock:
            session = self._sessions.pop(encoder, None)
            tokenizer = None
            if encoder == "text":
                tokenizer, self._tokenizer_obj = self._tokenizer_obj, None
        if session is not None:
            session.close()
        if tokenizer is not None:
            from .inputs.tokenizer import forget_loaded_tokenizers

            del tokenizer
            forget_loaded_tokenizers()

    def close(self) -> None:
        """Release the prompt cache's database connection (sessions are freed with the model)."""
        with self._lock:
            if self._cache_obj is not None:
                self._cache_obj.close()

    # -- text ---------------------------------------------------------------------
    def encode_text(self, texts: Union[str, Sequence[str]], batch_size: int = DEFAULT_TEXT_BATCH) -> np.ndarray:
        """(N, D) float32 L2-normalised embeddings; repeated prompts come from the cache."""
        if not isinstance(texts, str) and (isinstance(texts, (bytes, bytearray, Mapping))
                                           or not isinstance(texts, Iterable)):
            raise InputError(f"texts must be a string or a sequence of strings, got {type(texts).__name__}: "
                             f"{texts!r:.80}")
        items = [texts] if isinstance(texts, str) else list(texts)
        _check_batch_size(batch_size)
        for i, t in enumerate(items):
            if not isinstance(t, str):
                raise InputError(f"texts must be strings, got {type(t).__name__}: {t!r:.80}")
            check_utf8(t, f"text #{i}")
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
        out = np.empty((len(texts), self.embed_dim), dtype=np.float32)
        encode_token_rows(self.session("text"), tokens.ids, tokens.lengths, batch_size=batch_size,
                          dynamic=self.manifest.text.dynamic_sequence,
                          queued=self._plan.text.folders == "throughput", out=out)
        return {t: out[i] for i, t in enumerate(texts)}

    # -- images -------------------------------------------------------------------
    def encode_image(self, images: Any, batch_size: Optional[int] = None) -> np.ndarray:
        """(N, D) float32 L2-normalised embeddings; raises on the first image that cannot be read."""
        items = _as_image_list(images)
        out = np.empty((len(items), self.embed_dim), dtype=np.float32)
        for item in self._iter(items, batch_size, raise_errors=True):
            out[item.index] = item.embedding
        return out

    @property
    def image_streams(self) -> int:
        """How many image batches may usefully run at once: the backend's throughput queue depth
        where the plan runs batches in throughput mode (OpenVINO streams), else 1. Creates the
        image session."""
        if self._plan.image.folders != "throughput":
            return 1
        return max(1, int(self.session("image").queue_depth))

    def encode_pixels(self, pixel_values: Any, output: str = "numpy", *, queued: bool = False) -> Any:
        """Embeddings of one preprocessed batch, (N, 3, H, W) float32 (numpy, or an OrtValue
        already on the device). *output* ``"numpy"``: a host array; ``"ortvalue"``: an
        ``onnxruntime.OrtValue`` left on the session's device (IO binding, no host round trip).
        *queued*: through the backend's throughput queue (thread-safe; callers running up to
        :attr:`image_streams` batches at once get the streams' throughput; same embeddings)."""
        if output not in ("numpy", "ortvalue"):
            raise InputError(f"output must be 'numpy' or 'ortvalue', got {output!r}")
        if isinstance(pixel_values, np.ndarray) and (pixel_values.ndim != 4 or pixel_values.dtype != np.float32):
            raise InputError(f"pixel_values must be float32 (N, 3, H, W), got {pixel_values.dtype} {pixel_values.shape}")
        session = self.session("image")
        if output == "numpy" and isinstance(pixel_values, np.ndarray):
            if queued:
                return session.submit({IMAGE_INPUT: pixel_values}).result()[0]
            return session.run({IMAGE_INPUT: pixel_values})[0]
        run_binding = getattr(session, "run_binding", None)
        if run_binding is None:
            raise InputError(f"OrtValue input or output needs the onnxruntime backend; the image encoder runs on "
                             f"{session.name} (load with backend='onnxruntime')")
        if output == "numpy":
            return run_binding({IMAGE_INPUT: pixel_values}, "cpu")[0].numpy()
        return run_binding({IMAGE_INPUT: pixel_values})[0]

    def preprocess(self, source: Any) -> PreprocessedImage:
        """Decode and preprocess one image exactly as :meth:`encode_image` does (this model's EXIF,
        draft and strict settings, PIL's pixel limit). Raises ImageLoadError or InputError.
        Thread-safe: for callers that decode on their own threads and batch the pixels through
        :meth:`encode_pixels` themselves (``clip-rt serve``)."""
        decoded = self._decode(0, source)
        if decoded.error is not None:
            raise decoded.error
        return PreprocessedImage(decoded.pixels, decoded.width, decoded.height, decoded.notes)  # type: ignore[arg-type]

    def iter_images(self, sources: Iterable[Any], batch_size: Optional[int] = None, *,
                    workers: Optional[int] = None) -> Iterator[ImageEmbedding]:
        """Embeddings in input order, one per source; an unreadable image yields an item with
        ``error`` set and the stream goes on. *sources* may be a generator: at most about
        ``2 * batch_size`` images are decoded ahead, in *workers* threads, while the previous
        batch runs through the model. Defaults: *batch_size* :attr:`image_batch_size` (8, or 1
        in low-memory mode); *workers* ``min(4, cores)``, 1 in low-memory mode."""
        return self._iter(sources, batch_size, raise_errors=False, workers=workers)

    def _decode(self, index: int, source: Any) -> Decoded:
        # With the model's EXIF and draft settings, inside the process-wide decode memory budget.
        return decode_image(self._preprocessor(), index, source)

    def _iter(self, sources: Iterable[Any], batch_size: Optional[int], *, raise_errors: bool,
              workers: Optional[int] = None) -> Iterator[ImageEmbedding]:
        if batch_size is None:
            batch_size = self.image_batch_size
        _check_batch_size(batch_size)
        if workers is None:
            workers = LOW_MEMORY_DECODE_WORKERS if self._low_memory else min(4, os.cpu_count() or 1)
        session = self.session("image")  # fail before reading any image
        self._preprocessor()
        return image_stream(iter(sources), session, self._decode, batch_size, raise_errors=raise_errors,
                            workers=workers, queued=self._plan.image.folders == "throughput")

    @property
    def low_memory(self) -> bool:
        """Whether this model runs in low-memory mode (``load(low_memory=True)``, CLI ``--low-memory``)."""
        return self._low_memory

    @property
    def image_batch_size(self) -> int:
        """The image methods' default *batch_size*: 8, or 1 in low-memory mode."""
        return LOW_MEMORY_IMAGE_BATCH if self._low_memory else DEFAULT_IMAGE_BATCH

    @property
    def draft(self) -> bool:
        """Whether images may be decoded at reduced scale (``load(draft=True)``, CLI ``--draft``)."""
        return self._draft

    def draft_size(self, width: int, height: int) -> "tuple[int, int]":
        """The smallest (width, height) a *width* x *height* image may be decoded or converted at
        in draft mode: twice what the resize step makes of it (docs/images.md)."""
        return self._preprocessor().draft_size(width, height)

    # -- similarity and zero-shot ---------------------------------------------------
    def similarity(self, images: Any, texts: Union[str, Sequence[str]], batch_size: Optional[int] = None) -> np.ndarray:
        """Probabilities of the image(s) matching each of *texts*, by the model's :attr:`scoring`:
        ``softmax(logit_scale * cos)`` over the texts (CLIP), or each text's own
        ``sigmoid(logit_scale * cos + logit_bias)`` (SigLIP). Shape (T,) for one image, (N, T)
        for a list."""
        single = _is_single_source(images)
        text_list = [texts] if isinstance(texts, str) else list(texts)
        if not text_list:
            raise InputError("no texts given: expected at least one")
        img = self.encode_image(images, batch_size=batch_size)
        logits = self.logit_scale * (img @ self.encode_text(text_list).T)
        if self.scoring == "sigmoid" and self.logit_bias is not None:
            logits = logits + np.float32(self.logit_bias)
        probs = scores_from_logits(logits, self.scoring)
        return probs[0] if single else probs

    def classifier(self, labels: LabelsArg, templates: Union[str, Sequence[str]] = _templates.SIMPLE) -> ZeroShotClassifier:
        """A classifier with the class embeddings computed once (prompt ensembles, cached)."""
        parsed = parse_labels(labels)
        temps = check_templates(templates)
        embs = class_embeddings(parsed, temps, self.encode_text)
        return ZeroShotClassifier(parsed, embs, self.logit_scale, self.logit_bias, temps, scoring=self.scoring)

    def classify(self, images: Any, labels: LabelsArg, templates: Union[str, Sequence[str]] = _templates.SIMPLE,
                 top_k: int = 5, batch_size: Optional[int] = None) -> list[Classification]:
        """One :class:`Classification` per image; raises on the first unreadable image. A folder
        path stands for the images under it (as in the CLI). :meth:`iter_classify` instead
        reports a bad image on its own item and goes on.

        With the prompt cache on, the text session is freed once the class embeddings exist
        (the next call finds them in the cache): a folder then peaks at the image graph's
        memory alone (docs/bench.md)."""
        clf = self._zero_shot(labels, templates)
        sources = list(expand_folders(_as_image_list(images)))
        return clf.classify_embeddings(self.encode_image(sources, batch_size=batch_size), top_k=top_k)

    def iter_classify(self, images: Any, labels: LabelsArg,
                      templates: Union[str, Sequence[str]] = _templates.SIMPLE, top_k: int = 5,
                      batch_size: Optional[int] = None, *, workers: Optional[int] = None
                      ) -> Iterator[ClassifiedImage]:
        """Classify images the way `clip-rt classify` does: one :class:`ClassifiedImage` per image,
        in input order, carrying its source (the path, for files); a folder path stands for the
        images under it (recursive, sorted; a folder that cannot be listed is a failed item). An
        unreadable image gives an item with ``error`` set and ``result=None``, and the stream goes
        on. *images* may be a generator; memory stays bounded as in :meth:`iter_images`."""
        clf = self._zero_shot(labels, templates)  # bad labels, a damaged graph: raised here, not at next()
        sources = expand_folders([images] if _is_single_source(images) else images)
        return self._classified(self._iter(sources, batch_size, raise_errors=False, workers=workers), clf, top_k)

    @staticmethod
    def _classified(items: Iterator[ImageEmbedding], clf: ZeroShotClassifier, top_k: int) -> Iterator[ClassifiedImage]:
        for item in items:
            result = None
            if item.embedding is not None and item.error is None:
                result = clf.classify_embeddings(item.embedding[None, :], top_k=top_k)[0]
            yield ClassifiedImage(index=item.index, source=item.source, result=result, width=item.width,
                                  height=item.height, error=item.error or (None if result else "no embedding"),
                                  notes=item.notes)

    def _zero_shot(self, labels: LabelsArg, templates: Union[str, Sequence[str]]) -> ZeroShotClassifier:
        clf = self.classifier(labels, templates)
        if self._cache_mode:
            self.release("text")
        return clf


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
