"""Which node of a Ray cluster did what, and what went wrong where.

An actor that cannot do its part (the model does not load on its node, the shipped bundle
cannot be written there, a batch fails outside the per-image errors) raises :class:`NodeError`,
whose message names the node (IP address and Ray node id) and the cause. On the driver,
:func:`job_failure` turns whatever a failed Ray Data job raised (Ray wraps the actor's
exception in its own, sometimes twice) into one :class:`~clip_rt.errors.ClipRtError` with one
line to show: the node's error, or Ray's own reason for a lost node, actor or object. Ray is
imported only inside functions, and only where it is already loaded.
"""

from __future__ import annotations

import re
import sys
from typing import Optional

from ..errors import ClipRtError

RESUME_HINT = "the finished parts are kept: rerun the same command to resume"


class NodeError(ClipRtError):
    """A node of the Ray cluster could not do its part of the job."""

    def __init__(self, message: str, node_ip: str = "", node_id: str = "") -> None:
        super().__init__(message, node_ip, node_id)  # every field in args: it pickles across processes
        self.message = message
        self.node_ip = node_ip
        self.node_id = node_id

    def __str__(self) -> str:
        return self.message


class RayJobError(ClipRtError):
    """A Ray job stopped for a reason of Ray's own (a node, an actor or an object lost for good)."""


def this_node() -> tuple[str, str]:
    """(IP address, node id) of the node this process runs on; inside a Ray worker only."""
    import ray

    if not ray.is_initialized():  # not in a Ray worker: nothing to name
        return "", ""
    return ray.util.get_node_ip_address(), ray.get_runtime_context().get_node_id()  # type: ignore[no-untyped-call]


def node_label(node_ip: str, node_id: str) -> str:
    return f"node {node_ip or '?'} (id {node_id or '?'})"


def node_error(what: str, cause: BaseException) -> NodeError:
    """A :class:`NodeError` for *what* went wrong on this node because of *cause*. A domain
    error's message is the cause as it stands; anything else is named by its type."""
    ip, node_id = this_node()
    reason = str(cause) if isinstance(cause, ClipRtError) else f"{type(cause).__name__}: {cause}"
    return NodeError(f"{node_label(ip, node_id)}: {what}: {_one_line(reason)}", ip, node_id)


def _one_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return " / ".join(lines[:3]) if lines else "(no message)"


def _chain(exc: BaseException) -> list[BaseException]:
    """*exc* and every exception it wraps: ``__cause__``, ``__context__`` and Ray's ``cause``."""
    seen: list[BaseException] = []
    todo = [exc]
    while todo:
        e = todo.pop(0)
        if e is None or any(e is s for s in seen):
            continue
        seen.append(e)
        todo += [getattr(e, "cause", None), e.__cause__, e.__context__]  # type: ignore[list-item]
    return [e for e in seen if isinstance(e, BaseException)]


# Ray's errors that mean "lost": the cluster, not the job's code, went wrong.
_RAY_LOST = (
    "ActorDiedError",
    "ActorUnavailableError",
    "NodeDiedError",
    "ObjectLostError",
    "OwnerDiedError",
    "ObjectReconstructionFailedError",
    "ObjectFetchTimedOutError",
    "ReferenceCountingAssertionError",
    "RaySystemError",
    "WorkerCrashedError",
    "OutOfMemoryError",
    "ObjectStoreFullError",
    "OutOfDiskError",
    "GetTimeoutError",
    "ExecutionTimeoutError",
)


_NODE_ERROR_TEXT = re.compile(r"NodeError: (node (\S+) \(id (\S+)\): [^\n]*)")


def job_failure(exc: BaseException) -> Optional[ClipRtError]:
    """The one-line error for a Ray job that raised *exc*, or None when *exc* is not a failure
    of the cluster or of a node (a bug on the driver: let it show its traceback)."""
    chain = _chain(exc)
    ray_error: Optional[type] = None
    if "ray" in sys.modules:
        ray_error = sys.modules["ray"].exceptions.RayTaskError
    for e in chain:
        # Ray re-raises an actor's exception as a class derived from both RayTaskError and the
        # original; its ``cause`` is the original, which the chain holds as well.
        if ray_error is not None and isinstance(e, ray_error):
            continue
        if isinstance(e, NodeError):
            return NodeError(f"{e.message}; {RESUME_HINT}", e.node_ip, e.node_id)
        if isinstance(e, ClipRtError):  # raised in a Ray task of the driver's (a part that cannot be written)
            return RayJobError(f"{_one_line(str(e))}; {RESUME_HINT}")
    for e in chain:  # a wrapper that kept only the text of the actor's exception
        found = _NODE_ERROR_TEXT.search(str(e))
        if found:
            return NodeError(f"{found.group(1).strip()}; {RESUME_HINT}", found.group(2), found.group(3))
    for e in chain:
        if type(e).__name__ in _RAY_LOST:
            first = (_strip_ray(str(e)).splitlines() or ["(no message)"])[0].strip()
            return RayJobError(f"the Ray job stopped: {type(e).__name__}: {first}; {RESUME_HINT}")
    return None


def _strip_ray(text: str) -> str:
    """Ray's messages start with the task's repr and carry a traceback: keep what says why."""
    keep = [
        line
        for line in text.splitlines()
        if line.strip() and not line.startswith((" ", "\t", "Traceback")) and "^^^" not in line
    ]
    return "\n".join(keep[:3])
