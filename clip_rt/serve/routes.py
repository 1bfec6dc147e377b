"""The endpoints. Each handler validates its JSON body (inputs.py), then awaits the batchers;
nothing here blocks the event loop (decoding, JSON of large bodies and index reloads run on the
decode pool, inference on the batchers' threads)."""

from __future__ import annotations

import asyncio
import base64
import functools
from collections.abc import Awaitable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Optional

import numpy as np

from . import page
from .config import ServeConfig
from .errors import ApiError, bad_request, describe
from .inputs import (
    BodyAccount,
    BodyBudget,
    ImageRef,
    check_content_type,
    check_fields,
    image_ref,
    is_image_data_url,
    item_list,
    optional_str,
    parse_json,
    positive_int,
    read_body,
    required,
    text_value,
)
from .metrics import CONTENT_TYPE, Metrics

if TYPE_CHECKING:
    from starlette.requests import Request
    from starlette.responses import Response

    from ..adapt.head import Head
    from ..zeroshot import EmbeddingClassifier
    from .registry import LabelsJson, ServedHead, ServedIndex, ServedModel

JSON_LIMIT_IN_LOOP = 64 * 1024  # bodies larger than this are parsed on the decode pool
BODY_ACCOUNT = "clip_rt.body_account"  # in the ASGI scope: the request's share of the body budget (app.Guard)
AUTHORISED = "clip_rt.authorised"  # in the ASGI scope: the request carried the API key (or none is set)


@dataclass
class ServiceState:
    config: ServeConfig
    models: dict[str, ServedModel]
    indexes: dict[str, ServedIndex]
    metrics: Metrics
    allowed: tuple[str, ...]  # --allow-dir folders, resolved
    pool: ThreadPoolExecutor
    ready: bool = False
    failure: Optional[str] = None
    loading: list[str] = field(default_factory=list)
    loop: Optional[asyncio.AbstractEventLoop] = None  # set at startup, for the signal handler
    heads: dict[str, ServedHead] = field(default_factory=dict)  # --head: fitted heads for /classify
    bodies: Optional[BodyBudget] = None  # request-body bytes held at once (config.body_memory)
    connections: Any = None  # the open-connection table (serve/connections.py), once serving

    def __post_init__(self) -> None:
        if self.bodies is None:
            self.bodies = BodyBudget(self.config.body_memory)

    def drain(self) -> None:
        """The service is stopping: queued inputs run now rather than wait for fuller batches."""
        for served in self.models.values():
            served.image.drain()
            served.text.drain()

    def model(self, name: Optional[str]) -> ServedModel:
        if name is None:
            return next(iter(self.models.values()))
        found = self.models.get(name)
        if found is None:
            raise ApiError(
                "not_found",
                f"unknown model {name!r}; this service has: {', '.join(self.models)} (GET /v1/models)",
                param="model",
            )
        return found

    def head(self, name: str) -> ServedHead:
        found = self.heads.get(name)
        if found is None:
            have = (
                f"this service has: {', '.join(self.heads)}"
                if self.heads
                else "this service has none (start it with --head NAME=FILE, a head made by `clip-rt fit`)"
            )
            raise ApiError("not_found", f"unknown head {name!r}; {have}", param="head")
        return found

    def check_ready(self) -> None:
        if self.failure:
            raise ApiError("not_ready", f"the models failed to load: {self.failure}")


def _json(data: Any, status: int = 200) -> Response:
    from starlette.responses import JSONResponse

    return JSONResponse(data, status_code=status)


def state_of(request: Request) -> ServiceState:
    return request.app.state.service


