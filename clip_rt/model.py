"""``load()`` and :class:`ClipModel`: embeddings, similarity and zero-shot classification.

:class:`ClipModel` is a thin facade: what a model runs on and the life of its sessions belong
to :class:`~clip_rt.engine.runtime.ModelRuntime` (files checked against the manifest's sha256
before a session is created, remembered across processes; sessions created on first use, per
encoder, so text-only use never reads the image graph), and the choice of backend and precision
to the :class:`~clip_rt.engine.planner.Planner`. Both are configured by one
:class:`~clip_rt.options.RuntimeOptions`.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Union

import numpy as np

from . import templates as _templates
from .bundle.manifest import Manifest, read_manifest
from .bundle.store import resolve_bundle
from .engine.backends import Backend, RuntimePlan
from .engine.pipeline import Decoded, check_pixels, image_stream, run_pixels
from .engine.pipeline import decode as decode_image
from .engine.planner import default_precision
from .engine.runtime import ModelRuntime
from .engine.text_batches import encode_texts
from .errors import InputError, ModelNotFoundError
from .inputs.discover import expand_folders
from .inputs.sources import as_image_list, check_batch_size, is_single_source
from .inputs.texts import as_text_list
from .options import DEFAULT_IMAGE_BATCH, RuntimeOptions, Workload
from .results import ClassifiedImage, ImageEmbedding, PreprocessedImage, classified
from .zeroshot import (
    Classification,
    EmbeddingClassifier,
    LabelsArg,
    ZeroShotClassifier,
    check_templates,
    class_embeddings,
    parse_labels,
    scores_from_logits,
)

if TYPE_CHECKING:
    from .adapt.head import HeadArg
    from .inputs.preprocess import Preprocessor
    from .inputs.tokenizer import TextTokenizer

__all__ = ["ClipModel", "load", "default_precision", "RuntimeOptions", "Workload", "DEFAULT_IMAGE_BATCH"]

DEFAULT_TEXT_BATCH = 64


def load(
    name_or_path: Union[str, os.PathLike[str], None] = None,
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
    workload: Optional[Workload] = None,
    options: Optional[RuntimeOptions] = None,
) -> ClipModel:
    """Load a bundle by store name, alias (``ViT-B/32``) or directory; None: the configured
    default model (``$CLIP_RT_MODEL``, else ``model`` in ``$CLIP_RT_HOME/config.toml``, else
    ``ViT-B-32-openai``; see :mod:`clip_rt.settings`).

    The keyword arguments are the fields of :class:`~clip_rt.options.RuntimeOptions`, which
    documents each (providers, backend, precision, threads, workload, low memory, caching,
    decoding); *options* gives them as one object, and a keyword set beside it to other than
    its default overrides that field. ``model.runtime`` says what was chosen and why.
    """
    opts = RuntimeOptions.merged(
        options,
        providers=providers,
        precision=precision,
        threads=threads,
        session_options=session_options,
        provider_options=provider_options,
        backend=backend,
        workload=workload,
        cache=cache,
        verify=verify,
        exif_transpose=exif_transpose,
        strict=strict,
        draft=draft,
        allow_fallback=allow_fallback,
        low_memory=low_memory,
    )
    if name_or_path is None:
        from .settings import default_model

        setting = default_model()
        try:
            bundle_dir = resolve_bundle(setting.value)
        except ModelNotFoundError as exc:
            raise ModelNotFoundError(f"default model {setting.value!r} (from {setting.source}): {exc}") from exc
    else:
        bundle_dir = resolve_bundle(name_or_path)
    return ClipModel(bundle_dir, read_manifest(bundle_dir), opts)


class ClipModel:
    """A loaded bundle. Thread-safe: sessions are created once, ONNX Runtime runs concurrently."""

    def __init__(self, bundle_dir: Path, manifest: Manifest, options: Optional[RuntimeOptions] = None) -> None:
        self.bundle_dir = Path(bundle_dir)
        self.manifest = manifest
        self.options = options or RuntimeOptions()
        self._runtime = ModelRuntime(self.bundle_dir, manifest, self.options)

    # -- properties -------------------------------------------------------------------------
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
        return self.plan.precision

    @property
    def plan(self) -> RuntimePlan:
        """The per-encoder choice of backend, precision and mode (see :attr:`runtime`)."""
        return self._runtime.plan

    @property
    def providers(self) -> list[str]:
        """The onnxruntime providers the sessions run on; before the first session exists,
        those requested (an OpenVINO encoder runs on the CPU)."""
        return self._runtime.providers()

    @property
    def open_encoders(self) -> tuple[str, ...]:
        """The encoders whose session exists now (``"image"``, ``"text"``)."""
        return self._runtime.open_encoders

    @property
    def runtime(self) -> dict[str, Any]:
        """What runs each encoder on this machine, and why: the CPU (ISA class and flags), the
        installed backends, and per encoder the backend, precision, compute precision, folder
        mode, the reason and the measurement it came from (plus the live backend's settings
        once its session exists), the workload it was planned for. Recorded in outputs' metadata."""
        from .engine.runtime_info import runtime_dict

        return {
            **runtime_dict(self.plan, self._runtime.live()),
            "low_memory": self.options.low_memory,
            "workload": self.options.workload.describe(),
        }

    def describe(self) -> str:
        """:attr:`runtime` as readable lines (what ``clip-rt info`` prints)."""
        from .engine.runtime_info import describe_lines

        return "\n".join(describe_lines(self.runtime))

    def __repr__(self) -> str:
        return f"ClipModel({self.manifest.name!r}, precision={self.precision!r}, providers={self.providers})"

    # -- sessions ---------------------------------------------------------------------------
    def session(self, encoder: str) -> Backend:
        """The backend running ``"image"`` or ``"text"`` (created and verified on first use): an
        onnxruntime session (:class:`~clip_rt.engine.backends.ort.OrtBackend`) or an OpenVINO one."""
        return self._runtime.session(encoder)

    def prepare(self, encoders: Sequence[str] = ("image", "text")) -> None:
        """Create and check the sessions of *encoders* now (files verified, graph checked against
        the manifest): a damaged or mismatched bundle then fails here, before a caller opens its
        output files, rather than after."""
        for encoder in encoders:
            self._runtime.session(encoder)

    def release(self, encoder: str) -> None:
        """Free an encoder's session (its weights and arena); it is re-created on next use.
        A folder classify needs the text graph only to build the class embeddings. Releasing
        ``"text"`` frees the tokenizer too (about 30 MiB of heap for CLIP's BPE tables;
        docs/devices.md#memory); it is loaded again when text is encoded."""
        self._runtime.release(encoder)

    def close(self) -> None:
        """Release the prompt cache's database connection (sessions are freed with the model)."""
        self._runtime.close()

    def tokenizer(self) -> TextTokenizer:
        """The bundle's tokenizer (loaded on first use), as :meth:`encode_text` uses it."""
        return self._runtime.tokenizer()

    @property
    def preprocessor(self) -> Preprocessor:
        """The image preprocessing :meth:`encode_image` uses (this model's EXIF, draft, strict settings)."""
        return self._runtime.preprocessor()

    # -- text ---------------------------------------------------------------------
    def encode_text(self, texts: Union[str, Sequence[str]], batch_size: int = DEFAULT_TEXT_BATCH) -> np.ndarray:
        """(N, D) float32 L2-normalised embeddings; repeated prompts come from the cache."""
        items = as_text_list(texts)
        check_batch_size(batch_size)
        if not items:
            return np.zeros((0, self.embed_dim), dtype=np.float32)
        return encode_texts(self._runtime, items, batch_size)

    # -- images -------------------------------------------------------------------
    def encode_image(self, images: Any, batch_size: Optional[int] = None) -> np.ndarray:
        """(N, D) float32 L2-normalised embeddings; raises on the first image that cannot be read."""
        items = as_image_list(images)
        out = np.empty((len(items), self.embed_dim), dtype=np.float32)
        for item in self._iter(items, batch_size, raise_errors=True):
            out[item.index] = item.embedding
        return out

    @property
    def image_streams(self) -> int:
        """How many image batches may usefully run at once: the backend's throughput queue depth
        where the plan runs batches in throughput mode (OpenVINO streams), else 1. Creates the
        image session."""
        if self.plan.image.folders != "throughput":
            return 1
        return max(1, int(self.session("image").queue_depth))

    def encode_pixels(self, pixel_values: Any, output: str = "numpy", *, queued: bool = False) -> Any:
        """Embeddings of one preprocessed batch, (N, 3, H, W) float32 (numpy, or an OrtValue
        already on the device). *output* ``"numpy"``: a host array; ``"ortvalue"``: an
        ``onnxruntime.OrtValue`` left on the session's device (IO binding, no host round trip).
        *queued*: through the backend's throughput queue (thread-safe; callers running up to
        :attr:`image_streams` batches at once get the streams' throughput; same embeddings)."""
        check_pixels(pixel_values, output)  # before the session exists: a bad call opens nothing
        return run_pixels(self.session("image"), pixel_values, output, queued=queued)

    def preprocess(self, source: Any) -> PreprocessedImage:
        """Decode and preprocess one image exactly as :meth:`encode_image` does (this model's EXIF,
        draft and strict settings, PIL's pixel limit). Raises ImageLoadError or InputError.
        Thread-safe: for callers that decode on their own threads and batch the pixels through
        :meth:`encode_pixels` themselves (``clip-rt serve``)."""
        decoded = self._decode(0, source)
        if decoded.error is not None:
            raise decoded.error
        return PreprocessedImage(decoded.pixels, decoded.width, decoded.height, decoded.notes)  # type: ignore[arg-type]

    def iter_images(
        self, sources: Iterable[Any], batch_size: Optional[int] = None, *, workers: Optional[int] = None
    ) -> Iterator[ImageEmbedding]:
        """Embeddings in input order, one per source; an unreadable image yields an item with
        ``error`` set and the stream goes on. *sources* may be a generator: at most about
        ``2 * batch_size`` images are decoded ahead, in *workers* threads, while the previous
        batch runs through the model. Defaults: *batch_size* :attr:`image_batch_size` (8, or 1
        in low-memory mode); *workers* ``min(4, cores)``, 1 in low-memory mode."""
        return self._iter(sources, batch_size, raise_errors=False, workers=workers)

    def _decode(self, index: int, source: Any) -> Decoded:
        # With the model's EXIF and draft settings, inside the process-wide decode memory budget.
        return decode_image(self._runtime.preprocessor(), index, source)

    def _iter(
        self, sources: Iterable[Any], batch_size: Optional[int], *, raise_errors: bool, workers: Optional[int] = None
    ) -> Iterator[ImageEmbedding]:
        if batch_size is None:
            batch_size = self.image_batch_size
        check_batch_size(batch_size)
        if workers is None:
            workers = self.options.decode_workers
        session = self.session("image")  # fail before reading any image
        self._runtime.preprocessor()
        return image_stream(
            iter(sources),
            session,
            self._decode,
            batch_size,
            raise_errors=raise_errors,
            workers=workers,
            queued=self.plan.image.folders == "throughput",
        )

    @property
    def low_memory(self) -> bool:
        """Whether this model runs in low-memory mode (``load(low_memory=True)``, CLI ``--low-memory``)."""
        return self.options.low_memory

    @property
    def image_batch_size(self) -> int:
        """The image methods' default *batch_size*: 8, or 1 in low-memory mode."""
        return self.options.image_batch_size

    @property
    def draft(self) -> bool:
        """Whether images may be decoded at reduced scale (``load(draft=True)``, CLI ``--draft``)."""
        return self.options.draft

    def draft_size(self, width: int, height: int) -> tuple[int, int]:
        """The smallest (width, height) a *width* x *height* image may be decoded or converted at
        in draft mode: twice what the resize step makes of it (docs/images.md)."""
        return self._runtime.preprocessor().draft_size(width, height)

    # -- similarity and zero-shot ---------------------------------------------------
    def similarity(self, images: Any, texts: Union[str, Sequence[str]], batch_size: Optional[int] = None) -> np.ndarray:
        """Probabilities of the image(s) matching each of *texts*, by the model's :attr:`scoring`:
        ``softmax(logit_scale * cos)`` over the texts (CLIP), or each text's own
        ``sigmoid(logit_scale * cos + logit_bias)`` (SigLIP). Shape (T,) for one image, (N, T)
        for a list."""
        single = is_single_source(images)
        text_list = [texts] if isinstance(texts, str) else list(texts)
        if not text_list:
            raise InputError("no texts given: expected at least one")
        img = self.encode_image(images, batch_size=batch_size)
        logits = self.logit_scale * (img @ self.encode_text(text_list).T)
        if self.scoring == "sigmoid" and self.logit_bias is not None:
            logits = logits + np.float32(self.logit_bias)
        probs = scores_from_logits(logits, self.scoring)
        return probs[0] if single else probs

    def classifier(
        self, labels: LabelsArg, templates: Union[str, Sequence[str]] = _templates.SIMPLE
    ) -> ZeroShotClassifier:
        """A classifier with the class embeddings computed once (prompt ensembles, cached)."""
        parsed = parse_labels(labels)
        temps = check_templates(templates)
        embs = class_embeddings(parsed, temps, self.encode_text)
        return ZeroShotClassifier(parsed, embs, self.logit_scale, self.logit_bias, temps, scoring=self.scoring)

    def classify(
        self,
        images: Any,
        labels: Optional[LabelsArg] = None,
        templates: Union[str, Sequence[str], None] = None,
        top_k: int = 5,
        batch_size: Optional[int] = None,
        *,
        head: Optional[HeadArg] = None,
    ) -> list[Classification]:
        """One :class:`Classification` per image; raises on the first unreadable image. A folder
        path stands for the images under it (as in the CLI). :meth:`iter_classify` instead
        reports a bad image on its own item and goes on. *templates*: default
        :data:`clip_rt.templates.SIMPLE`.

        *head*: a fitted few-shot head (:class:`clip_rt.Head` or the path of a head file, from
        ``clip-rt fit``) instead of zero-shot labels: the labels are the head's (*labels*, if
        given, must be exactly them, in order; *templates* cannot be given). A head fitted on
        another bundle, or a damaged file, raises :class:`clip_rt.adapt.HeadError` before any
        image is read; one fitted at another image precision warns (docs/adapt.md).

        With the prompt cache on, the text session is freed once the class embeddings exist
        (the next call finds them in the cache): a folder then peaks at the image graph's
        memory alone (docs/benchmarks/history.md)."""
        clf = self._classifier_for(labels, templates, head)
        sources = list(expand_folders(as_image_list(images)))
        return clf.classify_embeddings(self.encode_image(sources, batch_size=batch_size), top_k=top_k)

    def iter_classify(
        self,
        images: Any,
        labels: Optional[LabelsArg] = None,
        templates: Union[str, Sequence[str], None] = None,
        top_k: int = 5,
        batch_size: Optional[int] = None,
        *,
        workers: Optional[int] = None,
        head: Optional[HeadArg] = None,
    ) -> Iterator[ClassifiedImage]:
        """Classify images the way `clip-rt classify` does: one :class:`ClassifiedImage` per image,
        in input order, carrying its source (the path, for files); a folder path stands for the
        images under it (recursive, sorted; a folder that cannot be listed is a failed item). An
        unreadable image gives an item with ``error`` set and ``result=None``, and the stream goes
        on. *images* may be a generator; memory stays bounded as in :meth:`iter_images`.
        *head*: a fitted head instead of zero-shot labels, as in :meth:`classify`."""
        clf = self._classifier_for(labels, templates, head)  # bad labels, a damaged graph or head: raised now
        sources = expand_folders([images] if is_single_source(images) else images)
        return classified(self._iter(sources, batch_size, raise_errors=False, workers=workers), clf, top_k)

    def _classifier_for(
        self, labels: Optional[LabelsArg], templates: Union[str, Sequence[str], None], head: Optional[HeadArg]
    ) -> EmbeddingClassifier:
        if head is not None:  # the head's labels and zero-shot part (clip_rt/adapt): no text encoder
            from .adapt.head import head_for_model

            return head_for_model(self, head, labels, templates)
        if labels is None:
            raise InputError("no labels given: expected class labels, or a fitted head (head=...)")
        return self._zero_shot(labels, _templates.SIMPLE if templates is None else templates)

    def _zero_shot(self, labels: LabelsArg, templates: Union[str, Sequence[str]]) -> ZeroShotClassifier:
        clf = self.classifier(labels, templates)
        if self.options.cache:
            self.release("text")
        return clf
