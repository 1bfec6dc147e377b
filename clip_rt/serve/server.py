"""Running the service under uvicorn: binding, graceful SIGTERM, exit status."""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Callable, Optional

from ..errors import ClipRtError, InputError
from .config import ServeConfig
from .metrics import Metrics
from .registry import load_heads, load_indexes, load_models
from .routes import ServiceState

if TYPE_CHECKING:
    from ..model import ClipModel

log = logging.getLogger("clip_rt.serve")


def require_stack() -> None:
    """Fail with the install command when the [serve] extra is missing."""
    missing = []
    for module in ("starlette", "uvicorn"):
        try:
            __import__(module)
        except ImportError:
            missing.append(module)
    if missing:
        raise ClipRtError(
            f"clip-rt serve needs {' and '.join(missing)}, which {'is' if len(missing) == 1 else 'are'} "
            "not installed: pip install 'clip-rt[serve]'"
        )


def build_state(config: ServeConfig, load: Callable[[str, Optional[str]], ClipModel]) -> ServiceState:
    """Models (manifests read, sessions not yet created), indexes and folders, checked now so
    that a mistake fails the command before it binds a port."""
    if not config.models:
        raise InputError("no model to serve: give at least one MODEL")
    allowed = []
    for folder in config.allow_dirs:
        real = os.path.realpath(folder)
        if not os.path.isdir(real):
            raise InputError(f"--allow-dir {folder!r} is not a folder")
        allowed.append(real)
    if config.max_image_pixels is not None:
        from PIL import Image

        Image.MAX_IMAGE_PIXELS = config.max_image_pixels  # the service owns its process
    metrics = Metrics()
    models = load_models(config, metrics, load)
    indexes = load_indexes(config, models)
    heads = load_heads(config, models)
    pool = ThreadPoolExecutor(max_workers=config.decode_workers, thread_name_prefix="clip-rt-decode")
    return ServiceState(
        config=config, models=models, indexes=indexes, metrics=metrics, allowed=tuple(allowed), pool=pool, heads=heads
    )


class _Server:
    """Built lazily (uvicorn is optional). A SIGTERM shuts down gracefully and the process
    then exits 0 (uvicorn would re-raise the signal after its graceful shutdown)."""

    @staticmethod
    def make(config: Any, on_stop: Callable[[], None]) -> Any:
        import uvicorn

        class GracefulServer(uvicorn.Server):
            exit_code = 0

            def handle_exit(self, sig: int, frame: Any) -> None:
                super().handle_exit(sig, frame)
                on_stop()
                captured = getattr(self, "_captured_signals", None)
                if sig == signal.SIGTERM and isinstance(captured, list) and sig in captured:
                    captured.remove(sig)  # a graceful stop is a success

        return GracefulServer(config)


def make_server(state: ServiceState, *, sock: Any = None) -> tuple[Any, Any]:
    """(uvicorn server, bound socket) for *state*; ``server.run(sockets=[sock])`` serves."""
    import uvicorn

    from .app import create_app
    from .connections import ConnectionTable, fit_to_fd_limit, protocol_class

    cfg = state.config
    holder: dict[str, Any] = {}

    def on_fatal(reason: str) -> None:
        server = holder["server"]
        server.exit_code = 1
        server.should_exit = True

    app = create_app(state, on_fatal)
    # No uvicorn limit_concurrency: it counts idle connections too (150 of them starved every
    # request) and answers in plain text. Requests are limited by the app (JSON 503 past
    # --max-concurrency); connections by the protocol, which closes idle ones to make room.
    table = ConnectionTable(fit_to_fd_limit(cfg.max_connections))
    state.connections = table
    uv_config = uvicorn.Config(
        app,
        host=cfg.host,
        port=cfg.port,
        log_level=cfg.log_level,
        access_log=cfg.access_log,
        lifespan="on",
        timeout_graceful_shutdown=cfg.graceful_timeout,  # type: ignore[arg-type]  # seconds, a float is fine
        server_header=False,
        limit_concurrency=None,
        loop="asyncio",
        http=protocol_class(table, cfg.header_timeout),
    )

    def on_stop() -> None:  # in the signal handler: hand over to the event loop
        loop = state.loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(state.drain)

    server = _Server.make(uv_config, on_stop)
    holder["server"] = server
    if sock is None:
        sock = bind(cfg.host, cfg.port)
    return server, sock


def bind(host: str, port: int) -> socket.socket:
    """A listening-ready TCP socket. Not uvicorn's ``Config.bind_socket()``: that one creates
    it with protocol 0, and asyncio then skips TCP_NODELAY on the accepted connections (it
    checks for IPPROTO_TCP), which cost 40 ms per request on kept-alive connections (delayed
    ACK), measured on this machine."""
    try:
        infos = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP, flags=socket.AI_PASSIVE
        )
        family, kind, proto, _, address = infos[0]
        sock = socket.socket(family, kind, proto)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(address)
        except OSError:
            sock.close()
            raise
    except OSError as exc:
        raise ClipRtError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    return sock


def serve(state: ServiceState, *, announce: Optional[Callable[[str], None]] = None) -> int:
    """Serve until SIGTERM/SIGINT; returns the exit status (0 after a graceful stop, 1 when the
    models failed to load)."""
    _configure_logging(state.config.log_level)
    server, sock = make_server(state)
    host, port = sock.getsockname()[:2]
    url = f"http://{'[' + host + ']' if ':' in host else host}:{port}"
    if announce is not None:
        announce(url)
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
    return int(server.exit_code)


def _configure_logging(level: str) -> None:
    logger = logging.getLogger("clip_rt")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(levelname)s:     %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(level.upper())
