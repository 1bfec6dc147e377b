"""The one ONNX Runtime session wrapper: provider selection, verification, threads.

ONNX Runtime quietly falls back to the CPU when an accelerator fails to come up (missing CUDA
libraries, wrong driver). clip-rt does not: a requested accelerator that is not active after
the session is created raises :class:`ProviderError`, unless the caller opts in with
``allow_fallback=True`` (then a warning says so and ``OrtSession.fell_back`` is True).

onnxruntime is imported inside functions, so importing this module stays cheap; tests inject
``available_providers`` and ``session_factory`` to exercise the GPU paths on a CPU machine.
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Callable, Optional, Union

import numpy as np

from ..errors import BundleError, InputError, ProviderError

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"

# User-facing short names -> onnxruntime provider names.
PROVIDER_ALIASES: dict[str, str] = {
    "cpu": CPU,
    "cuda": CUDA,
    "gpu": CUDA,
    "tensorrt": "TensorrtExecutionProvider",
    "trt": "TensorrtExecutionProvider",
    "openvino": "OpenVINOExecutionProvider",
    "coreml": "CoreMLExecutionProvider",
    "dml": "DmlExecutionProvider",
    "directml": "DmlExecutionProvider",
    "rocm": "ROCMExecutionProvider",
    "migraphx": "MIGraphXExecutionProvider",
}
# Providers whose ``name:N`` suffix is a device index (the option is called device_id in all).
_DEVICE_ID_PROVIDERS = {
    CUDA,
    "TensorrtExecutionProvider",
    "DmlExecutionProvider",
    "ROCMExecutionProvider",
    "MIGraphXExecutionProvider",
}

ProviderEntry = Union[str, tuple[str, dict[str, Any]]]


def provider_name(entry: ProviderEntry) -> str:
    return entry if isinstance(entry, str) else entry[0]


def available_providers() -> list[str]:
    import onnxruntime

    return list(onnxruntime.get_available_providers())


_ort_available = available_providers  # the parameter of OrtSession shadows the name


def _parse_one(spec: str, available: Sequence[str]) -> ProviderEntry:
    raw = spec.strip()
    if not raw:
        raise InputError("empty execution provider name; expected e.g. 'cpu', 'cuda', 'cuda:1'")
    base, _, device = raw.partition(":")
    # Full onnxruntime names are matched case-insensitively too ("cudaexecutionprovider").
    by_lower = {name.lower(): name for name in available}
    name = PROVIDER_ALIASES.get(base.lower()) or by_lower.get(base.lower())
    if name is None and base.endswith("ExecutionProvider"):
        name = base  # a real provider name this build lacks: reported as unavailable below
    if name is None:
        known = ", ".join(sorted(PROVIDER_ALIASES))
        raise InputError(
            f"unknown execution provider {spec!r}; expected one of {known}, "
            f"a full onnxruntime name, or NAME:DEVICE_ID (e.g. cuda:1)"
        )
    if not device:
        return name if name == CPU else (name, {})
    if name not in _DEVICE_ID_PROVIDERS:
        raise InputError(f"provider {spec!r}: {name} takes no device index")
    if not device.isdigit():
        raise InputError(f"provider {spec!r}: device index must be a non-negative integer, got {device!r}")
    return (name, {"device_id": int(device)})


def resolve_providers(
    requested: Optional[Sequence[str]], available: Sequence[str], *, allow_fallback: bool = False
) -> list[ProviderEntry]:
    """Map user names (``cpu``, ``cuda``, ``cuda:1``, ``openvino``, full onnxruntime names) to
    onnxruntime provider entries, in priority order, with the CPU provider last.

    ``None`` or ``[]`` means automatic: CUDA when this onnxruntime build has it, else the CPU
    (the other accelerators need set-up or coverage checks, so they are used when asked for).
    A requested provider this onnxruntime build lacks raises ProviderError listing what it has;
    with *allow_fallback* it is left out instead, with a RuntimeWarning saying so (the CPU
    provider remains). :func:`unavailable_providers` names those it would leave out.
    """
    if isinstance(requested, str):
        requested = [p for p in requested.split(",") if p.strip()]
    if not requested:
        return [(CUDA, {}), CPU] if CUDA in available else [CPU]
    missing = unavailable_providers(requested, available)
    if missing and allow_fallback:
        warnings.warn(_fallback_message(missing, available), RuntimeWarning, stacklevel=2)
        requested = [spec for spec in requested if spec not in missing]
    entries: list[ProviderEntry] = []
    for spec in requested:
        entry = _parse_one(spec, available)
        name = provider_name(entry)
        if name not in available:
            hint = " (install onnxruntime-gpu instead of onnxruntime for CUDA)" if name == CUDA else ""
            raise ProviderError(
                f"execution provider {spec!r} ({name}) is not available in this onnxruntime "
                f"build; available: {', '.join(available) or 'none'}{hint}; pass "
                f"allow_fallback=True to run on the CPU instead"
            )
        if name in (provider_name(e) for e in entries):
            raise InputError(f"execution provider {name} is listed twice in {list(requested)!r}")
        entries.append(entry)
    # The CPU provider runs the nodes an accelerator cannot; onnxruntime needs it last.
    if CPU not in (provider_name(e) for e in entries):
        entries.append(CPU)
    return entries


def unavailable_providers(requested: Sequence[str], available: Sequence[str]) -> list[str]:
    """The entries of *requested* (user names, checked as :func:`resolve_providers` does) that
    this onnxruntime build does not have, e.g. ``["cuda"]`` on the CPU-only ``onnxruntime``."""
    missing = []
    for spec in requested:
        if not isinstance(spec, str):
            raise InputError(f"execution providers must be strings, got {type(spec).__name__}: {spec!r}")
        if provider_name(_parse_one(spec, available)) not in available:
            missing.append(spec)
    return missing


def without_options_for(
    options: Optional[Mapping[str, Mapping[str, Any]]], dropped: Sequence[str], available: Sequence[str]
) -> Optional[dict[str, Mapping[str, Any]]]:
    """*options* (keyed by provider, short or full name) less those of the *dropped* providers."""
    if not options or not dropped:
        return dict(options) if options else options  # type: ignore[return-value]
    gone = {provider_name(_parse_one(d, available)) for d in dropped}
    return {k: v for k, v in options.items() if provider_name(_parse_one(k, available)) not in gone}


def _fallback_message(missing: Sequence[str], available: Sequence[str]) -> str:
    return (
        f"execution provider(s) {', '.join(missing)} not available in this onnxruntime build "
        f"(available: {', '.join(available) or 'none'}); running without them (allow_fallback=True)"
    )


def build_session_options(
    intra_op_threads: Optional[int] = None, inter_op_threads: Optional[int] = None, session_options: Any = None
) -> Any:
    """An ``onnxruntime.SessionOptions``: *session_options* may be one (used as is) or a mapping
    of SessionOptions attribute names to values (e.g. ``{"enable_mem_pattern": False}``)."""
    import onnxruntime

    if session_options is None or isinstance(session_options, Mapping):
        so = onnxruntime.SessionOptions()
        so.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.optimized_model_filepath = ""  # never write the optimised graph next to the bundle
        # Idle worker threads sleep instead of spinning: -5% on an idle 2-core CPU, but +47%
        # when other processes hold the cores (bench/results/variants.json), the common case
        # on shared servers and small devices. A SessionOptions passed in is used as is.
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        so.add_session_config_entry("session.inter_op.allow_spinning", "0")
        for key, value in (session_options or {}).items():
            if key.startswith("_") or not hasattr(so, key):
                raise InputError(f"unknown onnxruntime SessionOptions field {key!r}")
            setattr(so, key, value)
    elif isinstance(session_options, onnxruntime.SessionOptions):
        so = session_options
    else:
        raise InputError(
            "session_options must be an onnxruntime.SessionOptions or a dict of its "
            f"fields, got {type(session_options).__name__}"
        )
    for label, value in (("intra_op_threads", intra_op_threads), ("inter_op_threads", inter_op_threads)):
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
            raise InputError(f"{label} must be a non-negative integer (0 = onnxruntime default), got {value!r}")
    if intra_op_threads is not None:
        so.intra_op_num_threads = intra_op_threads
    if inter_op_threads is not None:
        so.inter_op_num_threads = inter_op_threads
    return so


def ort_graph_errors() -> tuple[type[BaseException], ...]:
    """The onnxruntime exceptions that mean "this graph file cannot be used": unreadable or not
    ONNX, newer opset or IR version, unknown operator, failed shape inference, external data
    refused, a kernel that cannot be built. EPFail (a provider that failed) is not among them."""
    from onnxruntime.capi import onnxruntime_pybind11_state as state

    names = (
        "Fail",
        "InvalidArgument",
        "NoSuchFile",
        "NoModel",
        "InvalidProtobuf",
        "InvalidGraph",
        "NotImplemented",
        "RuntimeException",
        "ModelLoaded",
        "NotFound",
    )
    return tuple(getattr(state, n) for n in names if isinstance(getattr(state, n, None), type))


def ort_reason(exc: BaseException, limit: int = 400) -> str:
    """onnxruntime's message without its code prefix, C++ source location and signature."""
    text = re.sub(r"^\[ONNXRuntimeError\] : \d+ : \w+ : ", "", str(exc).strip())
    text = re.sub(r"^Load model from .*? failed:", "", text)
    loc = re.match(r"\S+\.(?:h|hpp|cc|cpp):\d+ ", text)
    if loc:  # "file.cc:46 void ns::Func(args...) message": drop through the signature's ")"
        rest, depth, cut = text[loc.end() :], 0, 0
        for i, ch in enumerate(rest):
            depth += ch == "("
            if ch == ")":
                depth -= 1
                if depth == 0:
                    cut = i + 1
                    break
        text = rest[cut:].strip() if cut else rest
    text = re.sub(r"(?:[\w-]+/)*[\w-]+\.(?:h|hpp|cc|cpp):\d+ (?:\w+ )?", "", text)  # "file.cc:2201 Function "
    text = re.sub(
        r"Non-zero status code returned while running (\w+) node\. Name:'[^']*' Status Message: ", r"\1: ", text
    )
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit] + "..."


