"""The models and search indexes a service holds, each model with its two batchers.

Loading is split in two: :func:`load_models` (fast: finds the bundles and reads their
manifests, so a missing model fails the command at once) and :meth:`ServedModel.warm_up`
(creates the ONNX Runtime sessions; the service is *ready* once every model has done it).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
import warnings
from collections import OrderedDict
from collections.abc import Sequence
from concurrent.futures import Executor
from typing import TYPE_CHECKING, Any, Callable, Optional, Union

import numpy as np

from ..errors import ClipRtError, InputError
from .batcher import DynamicBatcher
from .config import ServeConfig
from .errors import ApiError
from .inputs import ImageRef, image_stream
from .metrics import Metrics

if TYPE_CHECKING:
    from ..adapt.head import Head
    from ..inputs.tokenizer import TextTokenizer
    from ..model import ClipModel
    from ..outputs.search_index import SearchIndex
    from ..results import PreprocessedImage
    from ..zeroshot import ZeroShotClassifier

log = logging.getLogger("clip_rt.serve")
# A request's labels, validated: class names, or names with their own prompts (null: the templates).
LabelsJson = Union[dict[str, Optional[list[str]]], list[str]]
CLASSIFIERS_KEPT = 32  # label sets whose class embeddings stay in memory, per model ...
CLASSIFIERS_BYTES = 64 << 20  # ... and at most this much of them (labels are chosen by clients)
THUMBNAIL_BYTES_KEPT = 16 * 1024 * 1024  # the search page's recent thumbnails, per index (about 3,000)


class ServedModel:
    """One loaded bundle, its image and text batchers, and a small cache of classifiers."""

    def __init__(self, model_id: str, model: ClipModel, config: ServeConfig, metrics: Metrics) -> None:
        self.id = model_id
        self.model = model
        self.config = config
        self.created = int(time.time())
        self._tokenizer: Optional[TextTokenizer] = None
        self.classifiers: OrderedDict[str, tuple[ZeroShotClassifier, int]] = OrderedDict()  # key -> (classifier, bytes)
        self._classifier_bytes = 0
        wait = config.max_wait_ms / 1000.0

        def observer(encoder: str) -> tuple[Any, Any]:
            def on_batch(n: int, seconds: float) -> None:
                metrics.batch_size.observe(n, model=model_id, encoder=encoder)
                metrics.batch_seconds.observe(seconds, model=model_id, encoder=encoder)
                metrics.items.inc(n, model=model_id, encoder=encoder)

            def on_depth(depth: int) -> None:
                metrics.queue_depth.set(depth, model=model_id, encoder=encoder)

            on_depth(0)
            return on_batch, on_depth

        on_batch, on_depth = observer("image")
        # Several batches at once only through the backend's throughput queue (its streams).
        streams = config.image_streams or model.image_streams
        self._queued = streams > 1
        self.image: DynamicBatcher[np.ndarray, np.ndarray] = DynamicBatcher(
            f"{model_id}/image",
            self._encode_pixels,
            max_batch_size=config.max_batch_size,
            max_wait_s=wait,
            max_queue=config.max_queue,
            on_batch=on_batch,
            on_depth=on_depth,
            concurrency=streams,
            wait_when_idle=config.wait_when_idle,
        )
        on_batch, on_depth = observer("text")
        self.text: DynamicBatcher[str, np.ndarray] = DynamicBatcher(
            f"{model_id}/text",
            self._encode_texts,
            max_batch_size=config.max_text_batch_size,
            max_wait_s=wait,
            max_queue=config.text_queue,
            on_batch=on_batch,
            on_depth=on_depth,
            wait_when_idle=config.wait_when_idle,
        )

    # -- inference (on the batchers' threads) ---------------------------------------------------
    def _encode_pixels(self, pixels: list[np.ndarray]) -> list[np.ndarray]:
        # A batch alone runs in latency mode (all threads on it: measured 35 ms against 59 ms for
        # one client, bench/results/serve.json); with others in flight, through the streams.
        queued = self._queued and self.image.running > 1
        return list(self.model.encode_pixels(np.stack(pixels), queued=queued))

    def _encode_texts(self, texts: list[str]) -> list[np.ndarray]:
        return list(self.model.encode_text(texts, batch_size=self.config.max_text_batch_size))

    def warm_up(self) -> None:
        """Create both sessions and run one image batch, so the first request pays nothing."""
        self.model.session("text")
        self.tokenizer()
        h, w = self.model.manifest.image.size
        warm = np.zeros((1, 3, int(h), int(w)), dtype=np.float32)
        # A backend that plans each batch size on its first call (OpenVINO: 0.3-1 s each on 2
        # cores) would stall the first requests of each size: every size the batcher can form
        # runs once here, on both models, before the server says it is ready.
        sizes = self.config.max_batch_size if getattr(self.model.session("image"), "plans_per_shape", False) else 1
        for n in range(1, sizes + 1):
            batch = np.repeat(warm, n, axis=0)
            self.model.encode_pixels(batch)
            if self._queued:  # both compiled models ready before the first request
                self.model.encode_pixels(batch, queued=True)

    def tokenizer(self) -> TextTokenizer:
        """The bundle's tokenizer, for the token counts the OpenAI API reports."""
        if self._tokenizer is None:
            from ..inputs.hf_tokenizer import open_tokenizer

            manifest = self.model.manifest
            self._tokenizer = open_tokenizer(self.model.bundle_dir / manifest.text.tokenizer_file, manifest.text)
        return self._tokenizer

    def count_tokens(self, texts: Sequence[str]) -> int:
        """Tokens the text encoder reads (SOT and EOT included, truncated to the context length)."""
        counts = self.tokenizer().count_tokens(list(texts))
        return int(np.minimum(counts, self.model.manifest.text.context_length).sum())

    # -- async helpers (event loop) ---------------------------------------------------------------
    async def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        with self.text.reserve(len(texts)) as room:
            rows = await self.text.submit(list(texts), room)
        return np.stack(rows) if rows else np.zeros((0, self.model.embed_dim), np.float32)

    async def embed_images(
        self, refs: Sequence[ImageRef], pool: Executor, allowed: Sequence[str]
    ) -> tuple[np.ndarray, list[tuple[int, int]]]:
        """Embeddings and (width, height) of each image. Room in the queue is reserved before
        decoding (decoding is where the memory goes); every undecodable image is reported."""
        with self.image.reserve(len(refs)) as room:
            loop = asyncio.get_running_loop()
            decoded = await asyncio.gather(
                *(loop.run_in_executor(pool, self._decode, ref, allowed) for ref in refs), return_exceptions=True
            )
            failures = [(ref, d) for ref, d in zip(refs, decoded) if isinstance(d, BaseException)]
            if failures:
                raise _image_errors(failures)
            rows = await self.image.submit([d.pixels for d in decoded], room)  # type: ignore[union-attr]
        sizes = [(d.width, d.height) for d in decoded]  # type: ignore[union-attr]
        return np.stack(rows), sizes

    def _decode(self, ref: ImageRef, allowed: Sequence[str]) -> PreprocessedImage:
        stream = image_stream(ref, allowed, self.config.max_body_bytes)
        stream.name = ref.param  # the loader's label in its messages
        try:
            return self.model.preprocess(stream)
        except ClipRtError as exc:
            message = str(exc)
        # Raised outside the except clause: no chained traceback keeps this image's data alive
        # while the request's other images are decoded.
        del stream
        raise ApiError("invalid_image", message, param=ref.param)

    async def classifier(self, labels: LabelsJson, templates: list[str]) -> ZeroShotClassifier:
        """A zero-shot classifier for these labels and templates: class embeddings from the
        (shared, persistent) prompt cache through the text batcher; the last few are kept."""
        from ..zeroshot import ZeroShotClassifier, check_templates, class_embeddings, parse_labels

        key = json.dumps([labels, templates], sort_keys=True, ensure_ascii=False)
        found = self.classifiers.get(key)
        if found is not None:
            self.classifiers.move_to_end(key)
            return found[0]
        try:
            parsed = parse_labels(labels)
            temps = check_templates(templates)
        except InputError as exc:
            raise ApiError("invalid_request", str(exc), param="labels") from None
        # Counted before any prompt is made: 1000 labels x 4000 templates would be 4 million strings.
        count = sum(len(lab.prompts) if lab.prompts else len(temps) for lab in parsed)
        if count > self.config.max_prompts:
            raise ApiError(
                "invalid_request",
                f"{len(parsed)} labels x templates make {count} prompts; the "
                f"limit is {self.config.max_prompts} per request (--max-prompts)",
                param="labels",
            )
        prompts = [t for lab in parsed for t in lab.texts(temps)]
        embeddings = await self.embed_texts(prompts)
        built = ZeroShotClassifier(
            parsed,
            class_embeddings(parsed, temps, lambda _: embeddings),
            self.model.logit_scale,
            self.model.logit_bias,
            temps,
            scoring=self.model.scoring,
        )
        self._keep_classifier(key, built, size=4 * len(key) + int(built.embeddings.nbytes) + 1024)
        return built

    def _keep_classifier(self, key: str, built: Any, size: int) -> None:
        """The last CLASSIFIERS_KEPT label sets, at most CLASSIFIERS_BYTES of them (LRU); one
        larger than that on its own is not kept."""
        if size > CLASSIFIERS_BYTES:
            return
        self.classifiers[key] = (built, size)
        self._classifier_bytes += size
        while len(self.classifiers) > CLASSIFIERS_KEPT or self._classifier_bytes > CLASSIFIERS_BYTES:
            _, (_, dropped) = self.classifiers.popitem(last=False)
            self._classifier_bytes -= dropped

    def describe(self) -> dict[str, Any]:
        m = self.model.manifest
        return {
            "id": self.id,
            "object": "model",
            "created": self.created,
            "owned_by": "clip-rt",
            "bundle": m.name,
            "architecture": m.architecture,
            "precision": self.model.precision,
            "providers": self.model.providers,
            "embed_dim": m.embed_dim,
            "image_size": list(m.image.size),
            "context_length": m.text.context_length,
            "fingerprint": m.fingerprint,
            "scoring": m.scoring,
        }


