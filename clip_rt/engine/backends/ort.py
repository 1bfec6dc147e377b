"""The onnxruntime backend: the project's :class:`~clip_rt.engine.session.OrtSession` (provider
selection and verification, IO binding for CUDA) under the backend contract.

onnxruntime has no async queue here: one session runs each batch on all its intra-op threads,
which measured as fast as splitting the cores between concurrent runs on 2 cores
(bench/results/backends.json), so ``submit`` runs at once and folders use the same mode.
"""

from __future__ import annotations

from typing import Any

from ..session import OrtSession
from .base import Backend


class OrtBackend(OrtSession, Backend):
    """An ``OrtSession`` that is also a :class:`~clip_rt.engine.backends.base.Backend`."""

    name = "onnxruntime"

    def describe(self) -> dict[str, Any]:
        import onnxruntime

        so = self._session.get_session_options() if hasattr(self._session, "get_session_options") else None
        threads = getattr(so, "intra_op_num_threads", None)
        return {
            "backend": self.name,
            "version": onnxruntime.__version__,
            "graph": self.path.name,
            "providers": list(self.providers),
            "calls": "latency",
            "folders": "latency (one session, all threads)",
            "threads": threads or "default",
        }
