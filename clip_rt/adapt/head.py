"""A fitted head: the linear probe, the zero-shot part it is blended with, and what it was
fitted on, in a small file of clip-rt's own layout (no pickle, nothing executed on load).

File layout (all integers little-endian)::

    MAGIC                      16 bytes  b"\\x89CLIPRT-HEAD\\r\\n\\x1a\\n"
    header length              8 bytes   unsigned
    header                     UTF-8 JSON (padded with spaces to a multiple of 8 bytes)
    tensors                    float32, little-endian, C order, where the header says
    checksum                   32 bytes  sha256 of everything before it

Reading checks, in order and before anything is used: the size (at most MAX_FILE_BYTES), the
signature, the checksum (a damaged or cut-short file stops here), the header against a schema
(every field's type and bounds; a newer format version is named as such), the tensors' shapes
against the labels and the embedding size, that the tensors tile the data exactly, and that
every value is finite. Any failure is one :class:`HeadError` saying what was expected.

Applying a head to a model checks the bundle's fingerprint (another bundle: refused) and the
image encoder's precision (another one: a warning; see :func:`check_compatible`).
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import struct
import warnings
from dataclasses import dataclass, field
from typing import Any, Optional, Union

import numpy as np

from ..bundle import schema as s
from ..display import display_path
from ..errors import InputError
from ..inputs.texts import check_utf8
from ..zeroshot import Classification, classifications, parse_labels
from .metrics import Comparison, mcnemar_p
from .probe import zero_shot_probabilities

MAGIC = b"\x89CLIPRT-HEAD\r\n\x1a\n"
FORMAT = "clip-rt head"
FORMAT_VERSION = 1
MAX_FILE_BYTES = 512 * 1024 * 1024
MAX_HEADER_BYTES = 32 * 1024 * 1024
MAX_LABELS = 100_000
MAX_DIM = 65_536
_CHECKSUM = 32
_PREFIX = len(MAGIC) + 8
TENSORS = ("weight", "bias", "zero_shot")


class HeadError(InputError):
    """A head file is missing, damaged, not a head, or does not fit the model it is used with."""


@dataclass(frozen=True)
class HeadModel:
    """The bundle a head was fitted on: its name, fingerprint (the weights), the precision of
    the image encoder that computed the training embeddings, and the embedding size."""

    name: str
    fingerprint: str
    precision: str
    embed_dim: int


@dataclass(frozen=True)
class Training:
    """What the head was fitted on and how: readable images per class, unreadable ones left
    out, the folds and seed of the cross-validation, the chosen ``C`` and the grids searched."""

    images: int
    per_class: dict[str, int]
    failed: int
    folds: int
    seed: int
    c: float
    c_grid: list[float]
    blend_grid: list[float]


@dataclass(frozen=True)
class CrossValidated:
    """Out-of-fold accuracy on the training images: zero-shot (the head's own zero-shot part),
    the probe alone (its best C), and the head (the chosen C and blend); and the images only
    one of head / zero-shot got right (for the advice). The same folds chose C and the blend,
    so the head's figure is slightly optimistic: ``clip-rt eval --head`` on images the head
    has not seen is the unbiased check."""

    zero_shot_accuracy: float
    probe_accuracy: float
    head_accuracy: float
    images: int
    folds: int
    head_only_right: int
    zero_shot_only_right: int

    def comparison(self, blend: Optional[float] = None) -> Comparison:
        return Comparison(
            self.zero_shot_accuracy,
            self.head_accuracy,
            self.images,
            self.head_only_right,
            self.zero_shot_only_right,
            mcnemar_p(self.head_only_right, self.zero_shot_only_right),
            f"{self.folds}-fold cross-validation of {self.images} images",
            blend,
        )


@dataclass(frozen=True, eq=False)
class Head:
    """A few-shot classifier on a bundle's image embeddings. Probabilities (softmax over
    :attr:`labels`, summing to 1 whatever the bundle's scoring)::

        p = (1 - blend) * softmax(logit_scale * cos(x, zero_shot)) + blend * softmax(x @ weight + bias)

    It classifies like a zero-shot classifier (:meth:`classify_embeddings`, :meth:`probabilities`,
    :attr:`names`), needs no text encoder, and is saved with :meth:`save` / read with :meth:`load`.
    """

    labels: tuple[str, ...]
    weight: np.ndarray  # (D, C)
    bias: np.ndarray  # (C,)
    zero_shot: np.ndarray  # (C, D): the class embeddings of the zero-shot part
    logit_scale: float
    blend: float  # the probe's share: 0 = zero-shot alone, 1 = the probe alone
    templates: tuple[str, ...]
    model: HeadModel
    training: Training
    cv: CrossValidated
    label_prompts: dict[str, tuple[str, ...]] = field(default_factory=dict)  # labels with their own prompts
    clip_rt_version: str = ""

    def __post_init__(self) -> None:
        c, d = len(self.labels), self.model.embed_dim
        for name, array, shape in (
            ("weight", self.weight, (d, c)),
            ("bias", self.bias, (c,)),
            ("zero_shot", self.zero_shot, (c, d)),
        ):
            if not isinstance(array, np.ndarray) or array.shape != shape:
                got = getattr(array, "shape", type(array).__name__)
                raise HeadError(
                    f"head {name}: expected shape {shape} for {c} labels and {d}-dimensional embeddings, got {got}"
                )
            if not np.all(np.isfinite(array)):
                raise HeadError(f"head {name} holds values that are not finite numbers")
            object.__setattr__(self, name, np.ascontiguousarray(array, dtype=np.float32))
        if not 0.0 <= self.blend <= 1.0:
            raise HeadError(f"head blend weight must be from 0 to 1, got {self.blend}")

    # -- as a classifier --------------------------------------------------------------------
    scoring = "softmax"

    @property
    def names(self) -> list[str]:
        return list(self.labels)

    def _check(self, image_embeddings: np.ndarray) -> np.ndarray:
        x = np.asarray(image_embeddings, dtype=np.float32)
        if x.ndim == 1:
            x = x[None, :]
        if x.ndim != 2 or x.shape[1] != self.model.embed_dim:
            raise InputError(f"image embeddings must have shape (N, {self.model.embed_dim}), got {x.shape}")
        return x

    def zero_shot_probabilities(self, image_embeddings: np.ndarray) -> np.ndarray:
        """(N, C): the head's zero-shot part alone (the same as ``blend = 0``)."""
        return zero_shot_probabilities(self._check(image_embeddings), self.zero_shot, self.logit_scale)

    def probe_probabilities(self, image_embeddings: np.ndarray) -> np.ndarray:
        """(N, C): the linear probe alone (the same as ``blend = 1``)."""
        from .probe import normalise, softmax

        return softmax(normalise(self._check(image_embeddings)) @ self.weight.astype(np.float64) + self.bias)

    def probabilities(self, image_embeddings: np.ndarray) -> np.ndarray:
        """(N, C) float32: the blend of the zero-shot part and the probe."""
        x = self._check(image_embeddings)
        if self.blend == 0.0:
            p = self.zero_shot_probabilities(x)
        elif self.blend == 1.0:
            p = self.probe_probabilities(x)
        else:
            p = (1.0 - self.blend) * self.zero_shot_probabilities(x) + self.blend * self.probe_probabilities(x)
        return p.astype(np.float32)

    def classify_embeddings(self, image_embeddings: np.ndarray, top_k: int = 5) -> list[Classification]:
        return classifications(self.probabilities(image_embeddings), self.names, top_k)

    def advice(self) -> str:
        """One line: what the cross-validated figures mean for zero-shot against this head."""
        return self.cv.comparison(self.blend).advice()

    # -- the file -----------------------------------------------------------------------------
    def header(self) -> dict[str, Any]:
        c, d = len(self.labels), self.model.embed_dim
        tensors, offset = {}, 0
        for name, shape in (("weight", [d, c]), ("bias", [c]), ("zero_shot", [c, d])):
            tensors[name] = {"dtype": "float32", "shape": shape, "offset": offset}
            offset += 4 * int(np.prod(shape))
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "clip_rt_version": self.clip_rt_version,
            "labels": list(self.labels),
            "model": {
                "name": self.model.name,
                "fingerprint": self.model.fingerprint,
                "precision": self.model.precision,
                "embed_dim": self.model.embed_dim,
            },
            "blend": self.blend,
            "zero_shot": {
                "templates": list(self.templates),
                "logit_scale": self.logit_scale,
                "label_prompts": {k: list(v) for k, v in self.label_prompts.items()},
            },
            "training": {
                "images": self.training.images,
                "per_class": dict(self.training.per_class),
                "failed": self.training.failed,
                "folds": self.training.folds,
                "seed": self.training.seed,
                "C": self.training.c,
                "C_grid": list(self.training.c_grid),
                "blend_grid": list(self.training.blend_grid),
            },
            "cross_validation": {
                "zero_shot_accuracy": self.cv.zero_shot_accuracy,
                "probe_accuracy": self.cv.probe_accuracy,
                "head_accuracy": self.cv.head_accuracy,
                "images": self.cv.images,
                "folds": self.cv.folds,
                "head_only_right": self.cv.head_only_right,
                "zero_shot_only_right": self.cv.zero_shot_only_right,
            },
            "tensors": tensors,
        }

    def to_bytes(self) -> bytes:
        header = json.dumps(self.header(), ensure_ascii=True, sort_keys=True).encode("ascii")
        header += b" " * (-(len(header) + _PREFIX) % 8)
        data = b"".join(np.ascontiguousarray(getattr(self, n), dtype="<f4").tobytes() for n in TENSORS)
        body = MAGIC + struct.pack("<Q", len(header)) + header + data
        return body + hashlib.sha256(body).digest()

    @property
    def digest(self) -> str:
        """Identifies this head (sha256 of its file, first 32 hex digits): recorded with outputs."""
        return hashlib.sha256(self.to_bytes()).hexdigest()[:32]

    def save(self, path: Union[str, os.PathLike[str]]) -> str:
        """Write the head to *path*, whole or not at all (an existing file is replaced only once
        the new one is complete). Returns the path."""
        from ..outputs.files import atomic_file

        target = os.fspath(path)
        with atomic_file(target, "wb", "head file") as f:
            f.write(self.to_bytes())
        return target

    @classmethod
    def load(cls, path: Union[str, os.PathLike[str]]) -> Head:
        """Read and check a head file (see the module doc); :class:`HeadError` if it is not one."""
        target = os.fspath(path)
        shown = display_path(target)
        try:
            if not stat.S_ISREG(os.stat(target).st_mode) and not os.path.isdir(target):
                # a FIFO or device would block or never end: a head is a file
                raise HeadError(f"head {shown!r} is not a regular file; expected a head file written by `clip-rt fit`")
            with open(target, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                if size > MAX_FILE_BYTES:
                    raise HeadError(
                        f"head {shown!r} is {size} bytes; a head file is at most {MAX_FILE_BYTES} bytes "
                        "(is this the right file?)"
                    )
                data = f.read(MAX_FILE_BYTES + 1)
        except IsADirectoryError:
            raise HeadError(f"head {shown!r} is a folder; expected a head file written by `clip-rt fit`") from None
        except FileNotFoundError:
            raise HeadError(f"head {shown!r} does not exist; expected a head file written by `clip-rt fit`") from None
        except OSError as exc:
            raise HeadError(f"cannot read head {shown!r}: {exc.strerror or exc}") from None
        return cls.from_bytes(data, shown)

    @classmethod
    def from_bytes(cls, data: bytes, source: str = "head") -> Head:
        if len(data) > MAX_FILE_BYTES:
            raise HeadError(f"{source}: {len(data)} bytes; a head file is at most {MAX_FILE_BYTES} bytes")
        if not data.startswith(MAGIC):
            raise HeadError(
                f"{source} is not a clip-rt head file (it does not start with the head signature); "
                "expected a file written by `clip-rt fit`"
            )
        if len(data) < _PREFIX + _CHECKSUM:
            raise HeadError(f"{source} is damaged: cut short at {len(data)} bytes")
        body, checksum = data[:-_CHECKSUM], data[-_CHECKSUM:]
        if hashlib.sha256(body).digest() != checksum:
            raise HeadError(
                f"{source} is damaged: its checksum does not match its contents (the file was changed "
                "or cut short); fit the head again or restore the file"
            )
        (length,) = struct.unpack("<Q", body[len(MAGIC) : _PREFIX])
        if length > min(MAX_HEADER_BYTES, len(body) - _PREFIX):
            raise HeadError(f"{source}: header length {length} does not fit in the file")
        try:
            header = json.loads(body[_PREFIX : _PREFIX + length].decode("utf-8"), object_pairs_hook=_unique_keys)
        except (UnicodeDecodeError, ValueError, RecursionError) as exc:
            raise HeadError(f"{source}: the header is not valid JSON ({exc})") from None
        return _build(header, body[_PREFIX + length :], source)


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [k for k, _ in pairs]
    if len(set(keys)) != len(keys):
        raise ValueError(f"a key is given twice among {sorted(keys)[:5]}")
    return dict(pairs)


# -- the header's schema -----------------------------------------------------------------------------
_TEXT = s.Str(max_len=1000, min_len=1, what="a non-empty string")
_PROB = s.Float(0.0, 1.0)
_COUNT = s.Int(0, 2**40)
_TENSOR = s.Obj(
    {
        "dtype": s.req(s.Str(max_len=16, choices=("float32",))),
        "shape": s.req(s.ListOf(s.Int(1, max(MAX_DIM, MAX_LABELS)), max_len=2, min_len=1)),
        "offset": s.req(s.Int(0, MAX_FILE_BYTES)),
    }
)
HEADER_SCHEMA = s.Obj(
    {
        "format": s.req(s.Str(max_len=32, choices=(FORMAT,))),
        "format_version": s.req(s.Int(1, FORMAT_VERSION)),
        "clip_rt_version": s.opt(s.Str(max_len=64), ""),
        "labels": s.req(s.ListOf(_TEXT, max_len=MAX_LABELS, min_len=2)),
        "model": s.req(
            s.Obj(
                {
                    "name": s.req(s.Str(max_len=512)),
                    "fingerprint": s.req(
                        s.Str(max_len=64, min_len=8, pattern="[0-9a-f]+", what="a hexadecimal fingerprint")
                    ),
                    "precision": s.req(s.Str(max_len=32, min_len=1)),
                    "embed_dim": s.req(s.Int(1, MAX_DIM)),
                }
            )
        ),
        "blend": s.req(_PROB),
        "zero_shot": s.req(
            s.Obj(
                {
                    "templates": s.req(s.ListOf(_TEXT, max_len=10_000)),
                    "logit_scale": s.req(s.Float(0.0, 1e6, lo_open=True)),
                    "label_prompts": s.opt(
                        s.MapOf(_TEXT, s.ListOf(_TEXT, max_len=10_000, min_len=1), max_len=MAX_LABELS), {}
                    ),
                }
            )
        ),
        "training": s.req(
            s.Obj(
                {
                    "images": s.req(_COUNT),
                    "per_class": s.req(s.MapOf(_TEXT, _COUNT, max_len=MAX_LABELS)),
                    "failed": s.req(_COUNT),
                    "folds": s.req(s.Int(2, 1000)),
                    "seed": s.req(s.Int(0, 2**63 - 1)),
                    "C": s.req(s.Float(0.0, 1e12, lo_open=True)),
                    "C_grid": s.req(s.ListOf(s.Float(0.0, 1e12, lo_open=True), max_len=1000)),
                    "blend_grid": s.req(s.ListOf(_PROB, max_len=1000)),
                }
            )
        ),
        "cross_validation": s.req(
            s.Obj(
                {
                    "zero_shot_accuracy": s.req(_PROB),
                    "probe_accuracy": s.req(_PROB),
                    "head_accuracy": s.req(_PROB),
                    "images": s.req(_COUNT),
                    "folds": s.req(s.Int(2, 1000)),
                    "head_only_right": s.req(_COUNT),
                    "zero_shot_only_right": s.req(_COUNT),
                }
            )
        ),
        "tensors": s.req(s.Obj({name: s.req(_TENSOR) for name in TENSORS})),
    }
)


def _build(raw: Any, data: bytes, source: str) -> Head:
    version = raw.get("format_version") if isinstance(raw, dict) else None
    if isinstance(version, int) and not isinstance(version, bool) and version > FORMAT_VERSION:
        raise HeadError(
            f"{source} was written by a newer clip-rt (head format {version}); this one reads format "
            f"{FORMAT_VERSION}: upgrade clip-rt"
        )
    try:
        h = s.validate(HEADER_SCHEMA, raw)
    except s.SchemaError as exc:
        raise HeadError(f"{source}: {exc}") from None
    labels = [check_utf8(lab, "head label") for lab in h["labels"]]
    try:
        parse_labels(labels)  # blank, duplicate
    except InputError as exc:
        raise HeadError(f"{source}: {exc}") from None
    if any(lab != lab.strip() for lab in labels):
        raise HeadError(f"{source}: a label has leading or trailing spaces")
    c, d = len(labels), h["model"]["embed_dim"]
    want = {"weight": [d, c], "bias": [c], "zero_shot": [c, d]}
    offset = 0
    arrays = {}
    for name in TENSORS:
        spec = h["tensors"][name]
        if spec["shape"] != want[name]:
            raise HeadError(
                f"{source}: tensor {name} has shape {spec['shape']}; expected {want[name]} for "
                f"{c} labels and {d}-dimensional embeddings"
            )
        if spec["offset"] != offset:
            raise HeadError(
                f"{source}: tensor {name} starts at byte {spec['offset']}; expected {offset} (tensors "
                "are stored one after the other)"
            )
        size = 4 * int(np.prod(want[name]))
        if offset + size > len(data):
            raise HeadError(f"{source}: tensor {name} runs past the end of the data")
        arrays[name] = np.frombuffer(data, dtype="<f4", count=size // 4, offset=offset).reshape(want[name])
        offset += size
    if offset != len(data):
        raise HeadError(f"{source}: {len(data) - offset} bytes after the last tensor; expected none")
    for name, array in arrays.items():
        if not np.all(np.isfinite(array)):
            raise HeadError(f"{source}: tensor {name} holds values that are not finite numbers")
    prompts = h["zero_shot"]["label_prompts"]
    unknown = sorted(set(prompts) - set(labels))
    if unknown:
        raise HeadError(f"{source}: label_prompts names label(s) the head does not have: {unknown[:5]}")
    for text in [*h["zero_shot"]["templates"], *(p for ps in prompts.values() for p in ps)]:
        check_utf8(text, "head prompt")
    if set(h["training"]["per_class"]) != set(labels):
        raise HeadError(f"{source}: training.per_class must name exactly the head's labels")
    t, cv = h["training"], h["cross_validation"]
    try:
        return Head(
            labels=tuple(labels),
            weight=arrays["weight"].astype(np.float32),
            bias=arrays["bias"].astype(np.float32),
            zero_shot=arrays["zero_shot"].astype(np.float32),
            logit_scale=h["zero_shot"]["logit_scale"],
            blend=h["blend"],
            templates=tuple(h["zero_shot"]["templates"]),
            model=HeadModel(**h["model"]),
            training=Training(
                t["images"],
                dict(t["per_class"]),
                t["failed"],
                t["folds"],
                t["seed"],
                t["C"],
                list(t["C_grid"]),
                list(t["blend_grid"]),
            ),
            cv=CrossValidated(**cv),
            label_prompts={k: tuple(v) for k, v in prompts.items()},
            clip_rt_version=h["clip_rt_version"],
        )
    except HeadError as exc:
        raise HeadError(f"{source}: {exc}") from None


# -- using a head with a model -----------------------------------------------------------------------
HeadArg = Union[Head, str, "os.PathLike[str]"]


def as_head(head: HeadArg) -> Head:
    """A :class:`Head`, or the head file at a path."""
    if isinstance(head, Head):
        return head
    if isinstance(head, (str, os.PathLike)):
        return Head.load(head)
    raise InputError(f"head must be a Head or the path of a head file, got {type(head).__name__}")


def check_compatible(head: Head, *, fingerprint: str, precision: str, bundle: str) -> Optional[str]:
    """Raise :class:`HeadError` when *head* was fitted on another bundle (other weights: its
    probe would score meaningless directions). Return a warning when only the image precision
    differs: embeddings of one bundle at two precisions agree to the export's parity gate
    (cosine >= 0.99 and the same top-1 on its photos), so the head applies, but its
    cross-validated figures were measured at its own precision."""
    if head.model.fingerprint != fingerprint:
        raise HeadError(
            f"this head was fitted on bundle {head.model.name!r} (fingerprint "
            f"{head.model.fingerprint[:12]}...), not on {bundle!r} ({fingerprint[:12]}...): its weights "
            "read another model's embeddings; fit a head on this bundle (`clip-rt fit DIR -m ... -o HEAD`)"
        )
    if head.model.precision != precision:
        return (
            f"the head was fitted on {head.model.precision} image embeddings and this model computes {precision} "
            f"ones: they agree to the bundle's parity gate, so the head applies, but its cross-validated "
            f"accuracy was measured at {head.model.precision} (`clip-rt eval --head` measures it at {precision})"
        )
    return None


def image_precision(model: Any, settle: bool = True) -> str:
    """The precision the model's image encoder runs at (``int8``, ``fp32``, ``bf16``, ...);
    *settle*: create its session first (a CUDA fallback may change the plan)."""
    session = getattr(model, "session", None)
    if settle and callable(session):
        session("image")
    plan = getattr(model, "plan", None)
    if plan is not None:
        return str(plan.image.mode_label)
    return str(model.precision).split("/")[0]


def head_for_model(model: Any, head: HeadArg, labels: Any = None, templates: Any = None) -> Head:
    """*head* checked against *model* (fingerprint: refused; precision: a warning), and
    against *labels*/*templates* given with it: labels, if given, must be exactly the head's
    (the same names in the same order, no prompts of their own); templates cannot be given
    (the head keeps the zero-shot part it was fitted with)."""
    found = as_head(head)
    check_head_arguments(found, labels, templates)
    manifest = model.manifest
    message = check_compatible(
        found, fingerprint=manifest.fingerprint, precision=image_precision(model), bundle=manifest.name
    )
    if message:
        warnings.warn(message, UserWarning, stacklevel=3)
    return found


def check_head_arguments(head: Head, labels: Any, templates: Any) -> None:
    if templates is not None:
        raise InputError(
            "templates cannot be given with a head: it keeps the zero-shot part it was fitted with "
            f"({len(head.templates)} template(s)); leave templates out"
        )
    if labels is None:
        return
    parsed = parse_labels(labels)
    if any(lab.prompts for lab in parsed):
        raise InputError(
            "labels with their own prompts cannot be given with a head: it keeps the zero-shot part "
            "it was fitted with; leave labels out"
        )
    names = [lab.name for lab in parsed]
    if names != list(head.labels):
        raise InputError(
            f"labels {names} differ from the head's {list(head.labels)}: with a head, leave labels out "
            "(they come from the head) or give exactly its labels in its order"
        )


def summary_lines(head: Head, source: Optional[str] = None) -> list[str]:
    """What a head is, for people (``clip-rt fit`` prints it)."""
    t = head.training
    per_class = ", ".join(f"{lab} {n}" for lab, n in t.per_class.items())
    return [
        f"head{' ' + source if source else ''}: {len(head.labels)} labels, bundle {head.model.name} "
        f"({head.model.precision}, fingerprint {head.model.fingerprint[:12]}...)",
        f"trained on {t.images} images ({per_class}){f', {t.failed} unreadable left out' if t.failed else ''}",
        f"chosen by {t.folds}-fold cross-validation (seed {t.seed}): C={t.c:g}, blend weight {head.blend:g} "
        f"(0 = zero-shot alone, 1 = probe alone)",
        f"cross-validated accuracy: zero-shot {head.cv.zero_shot_accuracy:.3f}, probe alone "
        f"{head.cv.probe_accuracy:.3f}, head {head.cv.head_accuracy:.3f}",
        head.advice(),
    ]
