"""The life of a loaded bundle's sessions, owned by one object (:class:`ModelRuntime`).

For each encoder, on first use: the files it needs are checked against the manifest's sha256
(remembered across processes), its external data confined, the backend the plan names opened,
a derived mode's parity settled, a CUDA session that came up on the CPU re-planned, and the
graph checked against its manifest; then it is kept until released. The tokenizer, the
preprocessor and the prompt cache live here too. :class:`clip_rt.model.ClipModel` is the thin
public facade over it; the decisions themselves are the :class:`~clip_rt.engine.planner.Planner`'s.
"""

from __future__ import annotations

import hashlib
import importlib.util
import threading
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from ..bundle.manifest import Manifest
from ..bundle.store import cache_dir
from ..bundle.verify import verify_bundle_files
from ..errors import BundleError, InputError
from ..options import RuntimeOptions
from .backends import Backend, EncoderChoice, RuntimePlan, open_backend
from .contract import check_external_data, check_session
from .cpu import CpuIsa, detect_cpu
from .memory import low_memory_session_options, use_low_memory_allocator
from .planner import Planner
from .session import (
    CPU,
    CUDA,
    available_providers,
    provider_name,
    resolve_providers,
    unavailable_providers,
    without_options_for,
)

if TYPE_CHECKING:
    from ..inputs.preprocess import Preprocessor
    from ..inputs.tokenizer import TextTokenizer
    from .prompt_cache import PromptCache

ENCODERS = ("image", "text")
FOLDER_BATCH = 8  # a workload of more images than this runs as a folder stream


