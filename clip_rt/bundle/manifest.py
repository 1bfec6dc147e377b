"""The bundle manifest: the one file the runtime reads to know a bundle (format in docs/bundle-format.md)."""

from __future__ import annotations

import hashlib
import json
import os
import stat
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

from ..errors import BundleError, ChecksumError
from .schema import (
    Bool,
    Float,
    Int,
    ListOf,
    MapOf,
    Nullable,
    Obj,
    RelPath,
    SchemaError,
    Str,
    describe,
    opt,
    req,
    validate,
)
from .store import MANIFEST_NAME

# The newest layout this clip-rt reads. A bundle says the oldest layout that reads it right:
# 1 for CLIP BPE + softmax bundles (every older runtime reads them), 2 when it needs what an
# older runtime would silently ignore (a Hugging Face tokenizer, sigmoid scoring):
# see required_format_version.
FORMAT_VERSION = 2
PRECISIONS = ("fp32", "fp16", "int8")
ENCODERS = ("image", "text")
QUANTIZERS = ("onnxruntime", "nncf")  # what wrote an int8 graph (Quantization.method)
RESIZE_MODES = ("shortest", "longest", "squash")
INTERPOLATIONS = ("bicubic", "bilinear", "random")  # open_clip's names; random = bicubic at inference
MAX_MANIFEST_BYTES = 16 << 20  # an exported manifest is a few KB

# Graph I/O names, fixed by the format.
IMAGE_INPUT = "pixel_values"  # float32 (N, 3, H, W), already normalised
IMAGE_OUTPUT = "image_embeds"  # float32 (N, D), L2-normalised
TEXT_INPUT = "input_ids"  # int64 (N, L); L == context_length unless text.dynamic_sequence
TEXT_OUTPUT = "text_embeds"  # float32 (N, D), L2-normalised

# How text becomes ids (``text.tokenizer_kind``): open_clip's CLIP BPE (SimpleTokenizer, the
# default, what every bundle before it had) or a Hugging Face tokenizer as open_clip's
# HFTokenizer runs it (SigLIP, SigLIP2, XLM-R, NLLB, RoBERTa ... towers).
TOKENIZER_KINDS = ("clip_bpe", "hf")
# open_clip's text cleaning functions (open_clip.tokenizer.get_clean_fn).
CLEAN_FUNCTIONS = ("lower", "whitespace", "canonicalize")
# How zero-shot probabilities are made from logits (``scoring``): CLIP's softmax over the
# labels, or SigLIP's independent per-label sigmoid of ``logit_scale * cos + logit_bias``.
SCORINGS = ("softmax", "sigmoid")


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
    # CLIP BPE: SOT + tokens + EOT. Hugging Face tokenizers: their bos/cls and eos/sep ids
    # (informational, None where the tokenizer has none: its post-processor adds the specials).
    sot_token_id: Optional[int] = 49406
    eot_token_id: Optional[int] = 49407
    pad_token_id: int = 0
    # True when the text graph accepts any L <= context_length and gives the same
    # embedding as at full length (causal tower pooled at EOT, or a tower that masks padding
    # out of attention and pooling): the runtime then only encodes up to the longest prompt
    # in a batch.
    dynamic_sequence: bool = False
    # -- optional, from clip-rt 0.2 (older bundles: CLIP BPE, the defaults) --------------------
    tokenizer_kind: str = "clip_bpe"  # TOKENIZER_KINDS
    clean: str = "lower"  # open_clip's text cleaning (CLEAN_FUNCTIONS) before tokenising
    # hf: the tokenizer.json's own post-processor adds the special tokens; the runtime then
    # truncates to context_length on *truncation_side* and pads with pad_token_id on
    # *padding_side*, as transformers does for ``padding="max_length", truncation=True``.
    padding_side: str = "right"
    truncation_side: str = "right"
    # open_clip's HFTokenizer(strip_sep_token=True): sep_token_id ids are replaced by 0.
    strip_sep_token: bool = False
    sep_token_id: Optional[int] = None
    # How the text tower pools (informational: the graph does it): "argmax"/"eos" (EOT token),
    # "last", "first", "mean", "cls" ... None when not recorded.
    pooling: Optional[str] = None


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

    method: str  # minmax | percentile | entropy (onnxruntime); nncf's range estimation: "nncf"
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
    # The quantiser that wrote the graph: "onnxruntime" (onnxruntime.quantization; bundles
    # before the field have no other) or "nncf" (nncf.quantize, QDQ ONNX); the runtime's backend
    # choice matches its measured rows on it (clip_rt.engine.backends.choose.int8_scheme).
    method: str = "onnxruntime"
    # The quantiser's settings, as text (nncf: preset, model_type, SmoothQuant alpha, ...).
    parameters: dict[str, str] = field(default_factory=dict, hash=False)


