"""The bundle manifest: the one file the runtime reads to know a bundle (format in models/README.md)."""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

from ..errors import BundleError, ChecksumError
from .store import MANIFEST_NAME

FORMAT_VERSION = 1
PRECISIONS = ("fp32", "fp16", "int8")
ENCODERS = ("image", "text")

# Graph I/O names, fixed by the format.
IMAGE_INPUT = "pixel_values"  # float32 (N, 3, H, W), already normalised
IMAGE_OUTPUT = "image_embeds"  # float32 (N, D), L2-normalised
TEXT_INPUT = "input_ids"  # int64 (N, L); L == context_length unless text.dynamic_sequence
TEXT_OUTPUT = "text_embeds"  # float32 (N, D), L2-normalised


@dataclass(frozen=True)
class ImageConfig:
    size: tuple[int, int]  # (height, width) fed to the image graph
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bicubic"  # bicubic | bilinear
    resize_mode: str = "shortest"  # shortest | longest | squash (open_clip's names)
    fill_color: int = 0  # padding value for resize_mode == "longest"


@dataclass(frozen=True)
class TextConfig:
    context_length: int
    vocab_size: int
    tokenizer_file: str = "tokenizer.json"
    sot_token_id: int = 49406
    eot_token_id: int = 49407
    pad_token_id: int = 0
    # True when the text graph accepts any L <= context_length and gives the same
    # embedding as at full length (causal tower pooled at EOT): the runtime then only
    # encodes up to the longest prompt in a batch.
    dynamic_sequence: bool = False


@dataclass(frozen=True)
class FileEntry:
    sha256: str
    bytes: int


@dataclass(frozen=True)
class GraphEntry:
    file: str  # the .onnx file, relative to the bundle
    external_data: tuple[str, ...] = ()  # companion files (models over 2 GB)


@dataclass(frozen=True)
class ParityFigure:
    """One output's agreement with torch, measured at export."""

    max_abs_diff: float
    min_cosine: float
    samples: int
    tolerance: dict[str, float]
    passed: bool
    # Optional (bundles before clip-rt 0.1's static int8 do not have them):
    # zero-shot top-1 agreement with torch fp32 on the parity inputs, and the largest
    # difference between an input encoded alone and within a batch.
    top1_agreement: Optional[float] = None
    batch_max_abs_diff: Optional[float] = None


@dataclass(frozen=True)
class Calibration:
    """What a static int8 graph's activation scales were measured on."""

    method: str  # minmax | percentile | entropy
    source: str  # "photos" (real photographs), "scenes" (generated), "prompts"
    inputs: tuple[str, ...]  # names of the calibration inputs (photo names, scene seeds, prompts)
    samples: int  # how many inputs were run


@dataclass(frozen=True)
class Quantization:
    """How one int8 graph was made (manifest ``quantization.<precision>.<encoder>``)."""

    kind: str  # "static": calibrated activation scales; "dynamic": scales computed per run
    per_channel: Optional[bool]  # per-output-channel weight scales (None: not recorded)
    weights: str = "int8"
    activations: str = "uint8"
    ops: tuple[str, ...] = ()  # op types whose weights are int8
    calibration: Optional[Calibration] = None  # static only
    # True when an input's embedding does not depend on the other inputs of its batch
    # (checked at export: alone vs in a batch, max abs diff <= 1e-5).
    batch_independent: bool = False


# What an int8 graph without a ``quantization`` record is: bundles written before the record
# existed used onnxruntime's dynamic quantisation, whose per-batch activation scale couples
# the inputs of a batch.
LEGACY_INT8 = Quantization(kind="dynamic", per_channel=None, ops=(), batch_independent=False)


