"""`clip-rt serve MODEL...`: the HTTP service (docs/serve.md). Needs the [serve] extra."""

from __future__ import annotations

import dataclasses
import functools
import os
import sys
from typing import TYPE_CHECKING, Any, Callable, Optional

import click

from ..options import RuntimeOptions, Workload
from ..serve.config import API_KEY_ENV, ModelSpec, ServeConfig, is_loopback, parse_head, parse_index, parse_size
from ..settings import default_model
from .common import echo_err, load_model
from .group import main

if TYPE_CHECKING:
    from ..model import ClipModel

_DEFAULTS = ServeConfig()


def _size(ctx: click.Context, param: click.Parameter, value: Optional[str]) -> Optional[int]:
    from ..errors import InputError

    if value is None:
        return None
    try:
        return parse_size(value)
    except InputError as exc:
        raise click.BadParameter(str(exc)) from None


def _api_key(ctx: click.Context, param: click.Parameter, value: Optional[str]) -> Optional[str]:
    """--api-key, else $CLIP_RT_API_KEY. click reads an empty variable as unset, which would turn
    `CLIP_RT_API_KEY=""` (a key lost on the way) into a service without a key: it is kept, so
    that it is refused like a blank --api-key."""
    if value is None and API_KEY_ENV in os.environ:
        return os.environ[API_KEY_ENV]
    return value


def _as_config(command: Callable[[ServeConfig, Optional[str]], None]) -> Callable[..., None]:
    """The flags as one ServeConfig (each flag sets the field of its name; the MODEL arguments,
    --index and --head parsed), given to the command with --backend."""
    names = {f.name for f in dataclasses.fields(ServeConfig)}

    @functools.wraps(command, updated=())
    def from_flags(
        models: tuple[str, ...], indexes: tuple[str, ...], heads: tuple[str, ...], backend: Optional[str], **flags: Any
    ) -> None:
        unknown = set(flags) - names
        if unknown:  # a flag added without its ServeConfig field
            raise TypeError(f"serve flags without a ServeConfig field: {sorted(unknown)}")
        if flags["max_items"] > flags["max_queue"]:
            raise click.UsageError(f"--max-items {flags['max_items']} is more than --max-queue {flags['max_queue']}")
        config = ServeConfig(
            models=tuple(ModelSpec.parse(m) for m in (models or (default_model().value,))),
            indexes=tuple(parse_index(i) for i in indexes),
            heads=tuple(parse_head(h) for h in heads),
            **flags,
        )
        command(config, backend)

    return from_flags