@dataclass(frozen=True)
class ParityReference:
    """The fp32 graphs' embeddings of the export's sample inputs (``clip_rt_export.sample_inputs``:
    procedural scenes and prompts, prepared as the runtime prepares its inputs), stored at export
    in *file* (an ``.npz`` of float32 arrays ``image`` and ``text``, *image* and *text* rows) so
    that a mode with no graph of its own (OpenVINO's bf16 compute) is checked against fp32
    without loading the fp32 graphs; a slim bundle can then take such a mode too."""

    file: str
    image: int
    text: int


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
    # SCORINGS: how zero-shot scores are made (optional; older bundles are CLIP models: softmax)
    scoring: str = "softmax"
    # The fp32 embeddings of the sample inputs (optional; bundles before it check against the fp32 graphs)
    parity_reference: Optional[ParityReference] = None

    # -- identity -------------------------------------------------------------
    @property
    def fingerprint(self) -> str:
        """Identifies the weights: sha256 over the graphs' and tokenizer's checksums."""
        h = hashlib.sha256()
        for name in sorted(self.files):
            h.update(f"{name}:{self.files[name].sha256}\n".encode())
        return h.hexdigest()[:32]

    @property
    def text_fingerprint(self) -> str:
        """Identifies a text embedding's inputs: :attr:`fingerprint` plus every text setting
        (context length, special ids, dynamic sequence, tokenizer file...), so that editing the
        manifest never reuses embeddings cached under the old settings."""
        settings = json.dumps(asdict(self.text), sort_keys=True)
        return hashlib.sha256(f"{self.fingerprint}\n{settings}".encode()).hexdigest()[:32]

    @property
    def precisions(self) -> list[str]:
        return [p for p in PRECISIONS if p in self.graphs]

    def graph(self, precision: str, encoder: str) -> GraphEntry:
        if precision not in self.graphs:
            raise BundleError(f"bundle {self.name!r} has no {precision!r} graphs; it has: {', '.join(self.precisions)}")
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
    def from_dict(cls, d: Any, source: str = "manifest") -> Manifest:
        """Validate *d* against :data:`MANIFEST_SCHEMA` (all of it, once) and build the manifest."""
        version = d.get("format_version") if isinstance(d, dict) else None
        if type(version) is int and version > FORMAT_VERSION:  # a newer layout: say so, not "malformed"
            raise BundleError(
                f"{source}: bundle format version {version} is newer than this clip-rt reads "
                f"(up to {FORMAT_VERSION}); upgrade clip-rt or re-export the model"
            )
        try:
            return validate(MANIFEST_SCHEMA, d)
        except SchemaError as exc:
            raise BundleError(f"{source}: malformed manifest: {exc}") from None


def required_format_version(manifest: Manifest) -> int:
    """The lowest format version whose readers use *manifest* correctly: 2 when it needs a
    Hugging Face tokenizer or sigmoid scoring (a version-1 reader would tokenise with CLIP BPE
    or score with a softmax, without an error), else 1."""
    if manifest.text.tokenizer_kind != "clip_bpe" or manifest.scoring != "softmax":
        return 2
    return 1


# -- the schema: every field a manifest may have, with its type and bounds -------------------------
# Adding a field: one line here, plus the field (with a default, so that older bundles keep
# loading) in its dataclass above. Unknown keys are ignored (see schema.py). Bounds are generous
# for any real model and small enough that nothing allocates hugely from them.
_TEXT = r"[^\x00-\x1f\x7f-\x9f]*"  # printable in a terminal: no control characters
_SHA256 = Str(64, min_len=64, pattern=r"[0-9a-f]{64}", what="64 lower-case hex digits (sha256)")
_KEY = Str(32, min_len=1, pattern=r"[a-z][a-z0-9_]*", what="a lower-case name")
MAX_IMAGE_SIDE = 4096  # pixels of the graph's input; an (N, 3, 4096, 4096) batch of 8 is 1.6 GB
MAX_CONTEXT = 8192  # tokens
MAX_VOCAB = 1 << 24
MAX_FILE_BYTES = 1 << 40
MAX_REFERENCE_ROWS = 4096  # sample inputs of the parity reference, per encoder