def _image_errors(failures: list[tuple[ImageRef, BaseException]]) -> ApiError:
    details = []
    for ref, exc in failures:
        if not isinstance(exc, ApiError):
            raise exc  # a bug or MemoryError: not the client's fault, not a 400
        details.append({"param": ref.param, "type": exc.kind, "message": exc.message})
    first = failures[0][1]
    assert isinstance(first, ApiError)
    more = f" (and {len(failures) - 1} more image(s): see error.details)" if len(failures) > 1 else ""
    return ApiError(first.kind, first.message + more, param=first.param, details=details if more else None)


class ServedIndex:
    """A `clip-rt index` folder, re-read when `clip-rt index` has updated it."""

    def __init__(self, name: str, folder: str, index: SearchIndex, model_id: str) -> None:
        self.name, self.folder, self.index, self.model_id = name, folder, index, model_id
        self._stamp = self._meta_stamp()
        # (generation, row) -> JPEG, least recently used first; touched only on the event loop.
        self._thumbnails: OrderedDict[tuple[int, int], bytes] = OrderedDict()
        self._thumbnail_bytes = 0

    def _meta_stamp(self) -> Optional[tuple[int, int]]:
        from ..outputs.search_index import INDEX_FILE

        try:
            st = os.stat(os.path.join(self.folder, INDEX_FILE))
        except OSError:
            return None
        return st.st_mtime_ns, st.st_size

    def current(self) -> SearchIndex:
        """The index as on disk now (reloaded when index.json changed; kept if the reload fails)."""
        from ..outputs.search_index import SearchIndex

        stamp = self._meta_stamp()
        if stamp != self._stamp and stamp is not None:
            try:
                fresh = SearchIndex.load(self.folder)
            except ClipRtError as exc:
                log.warning("index %s: keeping the loaded version: %s", self.name, exc)
            else:
                if (fresh.fingerprint, fresh.precision) == (self.index.fingerprint, self.index.precision):
                    self.index = fresh
                else:
                    log.warning("index %s was rebuilt with another model; keeping the loaded version", self.name)
            self._stamp = stamp
        return self.index

    def describe(self, with_paths: bool = True) -> dict[str, Any]:
        """What /readyz says of the index; its folder's absolute path only *with_paths*."""
        out = {"name": self.name, "model": self.model_id, "images": len(self.index.entries)}
        if with_paths:
            out["root"] = self.index.root
        return out

    # -- thumbnails for the search page (GET /thumbnails/{index}/{row}) -----------------------------
    def image_path(self, index: Any, row: int) -> str:
        """The file of *row* in *index*: only a path the index records, under its root."""
        entry = index.entries[row]
        root = os.path.normpath(os.path.abspath(index.root))
        path = os.path.normpath(os.path.join(root, entry.path))
        if os.path.isabs(entry.path) or os.path.commonpath([root, path]) != root:
            raise ApiError(
                "not_found",
                f"index {self.name!r} row {row}: its path {entry.path!r} is not inside the "
                "index's root folder; no thumbnail is served for it",
            )
        return path

    def thumbnail(self, index: Any, row: int) -> bytes:
        """A small JPEG of *row*'s image (on the decode pool), decoded as `clip-rt index` did."""
        from ..errors import ImageLoadError
        from ..outputs.thumbnails import thumbnail_jpeg

        path = self.image_path(index, row)
        try:
            data, _, _ = thumbnail_jpeg(path)
        except (ImageLoadError, InputError) as exc:
            raise ApiError("not_found", f"index {self.name!r} row {row}: no thumbnail: {exc}") from None
        return data

    def cached_thumbnail(self, generation: int, row: int) -> Optional[bytes]:
        data = self._thumbnails.get((generation, row))
        if data is not None:
            self._thumbnails.move_to_end((generation, row))
        return data

    def keep_thumbnail(self, generation: int, row: int, data: bytes) -> None:
        if (generation, row) in self._thumbnails:
            return
        self._thumbnails[(generation, row)] = data
        self._thumbnail_bytes += len(data)
        while self._thumbnail_bytes > THUMBNAIL_BYTES_KEPT and self._thumbnails:
            _, dropped = self._thumbnails.popitem(last=False)
            self._thumbnail_bytes -= len(dropped)