@main.command("serve")
@click.argument("models", nargs=-1, metavar="[MODEL[@PRECISION]]...")
@click.option(
    "--host",
    default=_DEFAULTS.host,
    show_default=True,
    help="Address to listen on. Loopback by default; anything else warns unless --api-key is set.",
)
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=_DEFAULTS.port,
    show_default=True,
    help="Port (0: any free port, printed at start).",
)
@click.option("--provider", default=None, metavar="NAME", help="ONNX Runtime execution provider (cpu, cuda, ...).")
@click.option(
    "--precision",
    type=click.Choice(["fp32", "fp16", "int8"]),
    default=None,
    help="Graph precision of models given without @PRECISION; default: the bundle's best.",
)
@click.option(
    "--backend",
    type=click.Choice(["auto", "onnxruntime", "openvino"]),
    default=None,
    help="Inference backend for the CPU; default (auto): the fastest measured in steady work on this CPU.",
)
@click.option("--threads", type=click.IntRange(min=1), default=None, help="Intra-op threads per session.")
@click.option("--draft", is_flag=True, help="Decode JPEGs at reduced scale before resizing (docs/images.md).")
@click.option(
    "--max-batch-size",
    type=click.IntRange(min=1),
    default=_DEFAULTS.max_batch_size,
    show_default=True,
    help="Most images per inference batch (1 = no batching).",
)
@click.option(
    "--max-text-batch-size",
    type=click.IntRange(min=1),
    default=_DEFAULTS.max_text_batch_size,
    show_default=True,
    help="Most texts per text-encoder batch.",
)
@click.option(
    "--max-wait-ms",
    type=click.FloatRange(min=0),
    default=_DEFAULTS.max_wait_ms,
    show_default=True,
    help="Longest an input waits for its batch to fill (while another batch runs or more inputs are "
    "on their way; a lone request runs at once).",
)
@click.option(
    "--wait-when-idle",
    is_flag=True,
    help="Wait out --max-wait-ms even when nothing runs and nothing else is coming: fuller batches, "
    "slower lone requests.",
)
@click.option(
    "--image-streams",
    type=click.IntRange(min=1),
    default=None,
    help="Image batches encoded at once. Default: the backend's throughput streams where the CPU plan "
    "runs batches in throughput mode (OpenVINO), else 1. 1 with --max-batch-size 1 = one request "
    "at a time.",
)
@click.option(
    "--max-queue",
    type=click.IntRange(min=1),
    default=_DEFAULTS.max_queue,
    show_default=True,
    help="Inputs admitted per encoder (decoding or waiting) before requests get 503 + Retry-After.",
)
@click.option(
    "--max-concurrency",
    type=click.IntRange(min=1),
    default=_DEFAULTS.max_concurrency,
    show_default=True,
    help="Requests handled at once before more get 503 + Retry-After.",
)
@click.option(
    "--max-body-bytes",
    default="32MiB",
    show_default=True,
    callback=_size,
    help="Largest request body (413 beyond; checked while reading), also the largest --allow-dir file.",
)
@click.option(
    "--max-items",
    type=click.IntRange(min=1),
    default=_DEFAULTS.max_items,
    show_default=True,
    help="Most inputs per request (embeddings inputs, classify images, similarity texts).",
)
@click.option(
    "--max-text-chars",
    type=click.IntRange(min=1),
    default=_DEFAULTS.max_text_chars,
    show_default=True,
    help="Longest text, in characters.",
)
@click.option("--max-labels", type=click.IntRange(min=1), default=_DEFAULTS.max_labels, show_default=True)
@click.option(
    "--max-label-chars",
    type=click.IntRange(min=1),
    default=_DEFAULTS.max_label_chars,
    show_default=True,
    help="Longest class label, in characters (its prompts follow --max-text-chars).",
)
@click.option(
    "--max-prompts",
    type=click.IntRange(min=1),
    default=_DEFAULTS.max_prompts,
    show_default=True,
    help="Most labels x templates prompts per classify request.",
)
@click.option(
    "--max-image-pixels",
    type=click.IntRange(min=1),
    default=None,
    help="Largest image in pixels (default: PIL's limit, as the CLI).",
)
@click.option(
    "--max-connections",
    type=click.IntRange(min=1),
    default=_DEFAULTS.max_connections,
    show_default=True,
    help="Open connections at once. When full, idle ones are closed to make room; a new connection is "
    "refused (503) only when every open one is in a request.",
)
@click.option(
    "--header-timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=_DEFAULTS.header_timeout,
    show_default=True,
    help="Seconds a connection has to send a request head (from connecting, or from "
    "its previous response); closed (or 408) after.",
)
@click.option(
    "--body-timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=_DEFAULTS.body_timeout,
    show_default=True,
    help="Seconds a request has to send its whole body (408 after).",
)
@click.option(
    "--max-body-memory",
    default=None,
    callback=_size,
    metavar="SIZE",
    help="Request-body bytes held at once over all requests (503 + Retry-After beyond); default 4 x --max-body-bytes.",
)
@click.option(
    "--allow-dir",
    "allow_dirs",
    multiple=True,
    type=click.Path(exists=True, file_okay=False),
    help='Folder whose files requests may name as {"path": ...} (repeatable). Without it, none.',
)
@click.option(
    "--index",
    "indexes",
    multiple=True,
    metavar="[NAME=]DIR",
    help="A `clip-rt index` folder for POST /search and the search page at / (repeatable).",
)
@click.option(
    "--head",
    "heads",
    multiple=True,
    metavar="[NAME=]FILE",
    help='A head fitted by `clip-rt fit` on a served model, for POST /classify {"head": NAME} '
    "(repeatable; docs/adapt.md).",
)
@click.option(
    "--api-key",
    default=None,
    envvar=API_KEY_ENV,
    show_envvar=True,
    callback=_api_key,
    help="Require 'Authorization: Bearer KEY' on every endpoint but /healthz, /readyz and the search "
    "page at / (which asks for the key). A blank key (also an empty $CLIP_RT_API_KEY) is refused.",
)
@click.option(
    "--decode-workers",
    type=click.IntRange(min=1),
    default=_DEFAULTS.decode_workers,
    show_default=True,
    help="Threads decoding images.",
)
@click.option(
    "--graceful-timeout",
    type=click.FloatRange(min=0),
    default=_DEFAULTS.graceful_timeout,
    show_default=True,
    help="Seconds to finish accepted requests after SIGTERM.",
)
@click.option(
    "--log-level",
    type=click.Choice(["critical", "error", "warning", "info", "debug"]),
    default="info",
    show_default=True,
)
@click.option("--access-log", is_flag=True, help="Log every request.")
@_as_config
def serve_cmd(config: ServeConfig, backend: Optional[str]) -> None:
    """Serve MODELs over HTTP with dynamic batching: POST /v1/embeddings (OpenAI-compatible),
    /classify (zero-shot, or with a --head), /similarity, /search; GET /healthz, /readyz,
    /metrics, /v1/models; a search page at / for the --index folders.

    MODEL is a bundle name, alias or directory, optionally with @fp32|@fp16|@int8; default
    the CLI's default model. SIGTERM finishes the accepted requests and exits 0."""
    from ..serve.server import build_state, require_stack, serve

    require_stack()
    if not is_loopback(config.host) and not config.api_key:
        echo_err(
            f"warning: listening on {config.host} without an API key: anyone who can reach this address can use "
            f"the service (set --api-key or {API_KEY_ENV})"
        )
    # A server is long-lived: its start-up is paid once, so steady speed chooses the backend.
    options = RuntimeOptions(
        providers=(config.provider,) if config.provider else None,
        threads=config.threads,
        draft=config.draft,
        backend=None if backend == "auto" else backend,
        workload=Workload(lifetime="long"),
    )

    def load(source: str, model_precision: Optional[str]) -> ClipModel:
        return load_model(source, options.replace(precision=model_precision))

    state = build_state(config, load)
    names = ", ".join(state.models)
    code = serve(
        state, announce=lambda url: echo_err(f"clip-rt serve: {names} on {url} (ready when GET /readyz answers 200)")
    )
    sys.exit(code)