async def body_of(request: Request, allowed: Sequence[str]) -> dict[str, Any]:
    state = state_of(request)
    state.check_ready()
    check_content_type(request.headers.get("content-type"))
    from starlette.requests import ClientDisconnect

    cfg = state.config
    account: Optional[BodyAccount] = request.scope.get(BODY_ACCOUNT)
    try:
        raw = await read_body(
            dict(request.headers), request.stream(), cfg.max_body_bytes, timeout=cfg.body_timeout, account=account
        )
    except ClientDisconnect:  # nobody will read the answer; this keeps a traceback out of the log
        raise bad_request("the client closed the connection before sending the whole body") from None
    parse = functools.partial(parse_json, max_depth=cfg.max_json_depth, max_values=cfg.max_json_values)
    if len(raw) > JSON_LIMIT_IN_LOOP:
        body = await asyncio.get_running_loop().run_in_executor(state.pool, parse, raw)
    else:
        body = parse(raw)
    del raw  # the parsed body is what the request keeps (its bytes stay counted until it ends)
    check_fields(body, allowed)
    return body


# -- health, metrics, models -----------------------------------------------------------------------
async def healthz(request: Request) -> Response:
    return _json({"status": "ok"})


async def readyz(request: Request) -> Response:
    state = state_of(request)
    if state.failure:
        return _json({"status": "failed", "error": state.failure}, 503)
    if not state.ready:
        return _json({"status": "loading", "models": list(state.models)}, 503)
    # The index folders' absolute paths only to a caller with the API key: /readyz is open to
    # orchestrators, and a path tells an outsider about the host.
    full = bool(request.scope.get(AUTHORISED))
    return _json(
        {
            "status": "ready",
            "models": list(state.models),
            "indexes": [ix.describe(with_paths=full) for ix in state.indexes.values()],
            "heads": [h.describe() for h in state.heads.values()],
        }
    )


async def metrics(request: Request) -> Response:
    from starlette.responses import Response

    return Response(state_of(request).metrics.render(), media_type=CONTENT_TYPE)


async def list_models(request: Request) -> Response:
    return _json({"object": "list", "data": [m.describe() for m in state_of(request).models.values()]})


async def get_model(request: Request) -> Response:
    return _json(state_of(request).model(request.path_params["model"]).describe())


