"""``clip-rt serve``: an HTTP service with dynamic batching (the ``[serve]`` extra).

Modules: ``config`` (settings), ``inputs`` (request bodies, validation, images), ``batcher``
(dynamic batching), ``registry`` (models, indexes), ``routes`` (endpoints), ``app`` (ASGI app,
API key, limits, lifespan), ``metrics`` (Prometheus text), ``server`` (uvicorn, SIGTERM).
Importing this package imports neither starlette nor uvicorn; ``app`` and ``server`` do when
they build the service.
"""

from __future__ import annotations

from .config import ModelSpec, ServeConfig

__all__ = ["ModelSpec", "ServeConfig"]