def _default_factory(path: str, so: Any, providers: list[ProviderEntry]) -> Any:
    import onnxruntime
    from onnxruntime.capi.onnxruntime_pybind11_state import EPFail

    try:
        return onnxruntime.InferenceSession(path, sess_options=so, providers=providers)
    except EPFail as exc:  # the machine's provider, not the file
        raise ProviderError(
            f"{path}: an execution provider failed while creating the session ({ort_reason(exc)})"
        ) from exc
    except ort_graph_errors() as exc:  # the file: named, one line, no traceback
        raise BundleError(
            f"{path}: onnxruntime cannot load this graph ({ort_reason(exc)}); "
            "the bundle is damaged, hostile, or needs a newer onnxruntime"
        ) from exc


class OrtSession:
    """An ``onnxruntime.InferenceSession`` that came up on the providers it was asked for."""

    def __init__(
        self,
        path: Union[str, os.PathLike[str]],
        providers: Optional[Sequence[str]] = None,
        *,
        intra_op_threads: Optional[int] = None,
        inter_op_threads: Optional[int] = None,
        options: Optional[Mapping[str, Mapping[str, Any]]] = None,
        session_options: Any = None,
        allow_fallback: bool = False,
        available_providers: Optional[Sequence[str]] = None,
        session_factory: Optional[Callable[[str, Any, list[ProviderEntry]], Any]] = None,
    ) -> None:
        """*providers*: user names as for :func:`resolve_providers`. *options*: extra provider
        options keyed by provider (short or full name), e.g. ``{"cuda": {"gpu_mem_limit": 2**30}}``."""
        self.path = Path(path)
        if isinstance(providers, str):  # "cuda,cpu", as resolve_providers takes it
            providers = [p for p in providers.split(",") if p.strip()]
        avail = list(available_providers) if available_providers is not None else _ort_available()
        dropped = unavailable_providers(providers, avail) if providers and allow_fallback else []
        entries = resolve_providers(providers, avail, allow_fallback=allow_fallback)
        entries = _merge_options(entries, without_options_for(options, dropped, avail) or {}, avail)
        self.requested: list[ProviderEntry] = entries
        so = build_session_options(intra_op_threads, inter_op_threads, session_options)
        factory = session_factory or _default_factory
        self._session = factory(str(self.path), so, entries)
        self.providers: list[str] = list(self._session.get_providers())
        missing = [provider_name(e) for e in entries if provider_name(e) not in self.providers]
        # True when a requested provider is not running: left out (not in this build) or did not come up.
        self.fell_back = bool(missing or dropped)
        # Automatic selection (no providers named) may fall back: nothing was promised.
        if missing and not providers:
            allow_fallback = True
        if missing:
            msg = (
                f"{self.path.name}: requested execution provider(s) {', '.join(missing)} did not come up "
                f"(onnxruntime fell back to: {', '.join(self.providers)}); check the GPU driver and "
                "CUDA/cuDNN libraries onnxruntime needs"
            )
            if not allow_fallback:
                raise ProviderError(msg + ", or allow the fallback explicitly")
            warnings.warn(msg, RuntimeWarning, stacklevel=2)
        self.input_names: list[str] = [i.name for i in self._session.get_inputs()]
        self.output_names: list[str] = [o.name for o in self._session.get_outputs()]

    def run(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        """All outputs, in ``output_names`` order."""
        return list(self._session.run(None, dict(feeds)))

    @property
    def inference_session(self) -> Any:
        """The underlying ``onnxruntime.InferenceSession`` (for IO binding set-ups such as
        :class:`clip_rt.engine.gpu.FixedShapeRunner`)."""
        return self._session

    @property
    def device(self) -> tuple[str, int]:
        """``("cuda", device_id)`` when the session runs on CUDA, else ``("cpu", 0)``."""
        if CUDA not in self.providers:
            return ("cpu", 0)
        for entry in self.requested:
            if provider_name(entry) == CUDA and not isinstance(entry, str):
                return ("cuda", int(entry[1].get("device_id", 0)))
        return ("cuda", 0)

    def run_binding(self, feeds: Mapping[str, Any], output_device: Optional[str] = None) -> list[Any]:
        """All outputs as ``onnxruntime.OrtValue``s on *output_device* (``"cpu"``, ``"cuda"``,
        ``"cuda:N"``; default the session's device), through IO binding.

        A numpy feed is copied to the device once per call; an OrtValue feed (e.g. one already
        on the GPU) is bound as is. Outputs left on the GPU never bounce through the host:
        ``value.numpy()`` copies them back when wanted, ``value.data_ptr()`` hands them on.
        """
        device_type, device_id = self._output_device(output_device)
        binding = self._session.io_binding()
        for name, value in feeds.items():
            if name not in self.input_names:
                raise InputError(f"{self.path.name}: no input named {name!r}; inputs: {self.input_names}")
            if isinstance(value, np.ndarray):
                binding.bind_cpu_input(name, value)
            elif hasattr(value, "device_name") and hasattr(value, "data_ptr"):  # an OrtValue
                binding.bind_ortvalue_input(name, value)
            else:
                raise InputError(
                    f"{self.path.name}: feed {name!r} must be a numpy array or an onnxruntime "
                    f"OrtValue, got {type(value).__name__}"
                )
        for name in self.output_names:
            binding.bind_output(name, device_type, device_id)
        self._session.run_with_iobinding(binding)
        return list(binding.get_outputs())

    def _output_device(self, spec: Optional[str]) -> tuple[str, int]:
        own_type, own_id = self.device
        if spec is None:
            return own_type, own_id
        base, _, index = str(spec).strip().lower().partition(":")
        if base not in ("cpu", "cuda") or (index and not index.isdigit()) or (base == "cpu" and index):
            raise InputError(f"output_device must be 'cpu', 'cuda' or 'cuda:N', got {spec!r}")
        if base == "cuda" and own_type != "cuda":
            raise ProviderError(
                f"{self.path.name}: outputs on {spec!r} need a CUDA session; this one runs on "
                f"{', '.join(self.providers)}"
            )
        return base, int(index) if index else (own_id if base == "cuda" else 0)

    def __repr__(self) -> str:
        return f"OrtSession({self.path.name!r}, providers={self.providers})"


def _merge_options(
    entries: list[ProviderEntry], options: Mapping[str, Mapping[str, Any]], available: Sequence[str]
) -> list[ProviderEntry]:
    extra: dict[str, dict[str, Any]] = {}
    for key, opts in options.items():
        name = provider_name(_parse_one(key, available))
        if name not in (provider_name(e) for e in entries):
            raise InputError(
                f"options given for provider {key!r}, which is not among the requested "
                f"providers {[provider_name(e) for e in entries]}"
            )
        extra[name] = dict(opts)
    if not extra:
        return entries
    merged: list[ProviderEntry] = []
    for entry in entries:
        name = provider_name(entry)
        base = {} if isinstance(entry, str) else dict(entry[1])
        base.update(extra.get(name, {}))
        merged.append((name, base) if base or name != CPU else name)
    return merged