# -- embeddings (OpenAI-compatible) ----------------------------------------------------------------
async def embeddings(request: Request) -> Response:
    state = state_of(request)
    body = await body_of(request, ("model", "input", "encoding_format", "dimensions", "user"))
    served = state.model(optional_str(body, "model"))
    fmt = body.get("encoding_format")
    fmt = "float" if fmt is None else fmt
    if not isinstance(fmt, str) or fmt not in ("float", "base64"):
        raise bad_request(f"encoding_format must be 'float' or 'base64', got {describe(fmt)}", param="encoding_format")
    dims = body.get("dimensions")
    if dims is not None and (isinstance(dims, bool) or not isinstance(dims, int)):
        raise bad_request(
            f"dimensions must be an integer (the model's {served.model.embed_dim}), got {describe(dims)}",
            param="dimensions",
        )
    if dims is not None and dims != served.model.embed_dim:
        raise bad_request(
            f"dimensions: model {served.id!r} gives {served.model.embed_dim}-dimensional embeddings "
            f"(CLIP embeddings cannot be shortened); got {describe(dims)}",
            param="dimensions",
        )
    raw = required(body, "input")
    items = [raw] if isinstance(raw, (str, dict)) else raw
    if isinstance(items, list) and items and all(isinstance(x, int) and not isinstance(x, bool) for x in items):
        raise bad_request(
            "input holds token ids; this service tokenises itself: send the text as strings", param="input"
        )
    items = item_list(items, "input", state.config.max_items, "texts or images")
    texts: list[tuple[int, str]] = []
    images: list[tuple[int, ImageRef]] = []
    for i, item in enumerate(items):
        param = f"input[{i}]" if isinstance(raw, list) else "input"
        if isinstance(item, str) and not is_image_data_url(item):
            texts.append((i, text_value(item, param, state.config.max_text_chars)))
        elif isinstance(item, dict) and set(item) == {"text"}:
            texts.append((i, text_value(item["text"], f"{param}.text", state.config.max_text_chars)))
        elif isinstance(item, (str, dict)):
            images.append((i, image_ref(item, param)))
        elif isinstance(item, list):
            raise bad_request(
                f"{param} is an array (token ids?); expected a text, a data URL, or "
                '{"text": ...} / {"image": base64} / {"path": file}',
                param=param,
            )
        else:
            raise bad_request(
                f'{param} must be a text, a data URL, or an object {{"text"|"image"|"path": ...}}, '
                f"got {describe(item)}",
                param=param,
            )
    vectors: list[Optional[np.ndarray]] = [None] * len(items)
    jobs: list[Awaitable[Any]] = []
    if texts:
        jobs.append(served.embed_texts([t for _, t in texts]))
    if images:
        jobs.append(served.embed_images([r for _, r in images], state.pool, state.allowed))
    results = await asyncio.gather(*jobs)
    tokens = 0
    if texts:
        for (i, _), row in zip(texts, results[0]):
            vectors[i] = row
        tokens = await asyncio.get_running_loop().run_in_executor(
            state.pool, served.count_tokens, [t for _, t in texts]
        )
    if images:
        for (i, _), row in zip(images, results[-1][0]):
            vectors[i] = row
    data = [{"object": "embedding", "index": i, "embedding": _encode_vector(v, fmt)} for i, v in enumerate(vectors)]
    return _json(
        {"object": "list", "data": data, "model": served.id, "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}
    )


def _encode_vector(vector: Optional[np.ndarray], fmt: str) -> Any:
    arr = np.asarray(vector, dtype="<f4")
    if fmt == "base64":
        return base64.b64encode(arr.tobytes()).decode("ascii")
    return arr.tolist()  # float32 -> float64 -> shortest repr: parses back to the same float32


# -- classify, similarity, search ------------------------------------------------------------------
async def classify(request: Request) -> Response:
    state = state_of(request)
    body = await body_of(request, ("model", "images", "labels", "templates", "top_k", "head"))
    head_name = optional_str(body, "head")
    served_head = state.head(head_name) if head_name is not None else None
    served = _classify_model(state, optional_str(body, "model"), served_head)
    refs = [
        image_ref(v, f"images[{i}]")
        for i, v in enumerate(item_list(required(body, "images"), "images", state.config.max_items, "images"))
    ]
    top_k = positive_int(body, "top_k", 5, state.config.max_top_k)
    clf: EmbeddingClassifier
    if served_head is not None:
        clf = _head_classifier(served_head, body, state.config)
    else:
        labels = _labels(required(body, "labels"), state.config)
        clf = await served.classifier(labels, _templates(body.get("templates"), state.config))
    embs, sizes = await served.embed_images(refs, state.pool, state.allowed)
    results = []
    for i, (c, (w, h)) in enumerate(zip(clf.classify_embeddings(embs, top_k=top_k), sizes)):
        results.append(
            {
                "index": i,
                "label": c.label,
                "score": c.score,
                "scores": c.scores,
                "top_k": [{"label": lab, "score": s} for lab, s in c.top_k],
                "width": w,
                "height": h,
            }
        )
    answer = {
        "model": served.id,
        "labels": clf.names,
        "templates": list(clf.templates),
        "scoring": clf.scoring,
        "results": results,
    }
    if served_head is not None:
        answer["head"] = served_head.name
    return _json(answer)


def _classify_model(state: ServiceState, asked: Optional[str], served_head: Optional[ServedHead]) -> ServedModel:
    if served_head is None:
        return state.model(asked)
    if asked is not None and asked != served_head.model_id:
        state.model(asked)  # unknown -> 404
        raise bad_request(
            f"head {served_head.name!r} was fitted on model {served_head.model_id!r}, not {asked!r}; "
            "leave out model (the head names its own) or give that one",
            param="model",
        )
    return state.model(served_head.model_id)


def _head_classifier(served_head: ServedHead, body: dict[str, Any], cfg: ServeConfig) -> Head:
    """The head itself: labels come from it (the request may repeat them exactly), templates
    cannot be given (it keeps the zero-shot part it was fitted with)."""
    from ..adapt.head import check_head_arguments
    from ..errors import InputError

    head = served_head.head
    if "templates" in body:
        raise bad_request(
            f"templates cannot be given with head {served_head.name!r}: it keeps the zero-shot part "
            "it was fitted with; leave templates out",
            param="templates",
        )
    if "labels" in body:
        labels = _labels(body["labels"], cfg)
        try:
            check_head_arguments(head, labels, None)
        except InputError as exc:
            raise bad_request(str(exc), param="labels") from None
    return head


def _labels(value: Any, cfg: ServeConfig) -> LabelsJson:
    maximum = cfg.max_labels
    if isinstance(value, dict):
        if not value:
            raise bad_request("labels is empty: expected at least one class label", param="labels")
        if len(value) > maximum:
            raise bad_request(f"labels has {len(value)} labels; the limit is {maximum} (--max-labels)", param="labels")
        for name, prompts in value.items():
            _label_name(name, f"labels[{name[:40]!r}]", cfg.max_label_chars)
            if prompts is not None and not (
                isinstance(prompts, list) and prompts and all(isinstance(p, str) for p in prompts)
            ):
                raise bad_request(
                    f"labels[{name!r}] must be null or a non-empty array of prompt strings, got {describe(prompts)}",
                    param="labels",
                )
            if prompts is not None and len(prompts) > cfg.max_prompts:
                raise bad_request(
                    f"labels[{name[:40]!r}] has {len(prompts)} prompts; the limit is {cfg.max_prompts} "
                    "per request (--max-prompts)",
                    param="labels",
                )
            for p in prompts or ():
                _text_length(p, f"labels[{name[:40]!r}]", cfg.max_text_chars, "labels")
        return value
    if not isinstance(value, list):
        raise bad_request(
            f"labels must be an array of class names or an object {{name: [prompts] | null}}, got {describe(value)}",
            param="labels",
        )
    if not value:
        raise bad_request("labels is empty: expected at least one class label", param="labels")
    if len(value) > maximum:
        raise bad_request(f"labels has {len(value)} labels; the limit is {maximum} (--max-labels)", param="labels")
    for i, name in enumerate(value):
        if not isinstance(name, str):
            raise bad_request(f"labels[{i}] must be a string, got {describe(name)}", param=f"labels[{i}]")
        _label_name(name, f"labels[{i}]", cfg.max_label_chars)
    return value


def _label_name(name: str, param: str, max_chars: int) -> None:
    # Class names are keys of the classifier cache and of every response: bounded on their own.
    if len(name) > max_chars:
        raise bad_request(
            f"{param} has {len(name)} characters; a class label may have at most {max_chars} "
            "(--max-label-chars; CLIP reads 77 tokens of each prompt anyway)",
            param=param,
        )


def _text_length(text: str, what: str, max_chars: int, param: str) -> None:
    if len(text) > max_chars:
        raise bad_request(
            f"{what} has a text of {len(text)} characters; the limit is {max_chars} (--max-text-chars)", param=param
        )


def _templates(value: Any, cfg: ServeConfig) -> list[str]:
    from .. import templates as builtin

    if value is None:
        return list(builtin.SIMPLE)
    if isinstance(value, str):
        if value in builtin.SETS:
            return list(builtin.SETS[value])
        if "{}" in value:
            _text_length(value, "templates", cfg.max_text_chars, "templates")
            return [value]
        raise bad_request(
            f"templates must be 'simple', 'imagenet', a template with {{}} or an array of them; got {value!r}",
            param="templates",
        )
    if not isinstance(value, list) or not value or not all(isinstance(t, str) for t in value):
        raise bad_request(
            f"templates must be a non-empty array of strings with {{}} for the label, got {describe(value)}",
            param="templates",
        )
    if len(value) > cfg.max_prompts:
        raise bad_request(
            f"templates has {len(value)} templates; the limit is {cfg.max_prompts} prompts per request (--max-prompts)",
            param="templates",
        )
    for t in value:
        _text_length(t, "templates", cfg.max_text_chars, "templates")
    return value


async def similarity(request: Request) -> Response:
    from ..zeroshot import scores_from_logits

    state = state_of(request)
    body = await body_of(request, ("model", "image", "texts"))
    served = state.model(optional_str(body, "model"))
    ref = image_ref(required(body, "image"), "image")
    raw = required(body, "texts")
    texts = [
        text_value(t, f"texts[{i}]", state.config.max_text_chars)
        for i, t in enumerate(item_list(raw, "texts", state.config.max_items, "texts"))
    ]
    (img, sizes), txt = await asyncio.gather(
        served.embed_images([ref], state.pool, state.allowed), served.embed_texts(texts)
    )
    cosine = img @ txt.T
    model = served.model
    bias = (model.logit_bias or 0.0) if model.scoring == "sigmoid" else 0.0
    logits = model.logit_scale * cosine + bias
    probs = scores_from_logits(logits, model.scoring)[0]
    return _json(
        {
            "model": served.id,
            "width": sizes[0][0],
            "height": sizes[0][1],
            "scoring": model.scoring,
            "results": [
                {"text": t, "probability": float(p), "cosine": float(c)} for t, p, c in zip(texts, probs, cosine[0])
            ],
        }
    )


async def search(request: Request) -> Response:
    state = state_of(request)
    body = await body_of(request, ("index", "query", "top_k", "model"))
    if not state.indexes:
        raise ApiError(
            "not_found",
            "this service has no search index (start it with --index DIR, a folder made by `clip-rt index`)",
            param="index",
        )
    name = optional_str(body, "index")
    if name is None:
        if len(state.indexes) > 1:
            raise bad_request(
                f"missing field 'index': this service has {len(state.indexes)} indexes: {', '.join(state.indexes)}",
                param="index",
            )
        name = next(iter(state.indexes))
    served_index = state.indexes.get(name)
    if served_index is None:
        raise ApiError(
            "not_found", f"unknown index {name!r}; this service has: {', '.join(state.indexes)}", param="index"
        )
    served = state.model(served_index.model_id)
    asked = optional_str(body, "model")
    if asked is not None and asked != served.id:
        state.model(asked)  # unknown -> 404
        raise bad_request(f"index {name!r} was built with model {served.id!r}, not {asked!r}", param="model")
    top_k = positive_int(body, "top_k", 10, state.config.max_top_k)
    query = required(body, "query")
    if isinstance(query, str) and not is_image_data_url(query):
        vector = (await served.embed_texts([text_value(query, "query", state.config.max_text_chars)]))[0]
    elif isinstance(query, dict) and set(query) == {"text"}:
        vector = (await served.embed_texts([text_value(query["text"], "query.text", state.config.max_text_chars)]))[0]
    elif isinstance(query, (str, dict)):
        vector = (await served.embed_images([image_ref(query, "query")], state.pool, state.allowed))[0][0]
    else:
        raise bad_request(
            f'query must be a text, a data URL or an object {{"text"|"image"|"path": ...}}, got {describe(query)}',
            param="query",
        )
    index = await asyncio.get_running_loop().run_in_executor(state.pool, served_index.current)
    hits = index.search_rows(vector, top_k)
    # row + generation name the image for GET /thumbnails/{index}/{row} (the search page's grid)
    return _json(
        {
            "index": name,
            "model": served.id,
            "generation": index.generation,
            "results": [
                {"rank": r, "score": s, "path": index.abs_path(index.entries[row]), "row": row}
                for r, (s, row) in enumerate(hits, 1)
            ],
        }
    )


ROUTES: list[tuple[str, Any, list[str]]] = [
    ("/healthz", healthz, ["GET"]),
    ("/readyz", readyz, ["GET"]),
    ("/metrics", metrics, ["GET"]),
    ("/v1/models", list_models, ["GET"]),
    ("/v1/models/{model:path}", get_model, ["GET"]),
    ("/v1/embeddings", embeddings, ["POST"]),
    ("/classify", classify, ["POST"]),
    ("/similarity", similarity, ["POST"]),
    ("/search", search, ["POST"]),
    ("/", page.search_page, ["GET"]),
    ("/thumbnails/{index}/{row:int}", page.thumbnail, ["GET"]),
]