def _check_token_ids(text: dict[str, Any], path: str) -> None:
    for key in ("sot_token_id", "eot_token_id", "pad_token_id", "sep_token_id"):
        if text[key] is not None and text[key] >= text["vocab_size"]:
            raise SchemaError(f"{path}.{key}", f"{text[key]} is not below text.vocab_size ({text['vocab_size']})")
    if text["tokenizer_kind"] == "clip_bpe":  # CLIP BPE adds SOT and EOT itself: both needed, distinct
        for key in ("sot_token_id", "eot_token_id"):
            if text[key] is None:
                raise SchemaError(f"{path}.{key}", "required for the CLIP BPE tokenizer, got null")
        if text["sot_token_id"] == text["eot_token_id"]:
            raise SchemaError(f"{path}.eot_token_id", "must differ from text.sot_token_id")
    if text["strip_sep_token"] and text["sep_token_id"] is None:
        raise SchemaError(f"{path}.sep_token_id", "required when text.strip_sep_token is true")


def _check_files_listed(m: dict[str, Any], path: str) -> None:
    """Every file the runtime opens has a checksum: graphs, their external data, the tokenizer."""
    named = [("text.tokenizer_file", m["text"].tokenizer_file)]
    if m.get("parity_reference") is not None:
        named.append(("parity_reference.file", m["parity_reference"].file))
    for precision, encoders in m["graphs"].items():
        for encoder, graph in encoders.items():
            named.append((f"graphs.{precision}.{encoder}.file", graph.file))
            named += [
                (f"graphs.{precision}.{encoder}.external_data[{i}]", name) for i, name in enumerate(graph.external_data)
            ]
    for where, name in named:
        if name not in m["files"]:
            raise SchemaError(
                where, f"{name!r} is not listed in files (every file a bundle uses needs its size and sha256 there)"
            )
    if not any(p in m["graphs"] for p in PRECISIONS):
        raise SchemaError(
            "graphs",
            f"no graphs of a precision this clip-rt runs ({', '.join(PRECISIONS)}); "
            f"found {', '.join(m['graphs']) or 'none'}",
        )


_QUANTIZATION = Obj(
    {
        "kind": req(Str(32, choices=("static", "dynamic"))),
        "per_channel": opt(Nullable(Bool())),
        "weights": opt(Str(32, min_len=1, pattern=_TEXT), "int8"),
        "activations": opt(Str(32, min_len=1, pattern=_TEXT), "uint8"),
        "ops": opt(ListOf(Str(64, min_len=1, pattern=_TEXT), max_len=256, as_tuple=True), ()),
        "calibration": opt(
            Nullable(
                Obj(
                    {
                        "method": req(Str(32, min_len=1, pattern=_TEXT)),
                        "source": req(Str(1000, min_len=1, pattern=_TEXT)),
                        "inputs": opt(ListOf(Str(1000, pattern=_TEXT), max_len=100_000, as_tuple=True), ()),
                        "samples": req(Int(0, 10**9)),
                    },
                    build=Calibration,
                )
            )
        ),
        "batch_independent": opt(Bool(), False),
        "method": opt(Str(32, choices=QUANTIZERS), "onnxruntime"),
        "parameters": opt(MapOf(Str(64, min_len=1, pattern=_TEXT), Str(1000, pattern=_TEXT), max_len=64), {}),
    },
    build=Quantization,
)

