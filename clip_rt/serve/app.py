"""The ASGI application: routes, the guard (API key, concurrency limit, metrics), JSON errors,
and the lifespan (batchers started, models warmed up in the background, batchers drained)."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import time
from collections.abc import AsyncIterator
from typing import Any, Callable, Optional

from .errors import ApiError
from .routes import AUTHORISED, BODY_ACCOUNT, ROUTES, ServiceState

log = logging.getLogger("clip_rt.serve")
# No API key: orchestrators probe the first two; the search page (/) holds no data and asks for the key.
OPEN_PATHS = ("/healthz", "/readyz", "/")
UNLIMITED_PATHS = OPEN_PATHS + ("/metrics",)  # answered even when the service is saturated
KNOWN_PATHS = {path for path, _, _ in ROUTES if "{" not in path}


def create_app(state: ServiceState, on_fatal: Optional[Callable[[str], None]] = None) -> Any:
    """The Starlette application serving *state*. *on_fatal(reason)* is called when the models
    fail to load (the server then exits with status 1)."""
    from starlette.applications import Starlette
    from starlette.exceptions import HTTPException
    from starlette.routing import Route

    @contextlib.asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        state.loop = asyncio.get_running_loop()
        for served in state.models.values():
            served.image.start()
            served.text.start()
        warm = asyncio.get_running_loop().create_task(_warm_up(state, on_fatal))
        try:
            yield
        finally:
            if not warm.done():
                warm.cancel()
            # Uvicorn calls this once every connection is finished; whatever is still queued
            # (a request whose client went away) is finished too before the threads stop.
            for served in state.models.values():
                await served.image.close()
                await served.text.close()
            state.pool.shutdown(wait=True)
            for served in state.models.values():
                served.model.close()

    async def api_error(request: Any, exc: Exception) -> Any:
        return error_response(state, exc if isinstance(exc, ApiError) else ApiError("internal", str(exc)))

    async def http_error(request: Any, exc: Exception) -> Any:
        status = getattr(exc, "status_code", 500)
        if status == 404:
            err = ApiError(
                "not_found",
                f"no endpoint {request.method} {request.url.path}; see GET /v1/models, "
                "POST /v1/embeddings, /classify, /similarity, /search, GET /healthz, /readyz, /metrics, "
                "/ (the search page)",
            )
        elif status == 405:
            err = ApiError("method_not_allowed", f"{request.method} is not allowed on {request.url.path}")
        else:
            err = ApiError("internal", str(getattr(exc, "detail", exc)))
        return error_response(state, err)

    async def unexpected(request: Any, exc: Exception) -> Any:
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return error_response(state, ApiError("internal", f"internal error: {type(exc).__name__}: {exc}"))

    routes = [Route(path, handler, methods=methods) for path, handler, methods in ROUTES]
    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={ApiError: api_error, HTTPException: http_error, Exception: unexpected},
    )
    app.state.service = state
    return Guard(app, state)


def error_response(state: ServiceState, err: ApiError) -> Any:
    from starlette.responses import JSONResponse

    state.metrics.errors.inc(kind=err.kind)
    return JSONResponse(err.body(), status_code=err.status, headers=err.headers)


async def _warm_up(state: ServiceState, on_fatal: Optional[Callable[[str], None]]) -> None:
    loop = asyncio.get_running_loop()
    try:
        for served in state.models.values():
            state.loading.append(served.id)
            await loop.run_in_executor(state.pool, served.warm_up)
    except Exception as exc:  # noqa: BLE001 - a damaged graph, a provider that did not come up: cannot serve
        state.failure = f"{type(exc).__name__}: {exc}"
        log.error("models failed to load: %s", state.failure)
        if on_fatal is not None:
            on_fatal(state.failure)
        return
    state.ready = True
    log.info("ready: %s", ", ".join(state.models))


class Guard:
    """Outermost ASGI layer: counts and times every request, checks the API key, refuses work
    beyond ``max_concurrency`` requests with 503 before reading their bodies, and gives each
    request's body bytes back to the service's body budget when it ends (serve/inputs.py)."""

    def __init__(self, app: Any, state: ServiceState) -> None:
        self.app, self.state = app, state
        self.active = 0
        key = state.config.api_key
        self._key = key.encode("utf-8") if key else None

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        endpoint = (
            path if path in KNOWN_PATHS else ("/v1/models/{model}" if path.startswith("/v1/models/") else "other")
        )
        metrics = self.state.metrics
        start = time.perf_counter()
        status = [500]

        async def send_status(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        limited = path not in UNLIMITED_PATHS
        account = self.state.bodies.account() if self.state.bodies is not None else None
        try:
            refusal = self._check(scope, path, limited)
            if refusal is not None:
                await self._refuse(refusal, scope, receive, send_status)
                return
            scope[AUTHORISED] = self._key is None or self._authorised(scope)
            scope[BODY_ACCOUNT] = account
            if limited:
                self.active += 1
                metrics.in_flight.set(self.active)
            try:
                await self.app(scope, receive, send_status)
            finally:
                if limited:
                    self.active -= 1
                    metrics.in_flight.set(self.active)
        finally:
            if account is not None:
                account.release()
            metrics.requests.inc(endpoint=endpoint, code=str(status[0]))
            metrics.latency.observe(time.perf_counter() - start, endpoint=endpoint)

    def _check(self, scope: dict[str, Any], path: str, limited: bool) -> Optional[ApiError]:
        if self._key is not None and path not in OPEN_PATHS and not self._authorised(scope):
            return ApiError(
                "unauthorized",
                "missing or wrong API key: send 'Authorization: Bearer KEY' (or 'X-API-Key: KEY')",
                headers={"WWW-Authenticate": "Bearer"},
            )
        if limited and self.active >= self.state.config.max_concurrency:
            return ApiError(
                "overloaded",
                f"the service is handling {self.active} requests, its limit (--max-concurrency); retry shortly",
                headers={"Retry-After": "1"},
            )
        return None

    def _authorised(self, scope: dict[str, Any]) -> bool:
        given = b""
        for name, value in scope.get("headers", []):
            if name == b"authorization" and value[:7].lower() == b"bearer ":
                given = value[7:].strip()
            elif name == b"x-api-key" and not given:
                given = value.strip()
        return hmac.compare_digest(given, self._key or b"")

    async def _refuse(self, err: ApiError, scope: dict[str, Any], receive: Any, send: Any) -> None:
        # The body is not read; uvicorn discards it after the response, so the connection
        # stays usable and the client reads this answer instead of a reset.
        await error_response(self.state, err)(scope, receive, send)
