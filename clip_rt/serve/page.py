"""The search page (``GET /``) and the thumbnails it shows (``GET /thumbnails/{index}/{row}``).

The page is one HTML document with its script and style inline (``clip_rt/serve/page/``; a
Content-Security-Policy admits only those, by hash, and requests to this service). It holds no
data and needs no API key; it searches through the JSON API (``POST /search``) with
``fetch()``. Where the service has an API key, the page asks for it once, keeps it in the tab's
``sessionStorage`` and sends it as ``Authorization: Bearer`` on each request; the thumbnails are
fetched the same way and shown from ``blob:`` URLs, so the key never appears in a URL, a log or
the browser history.

A thumbnail is served only for a row of a served index (by index name and row number, with the
index generation the search answered from): never for a path a request names.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from ..outputs.html_page import asset, csp_hash, esc, fill, script_json
from .errors import ApiError, bad_request

if TYPE_CHECKING:
    from starlette.requests import Request
    from starlette.responses import Response

    from .routes import ServiceState

PAGE_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-cache",
}


def _state(request: Request) -> ServiceState:
    return request.app.state.service


def page_html(state: ServiceState) -> tuple[str, str]:
    """(the page, the Content-Security-Policy header to send with it)."""
    from ..version import __version__

    style = asset("clip_rt.serve", "page/search.css")
    script = asset("clip_rt.serve", "page/search.js")
    csp = (
        f"default-src 'none'; script-src {csp_hash(script)}; style-src {csp_hash(style)}; "
        "img-src 'self' blob: data:; connect-src 'self'; base-uri 'none'; form-action 'none'"
    )
    config = state.config
    data = {
        "models": list(state.models),
        "indexes": [{"name": ix.name, "model": ix.model_id} for ix in state.indexes.values()],
        "auth": config.api_key is not None,
        "maxTopK": config.max_top_k,
        "maxBodyBytes": config.max_body_bytes,
        "version": __version__,
    }
    page = fill(
        asset("clip_rt.serve", "page/search.html"),
        {"CSP": esc(csp), "STYLE": style, "SCRIPT": script, "DATA": script_json(data), "VERSION": esc(__version__)},
    )
    return page, csp + "; frame-ancestors 'none'"  # the header's policy: frame-ancestors works only there


async def search_page(request: Request) -> Response:
    from starlette.responses import HTMLResponse

    page, csp = page_html(_state(request))
    return HTMLResponse(page, headers={**PAGE_HEADERS, "Content-Security-Policy": csp})


async def thumbnail(request: Request) -> Response:
    """A JPEG of one indexed image, at most 160 pixels on its longest side."""
    from starlette.responses import Response

    state = _state(request)
    name, row = request.path_params["index"], request.path_params["row"]
    served_index = state.indexes.get(name)
    if served_index is None:
        known = ", ".join(state.indexes) or "none (start the service with --index DIR)"
        raise ApiError("not_found", f"unknown index {name!r}; this service has: {known}", param="index")
    asked = request.query_params.get("generation")
    if asked is not None and not asked.isdigit():
        raise bad_request(
            f"generation must be a whole number (the one /search answered with), got {asked[:40]!r}", param="generation"
        )
    loop = asyncio.get_running_loop()
    index = await loop.run_in_executor(state.pool, served_index.current)
    if asked is not None and int(asked) != index.generation:
        raise ApiError(
            "conflict",
            f"index {name!r} was updated since that search (generation {asked}, now "
            f"{index.generation}): its rows may name other images now; search again",
            param="generation",
        )
    if row >= len(index.entries):
        held = f"rows 0 to {len(index.entries) - 1}" if index.entries else "no images"
        raise ApiError("not_found", f"index {name!r} has {held}; there is no row {row}", param="row")
    data = served_index.cached_thumbnail(index.generation, row)
    if data is None:
        data = await loop.run_in_executor(state.pool, served_index.thumbnail, index, row)
        served_index.keep_thumbnail(index.generation, row, data)
    return Response(
        data,
        media_type="image/jpeg",
        headers={"Cache-Control": "private, max-age=300", "X-Content-Type-Options": "nosniff"},
    )