MANIFEST_SCHEMA = Obj(
    {
        "format_version": req(Int(1, FORMAT_VERSION)),
        "name": req(Str(200, min_len=1, pattern=_TEXT)),
        "architecture": req(Str(200, min_len=1, pattern=_TEXT)),
        "pretrained": opt(Nullable(Str(1000, pattern=_TEXT))),
        "checkpoint_sha256": opt(Nullable(_SHA256)),
        "embed_dim": req(Int(1, 65536)),
        "logit_scale": req(Float(0.0, 1e6, lo_open=True)),
        "logit_bias": opt(Nullable(Float(-1e6, 1e6))),
        "image": req(
            Obj(
                {
                    "size": req(ListOf(Int(1, MAX_IMAGE_SIDE), max_len=2, min_len=2, as_tuple=True)),
                    "mean": req(ListOf(Float(-1e3, 1e3), max_len=3, min_len=3, as_tuple=True)),
                    "std": req(ListOf(Float(0.0, 1e3, lo_open=True), max_len=3, min_len=3, as_tuple=True)),
                    "interpolation": opt(Str(16, choices=INTERPOLATIONS), "bicubic"),
                    "resize_mode": opt(Str(16, choices=RESIZE_MODES), "shortest"),
                    "fill_color": opt(Int(0, 255), 0),
                },
                build=ImageConfig,
            )
        ),
        "text": req(
            Obj(
                {
                    "context_length": req(Int(2, MAX_CONTEXT)),
                    "vocab_size": req(Int(2, MAX_VOCAB)),
                    "tokenizer_file": opt(RelPath(), "tokenizer.json"),
                    "sot_token_id": opt(Nullable(Int(0, MAX_VOCAB)), 49406),
                    "eot_token_id": opt(Nullable(Int(0, MAX_VOCAB)), 49407),
                    "pad_token_id": opt(Int(0, MAX_VOCAB), 0),
                    "dynamic_sequence": opt(Bool(), False),
                    "tokenizer_kind": opt(Str(16, choices=TOKENIZER_KINDS), "clip_bpe"),
                    "clean": opt(Str(16, choices=CLEAN_FUNCTIONS), "lower"),
                    "padding_side": opt(Str(8, choices=("right", "left")), "right"),
                    "truncation_side": opt(Str(8, choices=("right", "left")), "right"),
                    "strip_sep_token": opt(Bool(), False),
                    "sep_token_id": opt(Nullable(Int(0, MAX_VOCAB))),
                    "pooling": opt(Nullable(Str(32, min_len=1, pattern=_TEXT))),
                },
                build=TextConfig,
                checks=(_check_token_ids,),
            )
        ),
        "graphs": req(
            MapOf(
                _KEY,
                MapOf(
                    _KEY,
                    Obj(
                        {
                            "file": req(RelPath()),
                            "external_data": opt(ListOf(RelPath(), max_len=4096, as_tuple=True), ()),
                        },
                        build=GraphEntry,
                    ),
                    max_len=8,
                    min_len=1,
                ),
                max_len=16,
                min_len=1,
            )
        ),
        "files": req(
            MapOf(
                RelPath(),
                Obj({"sha256": req(_SHA256), "bytes": req(Int(0, MAX_FILE_BYTES))}, build=FileEntry),
                max_len=4096,
                min_len=1,
            )
        ),
        "parity": opt(
            MapOf(
                _KEY,
                MapOf(
                    _KEY,
                    Obj(
                        {
                            "max_abs_diff": req(Float(0.0, 1e6)),
                            "min_cosine": req(Float(-1.01, 1.01)),
                            "samples": req(Int(0, 10**9)),
                            "tolerance": req(MapOf(Str(64, min_len=1, pattern=_TEXT), Float(-1e6, 1e6), max_len=16)),
                            "passed": req(Bool()),
                            "top1_agreement": opt(Nullable(Float(0.0, 1.0))),
                            "batch_max_abs_diff": opt(Nullable(Float(0.0, 1e6))),
                        },
                        build=ParityFigure,
                    ),
                    max_len=8,
                ),
                max_len=16,
            ),
            {},
        ),
        "versions": opt(MapOf(Str(64, min_len=1, pattern=_TEXT), Str(200, pattern=_TEXT), max_len=64), {}),
        "created": opt(Str(64, pattern=_TEXT), ""),
        "notes": opt(ListOf(Str(10_000), max_len=1000), []),
        "quantization": opt(MapOf(_KEY, MapOf(_KEY, _QUANTIZATION, max_len=8), max_len=16), {}),
        "scoring": opt(Str(16, choices=SCORINGS), "softmax"),
        "parity_reference": opt(
            Nullable(
                Obj(
                    {
                        "file": req(RelPath()),
                        "image": req(Int(1, MAX_REFERENCE_ROWS)),
                        "text": req(Int(1, MAX_REFERENCE_ROWS)),
                    },
                    build=ParityReference,
                )
            ),
            None,
        ),
    },
    build=Manifest,
    checks=(_check_files_listed,),
)