def load_models(
    config: ServeConfig, metrics: Metrics, load: Callable[[str, Optional[str]], ClipModel]
) -> OrderedDict[str, ServedModel]:
    """The served models, in the order given. *load(source, precision)* returns a ClipModel."""
    served: OrderedDict[str, ServedModel] = OrderedDict()
    for spec in config.models:
        model = load(spec.source, spec.precision or config.precision)
        model_id = model.manifest.name + (f"@{spec.precision}" if spec.precision else "")
        if model_id in served:
            raise InputError(f"model {model_id!r} is given twice; serve another precision as NAME@PRECISION")
        served[model_id] = ServedModel(model_id, model, config, metrics)
    return served


class ServedHead:
    """A fitted head (``clip-rt fit``) for /classify, bound to the served model it was fitted on."""

    def __init__(self, name: str, path: str, head: Head, model_id: str) -> None:
        self.name, self.path, self.head, self.model_id = name, path, head, model_id

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "model": self.model_id,
            "labels": list(self.head.labels),
            "blend": self.head.blend,
            "digest": self.head.digest,
        }


def load_heads(config: ServeConfig, models: OrderedDict[str, ServedModel]) -> OrderedDict[str, ServedHead]:
    """Each --head, read and checked now (a damaged file or one fitted on no served bundle fails
    the command before it binds a port), paired with the served model of its bundle (the one at
    the head's own image precision when several are served)."""
    from ..adapt.head import Head, check_compatible, image_precision

    out: OrderedDict[str, ServedHead] = OrderedDict()
    for name, path in config.heads:
        head = Head.load(path)
        same = [m for m in models.values() if m.model.manifest.fingerprint == head.model.fingerprint]
        if not same:
            served = ", ".join(f"{m.id} ({m.model.manifest.fingerprint[:12]}...)" for m in models.values())
            raise InputError(
                f"head {name!r} ({path}) was fitted on bundle {head.model.name!r} (fingerprint "
                f"{head.model.fingerprint[:12]}...); none of the served models is that bundle: {served}. "
                "Serve that bundle too, or fit the head on a served one"
            )
        exact = [m for m in same if image_precision(m.model, settle=False) == head.model.precision]
        chosen = (exact or same)[0]
        message = check_compatible(
            head,
            fingerprint=chosen.model.manifest.fingerprint,
            precision=image_precision(chosen.model, settle=False),
            bundle=chosen.id,
        )
        if message:  # before the server starts: the CLI shows it as a `warning:` line
            warnings.warn(f"head {name!r}: {message}", UserWarning, stacklevel=2)
        out[name] = ServedHead(name, path, head, chosen.id)
    return out


def load_indexes(config: ServeConfig, models: OrderedDict[str, ServedModel]) -> OrderedDict[str, ServedIndex]:
    """Each --index, paired with the served model that built it (same weights and precision)."""
    from ..outputs.search_index import SearchIndex

    out: OrderedDict[str, ServedIndex] = OrderedDict()
    for name, folder in config.indexes:
        index = SearchIndex.load(folder)
        match = [
            m
            for m in models.values()
            if (m.model.manifest.fingerprint, m.model.precision) == (index.fingerprint, index.precision)
        ]
        if not match:
            served = ", ".join(
                f"{m.id} ({m.model.precision}, {m.model.manifest.fingerprint[:12]}...)" for m in models.values()
            )
            raise InputError(
                f"index {name!r} ({folder}) was built with bundle {index.model!r} at {index.precision} "
                f"(fingerprint {index.fingerprint[:12]}...); none of the served models matches: "
                f"{served}. Serve that bundle too (e.g. `clip-rt serve {index.bundle_dir or index.model}`"
                f"{'@' + index.precision if index.precision else ''} ...)"
            )
        out[name] = ServedIndex(name, folder, index, match[0].id)
    return out
