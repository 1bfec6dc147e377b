"""The service's settings, one frozen dataclass (the CLI fills it; tests build it directly).

Nothing here imports the ASGI stack, so ``clip-rt serve --help`` and config errors work
without the ``[serve]`` extra.
"""

from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass, field
from typing import Optional

from ..errors import InputError

API_KEY_ENV = "CLIP_RT_API_KEY"
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmg]i?b?|b)?\s*$", re.IGNORECASE)
_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "m": 1000**2,
    "mb": 1000**2,
    "g": 1000**3,
    "gb": 1000**3,
    "ki": 1024,
    "kib": 1024,
    "mi": 1024**2,
    "mib": 1024**2,
    "gi": 1024**3,
    "gib": 1024**3,
}


@dataclass(frozen=True)
class ModelSpec:
    """One model to serve: ``NAME|DIR`` with an optional ``@precision`` (``ViT-B-32@int8``)."""

    source: str
    precision: Optional[str] = None

    @classmethod
    def parse(cls, text: str) -> ModelSpec:
        # A directory whose name contains '@' is taken as given.
        if "@" in text and not os.path.exists(text):
            name, _, precision = text.rpartition("@")
            if precision.lower() not in ("fp32", "fp16", "int8") or not name:
                raise InputError(
                    f"model {text!r}: expected NAME or NAME@PRECISION with PRECISION one of "
                    f"fp32, fp16, int8; got precision {precision!r}"
                )
            return cls(name, precision.lower())
        return cls(text)


