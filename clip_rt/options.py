"""One frozen description of how a model runs, built once by the API, the CLI, ``serve`` and
Ray, and passed down to the engine (instead of the same keyword arguments in every signature).

:class:`RuntimeOptions` holds what the caller asked for (backend, precision, providers, threads,
memory mode, decoding settings, caching) and :class:`Workload` what the caller is about to do
(how many images and prompts, and whether the process is short-lived), which the backend choice
uses: a one-photo command pays a backend's start-up, a server or a long folder does not
(``engine/backends/choose.py``). Validation happens here, so every front end gets the same
errors for the same bad value.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Optional, Union

from .errors import InputError

CacheMode = Union[bool, str]  # True (SQLite + memory), "memory", False
LIFETIMES = ("short", "long")
# Images per batch on the CPU: batch 8 measured 2x the throughput of 32 on a 2-core CPU and
# less peak memory (docs/benchmarks). Pass a larger batch_size for a GPU.
DEFAULT_IMAGE_BATCH = 8
MAX_DECODE_WORKERS = 4


@dataclass(frozen=True)
class Workload:
    """What a process is about to do with a model.

    *images* / *prompts*: how many it will encode (None: not known). *lifetime*: ``"short"``
    for one command that exits when done (start-up is part of its time), ``"long"`` for a
    server, a Ray actor or a Python session (start-up is paid once; steady speed decides).
    Unknown counts in a short-lived process count as long work."""

    images: Optional[int] = None
    prompts: Optional[int] = None
    lifetime: str = "long"

    def __post_init__(self) -> None:
        for name in ("images", "prompts"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
                raise InputError(f"workload {name} must be a count of 0 or more, or None; got {value!r}")
        if self.lifetime not in LIFETIMES:
            raise InputError(f"workload lifetime must be one of {', '.join(LIFETIMES)}; got {self.lifetime!r}")

    @property
    def short(self) -> bool:
        return self.lifetime == "short"

    def count(self, encoder: str) -> Optional[int]:
        """Items *encoder* will see in this workload; None where unknown or long-lived."""
        if not self.short:
            return None
        return self.images if encoder == "image" else self.prompts

    def describe(self) -> str:
        if not self.short:
            return "a long-lived process"
        parts = [
            f"{n} {what}{'' if n == 1 else 's'}"
            for n, what in ((self.images, "image"), (self.prompts, "prompt"))
            if n is not None
        ]
        return f"one run of {', '.join(parts)}" if parts else "one run"


LONG_LIVED = Workload()


@dataclass(frozen=True)
class RuntimeOptions:
    """How a model runs (``clip_rt.load(**fields)``, or ``load(options=...)``).

    *providers*: onnxruntime execution providers, ``["cuda", "cpu"]``, ``["cuda:1"]``, ``"cpu"``,
    ``"cuda,cpu"``...; default CUDA when available, else the CPU. A named provider that is
    missing or does not come up raises ProviderError unless *allow_fallback*.
    *backend*: ``onnxruntime`` | ``openvino`` | None (chosen per CPU, encoder and workload,
    docs/runtime.md); a backend that is not installed raises ProviderError.
    *precision*: ``fp32`` | ``fp16`` | ``int8`` | ``bf16`` (the fp32 graph computed in bf16 by
    OpenVINO), or ``IMAGE/TEXT`` such as ``int8/bf16``; default: per encoder, the fastest
    precision measured on this CPU among the bundle's graphs whose export parity passed (fp16
    when CUDA comes first and the bundle has it; when CUDA then falls back to the CPU, the CPU's
    choice instead, before any embedding is computed).
    *threads*: intra-op threads (default: the backend's, all cores).
    *workload*: what this process will do (:class:`Workload`); a short run of a known size gets
    the backend that finishes it first, start-up included; by default a model is planned for
    long-lived use (steady speed decides).
    *low_memory*: the lowest peak memory with the same results, for small devices: onnxruntime
    sessions without their arena, images one at a time with one decoding thread, glibc's large
    buffers returned when freed (process-wide), and the backend that holds the least memory.
    *draft*: JPEGs decoded at reduced scale before resizing (docs/images.md). *exif_transpose*,
    *strict*: preprocessing settings (docs/images.md).
    *cache*: True (SQLite + memory), ``"memory"``, or False (every prompt is encoded).
    *verify*: check the sha256 of the files used. *provider_options*: per provider, e.g.
    ``{"cuda": {"cudnn_conv_algo_search": "HEURISTIC"}}`` (docs/gpu.md). *session_options*: an
    ``onnxruntime.SessionOptions`` to start from.
    """

    backend: Optional[str] = None
    precision: Optional[str] = None
    providers: Optional[tuple[str, ...]] = None
    threads: Optional[int] = None
    low_memory: bool = False
    draft: bool = False
    exif_transpose: bool = True
    strict: bool = False
    cache: CacheMode = True
    verify: bool = True
    allow_fallback: bool = False
    provider_options: Optional[Mapping[str, Mapping[str, Any]]] = None
    session_options: Any = None  # an onnxruntime.SessionOptions (not imported here: cheap)
    workload: Workload = field(default=LONG_LIVED)

    def __post_init__(self) -> None:
        from .engine.backends.choose import normalise_backend, parse_precision

        set_ = object.__setattr__  # frozen: normalised values are set once, here
        set_(self, "backend", normalise_backend(self.backend))
        if self.precision is not None:
            parse_precision(self.precision)  # raises InputError with the accepted forms
        set_(self, "providers", _providers(self.providers))
        threads = self.threads
        if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
            raise InputError(f"threads must be a positive integer, got {threads!r}")
        if self.cache not in (True, False, "memory"):
            raise InputError(f"cache must be True, False or 'memory', got {self.cache!r}")
        if not isinstance(self.workload, Workload):
            raise InputError(f"workload must be a clip_rt.options.Workload, got {type(self.workload).__name__}")
        for name in ("low_memory", "draft", "exif_transpose", "strict", "verify", "allow_fallback"):
            set_(self, name, bool(getattr(self, name)))

    def replace(self, **changes: Any) -> RuntimeOptions:
        return dataclasses.replace(self, **changes)

    @classmethod
    def merged(cls, base: Optional[RuntimeOptions] = None, **fields: Any) -> RuntimeOptions:
        """*base* (default: the defaults) with the *fields* that differ from the defaults put
        over it: ``load()``'s keyword arguments over its ``options=``."""
        defaults = cls()
        changes = {k: v for k, v in fields.items() if v is not None and v != getattr(defaults, k)}
        start = base if base is not None else defaults
        return start.replace(**changes) if changes else start

    @property
    def image_batch_size(self) -> int:
        """The image methods' default batch: 8, or one image at a time in low-memory mode."""
        from .engine.memory import LOW_MEMORY_IMAGE_BATCH

        return LOW_MEMORY_IMAGE_BATCH if self.low_memory else DEFAULT_IMAGE_BATCH

    @property
    def decode_workers(self) -> int:
        """Threads decoding images ahead of the model: ``min(4, cores)``, one in low-memory mode."""
        from .engine.memory import LOW_MEMORY_DECODE_WORKERS

        return LOW_MEMORY_DECODE_WORKERS if self.low_memory else min(MAX_DECODE_WORKERS, os.cpu_count() or 1)

    @property
    def explicit_provider(self) -> bool:
        return self.providers is not None


def _providers(providers: Union[str, Sequence[str], None]) -> Optional[tuple[str, ...]]:
    """``"cpu"`` is one provider, not ``["c", "p", "u"]``; ``"cuda,cpu"`` as in the CLI."""
    if providers is None:
        return None
    if isinstance(providers, str):
        items = [p.strip() for p in providers.split(",") if p.strip()]
    else:
        if not all(isinstance(p, str) for p in providers):
            raise InputError(f"providers must be names such as 'cpu' or 'cuda:1', got {list(providers)!r}")
        items = [p for p in providers if p.strip()]
    return tuple(items) or None