def read_manifest(bundle_dir: Path) -> Manifest:
    """Read, validate and confine a bundle's manifest: every path it names must stay inside
    *bundle_dir* (symbolic links resolved), or BundleError before any of them is opened."""
    bundle_dir = Path(bundle_dir)
    path = bundle_dir / MANIFEST_NAME
    check_confined(bundle_dir, MANIFEST_NAME)
    from ..inputs.bounded import file_kind

    try:
        st = path.stat()
        if not stat.S_ISREG(st.st_mode):  # a device or FIFO would be read forever (or block)
            raise BundleError(
                f"{path}: the manifest is a {file_kind(st.st_mode)}; expected a regular file "
                "(a JSON file written by `clip-rt export`)"
            )
        if st.st_size > MAX_MANIFEST_BYTES:
            raise BundleError(f"{path}: {st.st_size} bytes; a manifest is at most {MAX_MANIFEST_BYTES} bytes")
        raw = path.read_bytes()
    except FileNotFoundError:
        raise BundleError(f"{bundle_dir}: no {MANIFEST_NAME}; not a clip-rt bundle") from None
    except OSError as exc:  # permission denied, an I/O error
        raise BundleError(f"{path}: cannot read the manifest ({exc.strerror or exc})") from None
    if len(raw) > MAX_MANIFEST_BYTES:  # grew between the stat and the read
        raise BundleError(f"{path}: over {MAX_MANIFEST_BYTES} bytes; a manifest is at most {MAX_MANIFEST_BYTES} bytes")
    try:
        data = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise BundleError(f"{path}: not valid JSON (not UTF-8: {exc})") from None
    except RecursionError:
        raise BundleError(f"{path}: not valid JSON (nested too deeply)") from None
    except ValueError as exc:  # JSONDecodeError, or an integer of more than 4300 digits
        raise BundleError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise BundleError(f"{path}: expected a JSON object, got {describe(data)}")
    manifest = Manifest.from_dict(data, source=str(path))
    for name in manifest.files:
        check_confined(bundle_dir, name)
    return manifest


def check_confined(bundle_dir: Path, name: str) -> Path:
    """``bundle_dir / name`` with symbolic links resolved; BundleError if that is outside the
    bundle directory (itself resolved: a bundle may live behind a link). Opens nothing."""
    root = os.path.realpath(bundle_dir)
    target = os.path.realpath(os.path.join(root, name))
    if target == root or os.path.commonpath([root, target]) != root:
        raise BundleError(
            f"{Path(bundle_dir) / name}: resolves to {display(target)}, outside the bundle "
            f"directory {display(root)}; a bundle may only use its own files"
        )
    return Path(target)


def display(path: str | Path) -> str:
    """A path for a message: undecodable bytes and control characters escaped."""
    text = os.fsencode(path).decode("utf-8", "backslashreplace")
    return "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii") for ch in text)


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
        check_confined(Path(bundle_dir), name)  # again: the disk may have changed since the read
        path = Path(bundle_dir) / name
        if not path.is_file():
            from ..inputs.bounded import file_kind

            try:
                what = f"a {file_kind(path.stat().st_mode)}, not a file"
            except OSError:
                what = "missing"
            raise BundleError(f"{bundle_dir}: {name} is {what} (listed in the manifest)")
        try:
            size = path.stat().st_size
            if size != entry.bytes:
                raise ChecksumError(
                    f"{path}: size {size} bytes does not match the manifest's {entry.bytes}; the bundle is corrupt or "
                    "was modified, re-export it"
                )
            digest = sha256_file(path)
        except OSError as exc:  # permission denied, an I/O error
            raise BundleError(f"{path}: cannot read it ({exc.strerror or exc})") from None
        if digest != entry.sha256:
            raise ChecksumError(
                f"{path}: sha256 {digest[:16]}... does not match the manifest's {entry.sha256[:16]}...; the bundle is "
                "corrupt or was modified, re-export it"
            )