@dataclass(frozen=True)
class ServeConfig:
    host: str = "127.0.0.1"
    port: int = 8000
    models: tuple[ModelSpec, ...] = ()
    provider: Optional[str] = None
    precision: Optional[str] = None  # for models without their own @precision
    threads: Optional[int] = None
    draft: bool = False
    # Dynamic batching, per model and encoder.
    max_batch_size: int = 8  # images per batch (8 is the measured best on a 2-core CPU)
    max_text_batch_size: int = 64
    max_wait_ms: float = 5.0
    # Wait out max_wait_ms even with nothing running and no other input on its way (fuller
    # batches, at the cost of a lone request's latency); off: such a batch runs at once.
    wait_when_idle: bool = False
    # Image batches encoded at once: None = the backend's throughput streams where the model's
    # plan runs batches in throughput mode (OpenVINO), else 1 (onnxruntime uses every core itself).
    image_streams: Optional[int] = None
    max_queue: int = 256  # items waiting (or decoding) per encoder before 503
    max_concurrency: int = 64  # requests handled at once before 503
    # Request limits.
    max_body_bytes: int = 32 * 1024 * 1024
    max_items: int = 64  # inputs per request (embeddings inputs, classify images, similarity texts)
    max_text_chars: int = 10_000
    max_labels: int = 1000
    max_label_chars: int = 1000  # a class name; its prompts are texts (max_text_chars)
    max_prompts: int = 4000  # labels x templates per classify request
    max_top_k: int = 1000
    max_image_pixels: Optional[int] = None  # None: PIL's default (what the CLI uses)
    # Connections and bodies (serve/connections.py, serve/inputs.py).
    max_connections: int = 1000  # open at once; idle ones are closed to make room for requests
    header_timeout: float = 10.0  # seconds for a request head, from connecting or the previous response
    body_timeout: float = 60.0  # seconds for a whole request body
    max_body_memory: Optional[int] = None  # request-body bytes held at once; None: 4 x max_body_bytes
    # Access.
    api_key: Optional[str] = None
    allow_dirs: tuple[str, ...] = ()
    indexes: tuple[tuple[str, str], ...] = ()  # (name, folder)
    heads: tuple[tuple[str, str], ...] = ()  # (name, head file): fitted heads for /classify's "head"
    # Process.
    decode_workers: int = field(default_factory=lambda: min(4, os.cpu_count() or 1))
    graceful_timeout: float = 60.0
    log_level: str = "info"
    access_log: bool = False

    def __post_init__(self) -> None:
        for name in (
            "max_batch_size",
            "max_text_batch_size",
            "max_queue",
            "max_concurrency",
            "max_body_bytes",
            "max_items",
            "max_text_chars",
            "max_labels",
            "max_label_chars",
            "max_prompts",
            "max_top_k",
            "decode_workers",
            "max_connections",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InputError(f"{name} must be a positive integer, got {value!r}")
        if not 0 <= self.port <= 65535:
            raise InputError(f"port must be in 0..65535, got {self.port}")
        if self.image_streams is not None and (
            isinstance(self.image_streams, bool) or not isinstance(self.image_streams, int) or self.image_streams < 1
        ):
            raise InputError(f"image_streams must be a positive integer, got {self.image_streams!r}")
        if self.max_wait_ms < 0:
            raise InputError(f"max_wait_ms must be >= 0, got {self.max_wait_ms}")
        for name in ("header_timeout", "body_timeout"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise InputError(f"{name} must be a positive number of seconds, got {value!r}")
        if self.max_body_memory is not None and self.max_body_memory < self.max_body_bytes:
            raise InputError(
                f"max_body_memory ({self.max_body_memory}) must be at least max_body_bytes "
                f"({self.max_body_bytes}): a body of the largest size could never be read"
            )
        if self.max_items > self.max_queue:
            raise InputError(
                f"max_items ({self.max_items}) must not exceed max_queue ({self.max_queue}): "
                "a request of max_items images could never be queued"
            )
        if self.max_image_pixels is not None and self.max_image_pixels < 1:
            raise InputError(f"max_image_pixels must be positive, got {self.max_image_pixels}")
        if self.api_key is not None and not self.api_key.strip():
            raise InputError(
                f"the API key is empty (--api-key or ${API_KEY_ENV} set to a blank value): give a "
                f"non-empty key, or leave both unset to serve without one"
            )
        names = [n for n, _ in self.indexes]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise InputError(f"two indexes share the name(s) {', '.join(dupes)}: name them with --index NAME=DIR")
        heads = [n for n, _ in self.heads]
        dupes = sorted({n for n in heads if heads.count(n) > 1})
        if dupes:
            raise InputError(f"two heads share the name(s) {', '.join(dupes)}: name them with --head NAME=FILE")

    @property
    def text_queue(self) -> int:
        """Texts that may wait per text encoder: one classify request may bring max_prompts."""
        return max(self.max_queue, self.max_prompts)

    @property
    def body_memory(self) -> int:
        """Request-body bytes held at once, over all requests (503 + Retry-After beyond)."""
        return self.max_body_memory if self.max_body_memory is not None else 4 * self.max_body_bytes

    @property
    def max_json_values(self) -> int:
        """JSON values a body may hold: what the largest valid request needs (a labels object of
        max_labels names with prompt lists, max_prompts prompts, max_items inputs as objects),
        with room to spare. Anything beyond is refused before parsing (serve/inputs.py)."""
        return 2 * self.max_labels + self.max_prompts + 4 * self.max_items + 64

    max_json_depth = 8  # the deepest valid body nests 3 (body, labels object, prompt list)

    @property
    def loopback(self) -> bool:
        return is_loopback(self.host)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def parse_size(text: str) -> int:
    """``"32MB"``, ``"512k"``, ``"1GiB"``, ``"1000"`` -> bytes (k/M/G are powers of 1000, Ki/Mi/Gi of 1024)."""
    m = _SIZE.match(str(text))
    if not m:
        raise InputError(f"expected a size such as 32MB, 512KiB or 1000000 (bytes), got {text!r}")
    value = float(m.group(1)) * _UNITS[(m.group(2) or "").lower()]
    if value < 1:
        raise InputError(f"expected a size of at least 1 byte, got {text!r}")
    return int(value)


def parse_head(text: str) -> tuple[str, str]:
    """``NAME=FILE`` or ``FILE`` (named after the file, without its extension)."""
    name, sep, path = text.partition("=")
    if not sep:
        path = text
        name = os.path.splitext(os.path.basename(text))[0]
    if not name or not path:
        raise InputError(f"expected --head NAME=FILE or --head FILE, got {text!r}")
    return name, path


def parse_index(text: str) -> tuple[str, str]:
    """``NAME=DIR`` or ``DIR`` (named after the folder)."""
    name, sep, folder = text.partition("=")
    if not sep:
        folder = text
        name = os.path.basename(os.path.normpath(text))
    if not name or not folder:
        raise InputError(f"expected --index NAME=DIR or --index DIR, got {text!r}")
    return name, folder