@dataclass
class Manifest:
    name: str
    architecture: str
    pretrained: Optional[str]  # open_clip tag, "checkpoint", or None (random weights)
    checkpoint_sha256: Optional[str]
    embed_dim: int
    logit_scale: float
    logit_bias: Optional[float]
    image: ImageConfig
    text: TextConfig
    graphs: dict[str, dict[str, GraphEntry]]  # precision -> encoder -> graph
    files: dict[str, FileEntry]  # every file in the bundle but the manifest
    parity: dict[str, dict[str, ParityFigure]]  # precision -> encoder -> figure
    versions: dict[str, str]
    created: str
    format_version: int = FORMAT_VERSION
    notes: list[str] = field(default_factory=list)
    # precision -> encoder -> how the graph was quantised (int8 only; optional, see LEGACY_INT8)
    quantization: dict[str, dict[str, Quantization]] = field(default_factory=dict)

    # -- identity -------------------------------------------------------------
    @property
    def fingerprint(self) -> str:
        """Identifies the weights: sha256 over the graphs' and tokenizer's checksums."""
        h = hashlib.sha256()
        for name in sorted(self.files):
            h.update(f"{name}:{self.files[name].sha256}\n".encode())
        return h.hexdigest()[:32]

    @property
    def precisions(self) -> list[str]:
        return [p for p in PRECISIONS if p in self.graphs]

    def graph(self, precision: str, encoder: str) -> GraphEntry:
        if precision not in self.graphs:
            raise BundleError(
                f"bundle {self.name!r} has no {precision!r} graphs; it has: {', '.join(self.precisions)}"
            )
        try:
            return self.graphs[precision][encoder]
        except KeyError:
            raise BundleError(f"bundle {self.name!r} has no {precision} {encoder} graph") from None

    def quantization_of(self, precision: str, encoder: str) -> Optional[Quantization]:
        """How the *precision* *encoder* graph was quantised: its record, LEGACY_INT8 for an int8
        graph of a bundle without one, None for float graphs."""
        record = self.quantization.get(precision, {}).get(encoder)
        if record is None and precision == "int8" and encoder in self.graphs.get("int8", {}):
            return LEGACY_INT8
        return record

    # -- (de)serialisation ------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["fingerprint"] = self.fingerprint
        return d

    def write(self, bundle_dir: Path) -> Path:
        path = Path(bundle_dir) / MANIFEST_NAME
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=2, sort_keys=False) + "\n", encoding="utf-8")
        os.replace(tmp, path)
        return path

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "manifest") -> "Manifest":
        version = d.get("format_version")
        if not isinstance(version, int):
            raise BundleError(f"{source}: no integer format_version; is this a clip-rt bundle?")
        if version > FORMAT_VERSION:
            raise BundleError(
                f"{source}: bundle format version {version} is newer than this clip-rt reads "
                f"(up to {FORMAT_VERSION}); upgrade clip-rt or re-export the model"
            )
        try:
            img = d["image"]
            txt = d["text"]
            return cls(
                name=str(d["name"]),
                architecture=str(d["architecture"]),
                pretrained=d.get("pretrained"),
                checkpoint_sha256=d.get("checkpoint_sha256"),
                embed_dim=int(d["embed_dim"]),
                logit_scale=float(d["logit_scale"]),
                logit_bias=None if d.get("logit_bias") is None else float(d["logit_bias"]),
                image=ImageConfig(
                    size=(int(img["size"][0]), int(img["size"][1])),
                    mean=tuple(float(x) for x in img["mean"]),  # type: ignore[arg-type]
                    std=tuple(float(x) for x in img["std"]),  # type: ignore[arg-type]
                    interpolation=str(img.get("interpolation", "bicubic")),
                    resize_mode=str(img.get("resize_mode", "shortest")),
                    fill_color=int(img.get("fill_color", 0)),
                ),
                text=TextConfig(**txt),
                graphs={
                    prec: {
                        enc: GraphEntry(file=g["file"], external_data=tuple(g.get("external_data", ())))
                        for enc, g in encs.items()
                    }
                    for prec, encs in d["graphs"].items()
                },
                files={k: FileEntry(**v) for k, v in d["files"].items()},
                parity={
                    prec: {enc: ParityFigure(**fig) for enc, fig in encs.items()}
                    for prec, encs in d.get("parity", {}).items()
                },
                versions=dict(d.get("versions", {})),
                created=str(d.get("created", "")),
                format_version=version,
                notes=list(d.get("notes", [])),
                quantization={
                    prec: {enc: _quantization(q) for enc, q in encs.items()}
                    for prec, encs in d.get("quantization", {}).items()
                },
            )
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise BundleError(f"{source}: malformed manifest ({type(exc).__name__}: {exc})") from exc


def _quantization(d: dict[str, Any]) -> Quantization:
    cal = d.get("calibration")
    return Quantization(
        kind=str(d["kind"]),
        per_channel=None if d.get("per_channel") is None else bool(d["per_channel"]),
        weights=str(d.get("weights", "int8")),
        activations=str(d.get("activations", "uint8")),
        ops=tuple(str(o) for o in d.get("ops", ())),
        calibration=None if cal is None else Calibration(
            method=str(cal["method"]), source=str(cal["source"]),
            inputs=tuple(str(i) for i in cal.get("inputs", ())), samples=int(cal["samples"]),
        ),
        batch_independent=bool(d.get("batch_independent", False)),
    )


def read_manifest(bundle_dir: Path) -> Manifest:
    path = Path(bundle_dir) / MANIFEST_NAME
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BundleError(f"{bundle_dir}: no {MANIFEST_NAME}; not a clip-rt bundle") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BundleError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise BundleError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return Manifest.from_dict(data, source=str(path))


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            block = f.read(chunk)
            if not block:
                break
            h.update(block)
    return h.hexdigest()


def verify_files(bundle_dir: Path, manifest: Manifest, names: Optional[list[str]] = None) -> None:
    """Check size and sha256 of *names* (default: all files); raise ChecksumError naming the file."""
    for name in names if names is not None else sorted(manifest.files):
        entry = manifest.files.get(name)
        if entry is None:
            raise BundleError(f"{bundle_dir}: {name} is not listed in the manifest")
        path = Path(bundle_dir) / name
        if not path.is_file():
            raise BundleError(f"{bundle_dir}: {name} is missing (listed in the manifest)")
        size = path.stat().st_size
        if size != entry.bytes:
            raise ChecksumError(
                f"{path}: size {size} bytes does not match the manifest's {entry.bytes}; the bundle is corrupt or was modified, re-export it"
            )
        digest = sha256_file(path)
        if digest != entry.sha256:
            raise ChecksumError(
                f"{path}: sha256 {digest[:16]}... does not match the manifest's {entry.sha256[:16]}...; the bundle is corrupt or was modified, re-export it"
            )