class ModelRuntime:
    """Sessions, tokenizer, preprocessor and prompt cache of one loaded bundle. Thread-safe."""

    def __init__(
        self, bundle_dir: Path, manifest: Manifest, options: RuntimeOptions, cpu: Optional[CpuIsa] = None
    ) -> None:
        self.bundle_dir = Path(bundle_dir)
        self.manifest = manifest
        self.options = options
        requested = list(options.providers) if options.providers else None
        # Resolved now so that a missing provider fails at load, not at the first image; with
        # allow_fallback, one this onnxruntime build lacks (CUDA on the CPU-only package) is left
        # out here, with one warning, and the sessions are asked for the rest.
        available = available_providers()
        self._dropped = unavailable_providers(requested, available) if requested and options.allow_fallback else []
        self._entries = resolve_providers(requested, available, allow_fallback=options.allow_fallback)
        if self._dropped and requested:
            requested = [p for p in requested if p not in self._dropped] or ["cpu"]
        self._requested = requested
        first = provider_name(self._entries[0])
        self.cpu = cpu or detect_cpu()
        self.planner = Planner(manifest, self.cpu, options, accelerator=None if first == CPU else first)
        # A defaulted precision follows the provider; it is only known once a session came up on
        # CUDA (or fell back to the CPU). Until then nothing may be computed or cached with it.
        self._precision_settled = not (options.precision is None and first == CUDA)
        session_options = options.session_options
        if options.low_memory:
            session_options = low_memory_session_options(session_options)
            use_low_memory_allocator()  # before any session or decoded image exists
        self._session_options = session_options
        self._provider_options = without_options_for(options.provider_options, self._dropped, available)
        self._lock = threading.RLock()
        self._sessions: dict[str, Backend] = {}
        self._tokenizer: Optional[TextTokenizer] = None
        self._preprocessor: Optional[Preprocessor] = None
        self._cache: Optional[PromptCache] = None

    # -- what runs ------------------------------------------------------------------------
    @property
    def plan(self) -> RuntimePlan:
        return self.planner.plan

    @property
    def open_encoders(self) -> tuple[str, ...]:
        """The encoders whose session exists now."""
        with self._lock:
            return tuple(self._sessions)

    def providers(self) -> list[str]:
        with self._lock:
            for session in self._sessions.values():
                if hasattr(session, "providers"):
                    return list(session.providers)
        return [provider_name(e) for e in self._entries]

    def live(self) -> dict[str, dict[str, Any]]:
        """``describe()`` of the backends created so far."""
        with self._lock:
            return {enc: s.describe() for enc, s in self._sessions.items()}

    # -- sessions -------------------------------------------------------------------------
    def session(self, encoder: str) -> Backend:
        if encoder not in ENCODERS:
            raise InputError(f"encoder must be 'image' or 'text', got {encoder!r}")
        with self._lock:
            if encoder not in self._sessions:
                sess = self._open(encoder)
                if not self._precision_settled:
                    if getattr(sess, "fell_back", False) and CUDA not in getattr(sess, "providers", ()):
                        sess = self._on_cpu(encoder, sess)
                    self._precision_settled = True
                check_session(sess, encoder, self.manifest)  # the graph agrees with its manifest
                self._sessions[encoder] = sess
            return self._sessions[encoder]

    def _open(self, encoder: str) -> Backend:
        choice = self.plan.encoder(encoder)
        backend = self._open_backend(choice)
        if self._dropped and hasattr(backend, "fell_back"):
            backend.fell_back = True  # a provider asked for was left out at load (allow_fallback)
        if choice.needs_evidence:
            backend = self._settle_evidence(choice, backend)
        return backend

    def _open_backend(self, choice: EncoderChoice) -> Backend:
        graph = self.manifest.graph(choice.graph_precision, choice.encoder)
        self.check_files([graph.file, *graph.external_data])
        check_external_data(self.bundle_dir, graph)  # before the backend opens anything it names
        o = self.options
        return open_backend(
            choice,
            self.bundle_dir / graph.file,
            native_bf16=self.cpu.native_bf16,
            providers=self._requested,
            threads=o.threads,
            session_options=self._session_options,
            allow_fallback=o.allow_fallback,
            provider_options=self._provider_options,
            cache_dir=cache_dir() / "openvino",
            first=self._first_mode(choice),
        )

    def _first_mode(self, choice: EncoderChoice) -> str:
        """The mode a backend with several compiles first: the throughput queue for a run that
        is a folder stream and nothing else (its single calls would never come), else latency."""
        images = self.options.workload.count("image")
        folder = choice.encoder == "image" and images is not None and images > FOLDER_BATCH
        return "throughput" if folder and choice.folders == "throughput" else "latency"

    def _settle_evidence(self, choice: EncoderChoice, backend: Backend) -> Backend:
        """A derived mode (bf16 compute on the fp32 or int8 graph) chosen without being asked for
        by name: compared once (cached) with the fp32 embeddings the export stored, or with the
        fp32 graph on onnxruntime for an older bundle; if it fails, the planner decides again
        without it."""
        from .runtime_info import derived_parity

        stored = self.manifest.parity_reference
        if stored is not None:  # the fp32 embeddings the export stored: no fp32 graph loaded
            self.check_files([stored.file])
        else:
            fp32 = self.manifest.graph("fp32", choice.encoder)
            self.check_files([fp32.file, *fp32.external_data])
        tokenizer = self.tokenizer() if choice.encoder == "text" else None
        record = derived_parity(self.manifest, self.bundle_dir, choice, backend, self.cpu, tokenizer)
        note = (
            f"parity vs the fp32 graph: min cosine {record['min_cosine']:.6f} on {record['samples']} sample "
            f"inputs (gate >= {record['gate']['min_cosine']}), {'cached' if record['cached'] else 'measured now'}"
        )
        if record["passed"]:
            self.planner.passed(choice, note)
            return backend
        warnings.warn(
            f"{self.manifest.name}: {choice.backend} {choice.mode_label} for the {choice.encoder} encoder "
            f"failed its {note}; choosing again without it",
            RuntimeWarning,
            stacklevel=5,
        )
        backend.close()
        self.planner.failed(choice)
        return self._open(choice.encoder)

    def _on_cpu(self, encoder: str, sess: Backend) -> Backend:
        """CUDA came up on the CPU: the defaulted precision (fp16) was chosen for CUDA and is slow
        on the CPU, so the CPU's onnxruntime choice is used instead."""
        before = self.plan.precision
        self.planner.on_cpu()
        if self.plan.precision == before:
            return sess
        warnings.warn(
            f"{self.manifest.name}: using the {self.plan.precision} graphs instead of {before} "
            "(the default for CUDA) since the session runs on the CPU",
            RuntimeWarning,
            stacklevel=4,
        )
        sess.close()
        return self._open(encoder)

    def release(self, encoder: str) -> None:
        """Free an encoder's session (its weights and arena), and the tokenizer with the text one."""
        with self._lock:
            session = self._sessions.pop(encoder, None)
            tokenizer = None
            if encoder == "text":
                tokenizer, self._tokenizer = self._tokenizer, None
        if session is not None:
            session.close()
        if tokenizer is not None:
            from ..inputs.tokenizer import forget_loaded_tokenizers

            del tokenizer
            forget_loaded_tokenizers()

    def close(self) -> None:
        with self._lock:
            if self._cache is not None:
                self._cache.close()

    # -- files, tokenizer, preprocessor, prompt cache ---------------------------------------
    def check_files(self, names: list[str]) -> None:
        if self.options.verify:
            verify_bundle_files(self.bundle_dir, self.manifest, names)
            return
        for name in names:
            if not (self.bundle_dir / name).is_file():
                raise BundleError(f"{self.bundle_dir}: {name} is missing (listed in the manifest)")

    def tokenizer(self) -> TextTokenizer:
        with self._lock:
            if self._tokenizer is None:
                from ..inputs.hf_tokenizer import open_tokenizer

                self.check_files([self.manifest.text.tokenizer_file])
                path = self.bundle_dir / self.manifest.text.tokenizer_file
                self._tokenizer = open_tokenizer(path, self.manifest.text)
            return self._tokenizer

    @property
    def tokenizer_loaded(self) -> bool:
        return self._tokenizer is not None

    def preprocessor(self) -> Preprocessor:
        with self._lock:
            if self._preprocessor is None:
                from ..inputs.preprocess import Preprocessor

                o = self.options
                self._preprocessor = Preprocessor(
                    self.manifest.image, exif_transpose=o.exif_transpose, strict=o.strict, draft=o.draft
                )
            return self._preprocessor

    def prompt_cache(self) -> Optional[PromptCache]:
        mode = self.options.cache
        if not mode:
            return None
        if not self._precision_settled or self.plan.text.needs_evidence:
            self.session("text")  # the cache is keyed by precision, which a CPU fallback or a failed check changes
        with self._lock:
            if self._cache is None:
                from .prompt_cache import PromptCache

                self._cache = PromptCache(
                    self.prompt_fingerprint(),
                    self.plan.text.cache_key,
                    dim=self.manifest.embed_dim,
                    persistent=mode is True,
                )
            return self._cache

    def prompt_fingerprint(self) -> str:
        """What cached text embeddings are keyed by: the bundle's files and text settings, and
        the text cleaner in use (ftfy repairs mojibake that the built-in cleaner leaves alone)."""
        cleaner = "ftfy" if importlib.util.find_spec("ftfy") is not None else "lite"
        return hashlib.sha256(f"{self.manifest.text_fingerprint}:{cleaner}".encode()).hexdigest()[:32]
